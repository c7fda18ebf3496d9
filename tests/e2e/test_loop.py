"""The researcher's loop (issue 14): the live view of a sweep as a person sees it in a terminal, `sweeps` and
`status` from MLflow alone (while a sweep runs in another process), `--warm-start`, the budgets, `ui`'s pages,
`report.html`, and progress bars for `train` and `features`. Real Ray, MLflow (SQLite) and training on digits."""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tune_losses import tracking
from tune_losses.cli import main
from tune_losses.spaces import load_space
from tune_losses.tracking.sweeps import sweep_status, ui_url
from tune_losses.tuning.runner import run_sweep

from helpers import write_space

ROOT = Path(__file__).resolve().parents[2]
NOISE = (
    "run_trial_",
    "TensorBoard",
    "Token authentication",
    "Trial status",
    "View detailed results",
    "Creating initial MLflow database tables",
)


def _env(tmp_path) -> dict:
    env = dict(os.environ, TUNE_LOSSES_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    env.pop("RAY_AIR_NEW_OUTPUT", None)  # as a user's shell has it
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.slow
def test_quickstart_fits_one_screen_and_shows_progress_while_it_runs(tmp_path):
    """`sweep quickstart` in a real terminal (tmux): the pane, captured while it runs and at the end."""
    tmux = shutil.which("tmux")
    if tmux is None:
        if os.environ.get("CI"):
            pytest.fail("tmux is missing (Debian's tmux)")
        pytest.skip("needs tmux (Debian's tmux) to look at the terminal")
    sock, env = f"tl-{os.getpid()}", _env(tmp_path)
    exports = " ".join(f"{k}={v}" for k, v in env.items() if k in ("TUNE_LOSSES_HOME", "PYTHONPATH"))
    command = (
        f"cd {ROOT} && env -u RAY_AIR_NEW_OUTPUT -u MLFLOW_TRACKING_URI {exports} {sys.executable} -m "
        "tune_losses.cli sweep quickstart; echo EXIT=$?; sleep 600"
    )
    subprocess.run(
        [tmux, "-L", sock, "new-session", "-d", "-s", "q", "-x", "120", "-y", "100", command], check=True, env=env
    )
    frames = []
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            frame = subprocess.run(
                [tmux, "-L", sock, "capture-pane", "-p", "-J", "-t", "q"], capture_output=True, text=True
            ).stdout
            frames.append(frame)
            if "EXIT=" in frame:
                break
            time.sleep(0.5)  # a person glancing at the screen twice a second
        screen = subprocess.run(
            [tmux, "-L", sock, "capture-pane", "-p", "-J", "-S", "-", "-t", "q"], capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run([tmux, "-L", sock, "kill-server"], capture_output=True)
    (tmp_path / "frames.txt").write_text("\n=====\n".join(frames))
    assert "EXIT=0" in screen, screen[-3000:]
    lines = screen[: screen.index("EXIT=")].rstrip().splitlines()
    assert len(lines) < 60, screen
    # while it ran: the epochs bar part-way, with the trials line under it, redrawn in place
    running = [
        f
        for f in frames
        if "EXIT=" not in f
        and re.search(r"^epochs ([1-9]\d*)/(\d+) .*ETA", f, re.M)
        and re.search(r"^trials: .*running", f, re.M)
    ]
    assert running, "no progress was on screen while the sweep ran"
    done, total = map(int, re.search(r"^epochs (\d+)/(\d+)", running[0], re.M).groups())
    assert 0 < done < total
    # at the end: one line per trial event under MLflow's names, and the summary
    assert len(re.findall(r"^dal a=\d+: (finished 8 epochs|stopped by ASHA at epoch \d+), val_acc", screen, re.M)) == 5
    assert screen.count("epochs ") >= 1 and len(re.findall(r"^epochs \d+/\d+", screen, re.M)) == 1  # redrawn
    for needle in ("Sweep 'quickstart': 5 trials", "Best val_acc", "Report:", "Sweep ended after"):
        assert needle in screen
    for noise in NOISE:
        assert noise not in screen, noise


@pytest.mark.slow
def test_sweeps_and_status_from_mlflow_while_a_sweep_runs_elsewhere(tmp_path, capsys):
    """A sweep runs in another process (the CLI, its output piped); `status` follows it from the store alone."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.experiment_id(tracking.client(uri))  # the store exists before the sweep starts
    space = write_space(
        tmp_path / "watched.yaml",
        name="watched",
        params={"loss.a": {"grid": [5.0, 10.0, 15.0]}},
        train={"epochs": 2},
        search={"fuse": "off"},
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tune_losses.cli",
            "sweep",
            str(space),
            "--tracking-uri",
            uri,
            "--storage",
            str(tmp_path / "ray"),
        ],
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    while proc.poll() is None:
        with contextlib.suppress(ValueError):  # its parent run is not there yet
            seen.append(sweep_status("watched", uri))
        time.sleep(0.5)
    out = proc.stdout.read()
    assert proc.returncode == 0, out[-3000:]
    assert any(s["state"] == "running" for s in seen), seen[-1:]
    assert all(s["done"] <= s["planned"] == 3 for s in seen)
    # piped output: no redrawing, one line per event, a status line, the summary
    assert "\r" not in out
    assert len(re.findall(r"^dal a=\d+: finished 2 epochs, val_acc", out, re.M)) == 3
    assert re.search(r"^\[epochs 6/6, .*\] trials: 0 running, 3 finished", out, re.M)
    assert len(out.splitlines()) < 30 and not any(n in out for n in NOISE), out

    capsys.readouterr()
    assert main(["sweeps", "--tracking-uri", uri]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^watched\s+finished\s+3/3\s+val_acc 0\.\d+\s+loss\.a=\d+", listing, re.M), listing
    assert main(["status", "watched", "--tracking-uri", uri]) == 0
    status = capsys.readouterr().out
    assert "Sweep watched: finished (every trial ran)" in status and "trials: 3 of 3 done (3 completed" in status
    assert re.search(r"best val_acc: 0\.\d+ with loss\.a=\d+", status), status

    parent = tracking.find_sweep(tracking.client(uri), "watched")
    exp, rid = parent.info.experiment_id, parent.info.run_id
    base = "http://127.0.0.1:5000"
    assert ui_url(base, uri) == f"{base}/#/experiments/{exp}/runs?workflowType=machine_learning"
    assert ui_url(base, uri, "watched") == f"{base}/#/experiments/{exp}/runs/{rid}?workflowType=machine_learning"
    assert main(["ui", "nope", "--tracking-uri", uri]) == 2  # refused before the server starts
    assert main(["status", "nope", "--tracking-uri", uri]) == 2
    assert "sweeps there: watched" in capsys.readouterr().err


@pytest.mark.slow
def test_warm_start_gives_optuna_the_earlier_results_and_the_report_covers_both(
    tmp_path, ray_local, capsys, monkeypatch
):
    monkeypatch.setenv("TUNE_LOSSES_HOME", str(tmp_path / "home"))  # the report's directory
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = write_space(
        tmp_path / "first.yaml", name="grid_first", params={"loss.a": {"grid": [5.0, 15.0, 30.0]}}, train={"epochs": 2}
    )
    run_sweep(first, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, make_report=False)
    more = write_space(
        tmp_path / "more.yaml",
        name="tpe_more",
        params={"loss.a": {"uniform": [4.0, 20.0]}},
        train={"epochs": 2},
        search={"searcher": "optuna", "num_samples": 2},
    )
    capsys.readouterr()
    result = run_sweep(
        more, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, warm_start="grid_first", progress=True
    )
    out = capsys.readouterr().out
    assert "Warm start from sweep 'grid_first': 2 earlier trial(s) given to Optuna with their results, 1 skipped" in out
    assert "skipped dal a=30: loss.a = 30.0 is outside [4.0, 20.0]" in out

    c = tracking.client(uri)
    parent = c.get_run(result.parent_run_id)
    assert parent.data.tags["tune_losses.warm_start"] == "grid_first"
    # the report: the earlier sweep's three trials and the two new ones, each marked with its sweep
    trials = result.report.trials.drop_duplicates("run_id")
    assert sorted(trials["from_sweep"]) == ["grid_first"] * 3 + ["tpe_more"] * 2
    assert "Trials by sweep (warm start): `grid_first` 3, `tpe_more` 2." in result.report.markdown
    assert list(result.report.tables["trials"]["from_sweep"]).count("grid_first") == 3
    page = (result.report.directory / "report.html").read_text()
    assert "<th>from_sweep</th>" in page and page.count('src="data:image/png;base64,') == len(result.report.figures)
    logged = [Path(a.path).name for a in c.list_artifacts(result.parent_run_id, "report")]
    assert "report.html" in logged

    # what Optuna was given: the two earlier points inside [4, 20] as completed trials with their val_acc
    from tune_losses.tuning import warm_start
    from tune_losses.tuning.search import param_space
    from tune_losses.tuning.search import searcher as make_searcher

    space = load_space(more)[0]
    ws = warm_start.load("grid_first", space, uri)
    ps = param_space(space)
    searcher = make_searcher(space, ps, [], [], ws)
    searcher.set_search_properties("val_acc", "max", ps)
    study = [(t.params["params/loss.a"], t.value) for t in searcher.searcher._ot_study.trials]
    earlier = {
        r.info.run_name: r.data.metrics["val_acc"]
        for r in tracking.trial_runs(c, tracking.find_sweep(c, "grid_first").info.run_id, parent.info.experiment_id)
    }
    assert sorted(study) == sorted([(5.0, earlier["dal a=5"]), (15.0, earlier["dal a=15"])])


def test_warm_start_is_refused_for_a_grid_before_anything_starts(tmp_path, capsys):
    space = write_space(tmp_path / "g.yaml", name="g")
    db = tmp_path / "store" / "mlflow.db"
    assert (
        main(
            [
                "sweep",
                str(space),
                "--warm-start",
                "earlier",
                "--tracking-uri",
                f"sqlite:///{db}",
                "--storage",
                str(tmp_path / "ray"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--warm-start: search.searcher is 'grid'; a warm start needs searcher optuna" in err
    assert not db.exists() and not (tmp_path / "ray" / "g").exists()
    optuna = write_space(
        tmp_path / "o.yaml", name="o", params={"loss.a": {"uniform": [4.0, 20.0]}}, search={"searcher": "optuna"}
    )
    assert main(["sweep", str(optuna), "--warm-start", "earlier", "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert "--warm-start: no sweep named 'earlier'" in capsys.readouterr().err
    assert not db.exists()


@pytest.mark.slow
def test_budgets_end_the_sweep_and_the_parent_run_says_why(tmp_path, ray_local, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    choice = {"loss.a": {"choice": [5.0, 8.0, 10.0, 15.0]}}
    # plateau: no trial can beat the first by more than 1.0 in accuracy, so it ends after 1 + 2 finished trials
    plateau = write_space(
        tmp_path / "p.yaml",
        name="plateau",
        params=choice,
        train={"epochs": 2},
        search={"searcher": "random", "num_samples": 8, "plateau": {"patience": 2, "min_delta": 1.0}},
    )
    result = run_sweep(
        plateau, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, make_report=False, progress=True
    )
    out = capsys.readouterr().out
    c = tracking.client(uri)
    parent = c.get_run(result.parent_run_id)
    assert parent.data.tags["ended_by"] == "plateau" and parent.data.tags["status"] == "completed"
    trials = tracking.trial_runs(c, result.parent_run_id, parent.info.experiment_id)
    assert 3 <= len([r for r in trials if "val_acc" in r.data.metrics]) < 8
    assert "did not improve by more than 1 for 2 finished trials" in out
    status = sweep_status("plateau", uri)
    assert status["state"] == "finished" and status["ended_by"] == "plateau" and status["planned"] == 8

    # time budget: 40 trials cannot run in 3 s
    timed = write_space(
        tmp_path / "t.yaml",
        name="timed",
        params=choice,
        train={"epochs": 3},
        search={"searcher": "random", "num_samples": 40, "time_budget_s": 3},
    )
    result = run_sweep(timed, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, make_report=False)
    parent = c.get_run(result.parent_run_id)
    assert parent.data.tags["ended_by"] == "time_budget"
    assert len(tracking.trial_runs(c, result.parent_run_id, parent.info.experiment_id)) < 40


@pytest.mark.slow
def test_train_and_features_show_progress_bars(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("dataset: {name: digits}\nmodel: {name: mlp}\nloss: {name: ce}\nepochs: 2\n")
    assert main(["train", str(config), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"c: 100%\|.*\| 2/2 .*val_acc 0\.\d{4}", err), err[-2000:]
    assert (
        main(
            [
                "features",
                "digits",
                "--backbone",
                "vgg16",
                "--random-init",
                "--image-size",
                "32",
                "--cache-dir",
                str(tmp_path / "features"),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    for split in ("train", "val", "test"):
        assert re.search(rf"vgg16 features, {split}: 100%\|.*batch", err), err[-2000:]


def test_the_sweep_header_says_when_max_t_caps_the_epochs():
    """`--set train.epochs=60` on a space whose scheduler stops at max_t 8 trains no trial past epoch 8: the
    first line says so, and how to change it; a cap at the epochs (or none) says nothing."""
    from tune_losses.tuning.console import header

    capped = header(load_space("quickstart", {"train.epochs": 60})[0], "q")
    assert "max_t is 8, below train.epochs 60" in capped and "--set search.scheduler.max_t=60" in capped
    assert "max_t" not in header(load_space("quickstart", {"train.epochs": 8})[0], "q")
    assert "max_t" not in header(load_space("quickstart", {"search.scheduler": {"name": "fifo"}})[0], "q")
