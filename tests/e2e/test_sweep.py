"""End-to-end sweeps on digits (CPU, real Ray, real MLflow SQLite store), asserting on what MLflow holds."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tune_losses import tracking
from tune_losses.spaces import SpaceError, load_space
from tune_losses.tracking.replicas import read_table
from tune_losses.tuning.runner import run_sweep

from helpers import write_space

pytestmark = pytest.mark.slow


def children(uri, name):
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, name)
    return c, parent, tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)


def test_grid_sweep_records_every_trial(tmp_path, ray_local):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = write_space(tmp_path / "grid.yaml", name="grid_e2e")
    import tune_losses

    result = tune_losses.sweep(
        space, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, **{"train.epochs": 3}
    )  # the Python API, with a dotted override
    assert result.summary["trials"] == 2 and result.summary["completed"] == 2
    assert result.summary["epochs_run"] == result.summary["epochs_full_budget"] == 6
    c, parent, runs = children(uri, "grid_e2e")
    assert parent.info.status == "FINISHED" and parent.data.params["searcher"] == "grid"
    assert {a.path for a in c.list_artifacts(parent.info.run_id, "space")} == {
        "space/grid.yaml",
        "space/resolved_space.json",
    }
    assert sorted(r.info.run_name for r in runs) == ["dal a=15", "dal a=5"]
    for r in runs:
        assert r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["status"] == "completed" and r.data.tags["stopped_early"] == "false"
        assert r.data.tags["ray_trial_id"] and r.data.tags["tune_losses.trial_key"]
        assert r.data.params["loss.params.a"] in ("5.0", "15.0") and r.data.params["repeats"] == "2"
        assert r.data.params["weights"] == "none (trained from scratch)"
        assert "val_acc" not in r.data.params and "loss.params.a" not in r.data.metrics
        history = c.get_metric_history(r.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == [1, 2, 3]
        for key in ("val_acc", "val_acc_std", "test_acc_min", "test_nmi", "train_loss"):
            assert key in r.data.metrics
        assert not any(k.endswith(("_r0", "_r1")) for k in r.data.metrics)  # each replica's values: the table
        table = read_table(c, r.info.run_id)
        assert sorted(set(zip(table["epoch"], table["replica"]))) == [(e, i) for e in (1, 2, 3) for i in (0, 1)]
        arts = {a.path for a in c.list_artifacts(r.info.run_id)}
        assert {"confusion_matrix.json", "confusion_matrix.png", "learning_curves.png", "replicas.parquet"} <= arts
        confusion = json.loads(open(c.download_artifacts(r.info.run_id, "confusion_matrix.json", str(tmp_path))).read())
        assert [len(m) for m in confusion] == [10, 10]  # each replica's (replicas, C, C)
        assert all(sum(map(sum, m)) == 359 for m in confusion)


def test_asha_optuna_sweep_stops_trials_early(tmp_path, ray_local):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = write_space(
        tmp_path / "asha.yaml",
        name="asha_e2e",
        train={
            "dataset": {"name": "digits"},
            "model": {"name": "mlp"},
            "epochs": 6,
            "repeats": 1,
            "loss": {"name": "dal", "params": {"a": 10.0}},
            "optimizer": {"name": "sgd", "lr": 0.02},
            "batch_size": 64,
        },
        params={"loss.a": {"uniform": [1.5, 30.0]}, "batch_size": {"choice": [32, 64]}},
        search={
            "searcher": "optuna",
            "num_samples": 6,
            "scheduler": {"name": "asha", "max_t": 6, "grace_period": 1, "reduction_factor": 3},
        },
    )
    result = run_sweep(space, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0)
    s = result.summary
    assert s["trials"] == 6 and s["stopped_early"] >= 1 and s["epochs_run"] < s["epochs_full_budget"]
    c, parent, runs = children(uri, "asha_e2e")
    assert len(runs) == 6 and parent.data.params["scheduler"] == "asha"
    stopped = [r for r in runs if r.data.tags["stopped_early"] == "true"]
    assert len(stopped) == s["stopped_early"]
    for r in stopped:
        epochs = [m.step for m in c.get_metric_history(r.info.run_id, "val_acc")]
        assert max(epochs) == int(r.data.tags["stopped_at_epoch"]) < 6
    for r in runs:
        assert r.info.run_name.startswith("dal a=") and " bs=" in r.info.run_name
        assert 1.5 <= float(r.data.params["swept.loss.a"]) <= 30


def test_trials_run_in_prestarted_workers_that_have_the_trial_code_imported(ray_local):
    """Ray reuses the workers it prestarts only for actors with the job's own runtime environment: Tune's trial
    actors must have none of their own (tuning/ray_runtime.py), and the workers must come with the trial code."""
    from ray.tune import Trainable
    from ray.tune.execution.class_cache import _ActorClassCache

    from tune_losses.tuning.ray_runtime import PRELOAD_MODULES

    class Probe(Trainable):
        pass

    assert not _ActorClassCache().get(Probe)._default_options.get("runtime_env")

    @ray_local.remote(num_cpus=0)
    def imported():
        return [m for m in ("torch._dynamo", *PRELOAD_MODULES) if m in sys.modules]

    assert ray_local.get(imported.remote()) == ["torch._dynamo", *PRELOAD_MODULES]


def test_bundled_spaces_validate_and_reproduce_the_papers_grids():
    assert load_space("dal_a_table2")[0].params["loss.a"].grid == [5.0, 8.0, 10.0, 11.0, 13.0, 15.0, 16.0, 20.0]
    assert load_space("dal_a_table2")[0].train.repeats == 60
    assert load_space("cc_lambda")[0].params["loss.lambda"].grid == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert load_space("cc_batch")[0].params["batch_size"].grid == [8, 16, 32, 64, 128]
    pairs = load_space("beta_gamma_grid")[0].params["loss.beta,loss.gamma"].grid
    assert [p for p in pairs if p[1] == 3] == [[2, 3], [3, 3], [4, 3], [5, 3], [7, 3], [10, 3]]
    assert [p[1] for p in pairs if p[0] == 4] == [3, 5, 10]
    with pytest.raises(SpaceError, match="no such search space"):
        load_space("nope")


def test_spaces_command_lists_bundled_spaces():
    out = subprocess.run(
        [sys.executable, "-m", "tune_losses.cli", "spaces"], capture_output=True, text=True, timeout=120
    ).stdout
    for name in (
        "quickstart",
        "dal_a_table2",
        "dal_a_search",
        "beta_gamma_grid",
        "beta_gamma_search",
        "cc_lambda",
        "cc_batch",
        "cc_search",
    ):
        assert name in out


def test_driver_killed_mid_sweep_resumes_with_one_run_per_trial(tmp_path):
    """SIGKILL the driver process once some epochs are in MLflow, then --resume: one finished run per trial,
    metric histories without gaps or repeats, none left RUNNING."""
    import os
    import signal
    import time

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = write_space(
        tmp_path / "resume.yaml",
        name="resume_e2e",
        train={
            "dataset": {"name": "digits"},
            "model": {"name": "small_cnn"},
            "epochs": 8,
            "repeats": 1,
            "loss": {"name": "dal", "params": {"a": 10.0}},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "batch_size": 16,
        },
        params={"loss.a": {"grid": [5.0, 10.0, 15.0, 20.0]}},
        search={"searcher": "grid", "max_concurrent": 2, "scheduler": {"name": "fifo"}},
    )
    cmd = [
        sys.executable,
        "-m",
        "tune_losses.cli",
        "sweep",
        str(space),
        "--tracking-uri",
        uri,
        "--storage",
        str(tmp_path / "ray"),
    ]
    env = {**os.environ, "RAY_ADDRESS": ""}
    driver = subprocess.Popen(
        cmd, stdout=open(tmp_path / "driver.log", "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    deadline = time.time() + 240
    logged = 0
    while time.time() < deadline and driver.poll() is None:
        time.sleep(1)
        try:
            c, parent, runs = children(uri, "resume_e2e")
            logged = sum(len(c.get_metric_history(r.info.run_id, "val_acc")) for r in runs)
        except Exception:
            continue
        if logged >= 3:
            break
    assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
    driver.wait()
    time.sleep(2)
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    c, parent, runs = children(uri, "resume_e2e")
    assert len(runs) == 4 and sorted(r.info.run_name for r in runs) == ["dal a=10", "dal a=15", "dal a=20", "dal a=5"]
    assert len({r.data.tags["tune_losses.trial_key"] for r in runs}) == 4
    for r in runs:
        r = c.get_run(r.info.run_id)
        assert r.info.status == "FINISHED" and r.data.tags["status"] == "completed"
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_acc"))
        assert steps == list(range(1, 9))
        # figures too, also for trials that had finished before the kill (drawn with the report, from MLflow)
        assert {"confusion_matrix.json", "confusion_matrix.png", "learning_curves.png"} <= {
            a.path for a in c.list_artifacts(r.info.run_id)
        }
    assert c.get_run(parent.info.run_id).info.status == "FINISHED"


def test_a_diverging_trial_is_recorded_with_its_reason_and_the_sweep_goes_on(tmp_path, ray_local):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = write_space(tmp_path / "nan.yaml", name="nan_e2e", params={"optimizer.lr": {"grid": [0.05, 1.0e30]}})
    result = run_sweep(space, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0)
    assert result.summary["diverged"] == 2 and result.summary["completed"] == 2  # 2 values of a x 2 lr
    c, parent, runs = children(uri, "nan_e2e")
    for r in runs:
        if r.data.params["swept.optimizer.lr"] == "1e+30":
            assert r.data.tags["status"] == "diverged" and "training loss became" in r.data.tags["reason"]
        else:
            assert r.data.tags["status"] == "completed"
        assert r.info.status == "FINISHED"
        for key in ("train_loss", "val_acc"):  # no NaN was ever logged
            assert all(np.isfinite(m.value) for m in c.get_metric_history(r.info.run_id, key))
    assert "diverged" in result.report.markdown and "training loss became" in result.report.markdown


def test_unwritable_paths_fail_before_anything_starts(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    space = write_space(tmp_path / "ok.yaml")
    with pytest.raises(SpaceError, match="--storage=.*is not writable"):
        run_sweep(space, tracking_uri=f"sqlite:///{tmp_path}/m.db", storage=str(blocker / "ray"), verbose=0)
    with pytest.raises(SpaceError, match="--tracking-uri=.*is not writable"):
        run_sweep(space, tracking_uri=f"sqlite:///{blocker}/db/m.db", storage=str(tmp_path / "r"), verbose=0)
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "r").exists()
