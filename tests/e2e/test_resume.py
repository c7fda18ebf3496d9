"""Resuming real sweeps (real Ray, SQLite store): after a kill, Ctrl-C, a cut creation, a lost claim, a live driver."""

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tune_losses import tracking
from tune_losses.tracking.driver import DRIVER_TAG

from helpers import cut_after_creation, driver_of, sweep_phases, write_space

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("faults", ROOT / "benchmarks" / "faults.py")
faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faults)


def start_and_kill_when(directory: Path, name: str, finished: int, sig=signal.SIGKILL, group=True):
    """Start a sweep (4 trials x 6 epochs) and signal it once ``finished`` trial runs are FINISHED in MLflow
    (``finished=0``: once a trial has logged an epoch)."""
    space = faults.write_space(directory, name)
    cmd, log = faults.command(space, directory), directory / "driver.log"
    uri = f"sqlite:///{directory}/mlflow.db"
    driver = faults.start(cmd, log)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        time.sleep(0.5)
        try:
            if finished and len(faults.finished_end_times(uri, name)) >= finished:
                break
            if not finished and faults.epochs_logged(uri, name) > 0:
                break
        except Exception:
            continue
    assert driver.poll() is None, log.read_text()[-3000:]
    (os.killpg if group else os.kill)(driver.pid, sig)
    return driver, cmd, uri, log


def resume(cmd, directory, monkeypatch, capsys) -> tuple[int, str]:
    """``cmd --resume``: the CLI's main in this process, on the tests' shared Ray (a fresh process resuming is
    test_sweep.py's driver-killed test): (exit code, what it printed)."""
    from tune_losses.cli import main

    monkeypatch.setenv("TUNE_LOSSES_HOME", str(directory / "home"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    capsys.readouterr()
    code = main([*cmd[3:], "--resume"])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["torn Ray state", "storage deleted"])
def test_killed_sweep_resumes_from_the_ledger(tmp_path, damage, ray_local, monkeypatch, capsys):
    """SIGKILL once 2 of 4 trials have finished; tear Ray Tune's state files as a kill mid-write leaves them (or
    delete Ray's whole storage directory); --resume: the 2 finished trials are not trained again, the others end
    in their own runs, every epoch once, nothing RUNNING."""
    driver, cmd, uri, log = start_and_kill_when(tmp_path, "killed", finished=2)
    driver.wait()
    if damage == "torn Ray state":
        assert faults.tear_ray_state(tmp_path / "ray"), "no Ray Tune state file to tear"
    else:
        import shutil

        deadline = time.time() + 60
        while (tmp_path / "ray").exists():  # a trial process can outlive the driver and write a checkpoint
            shutil.rmtree(tmp_path / "ray", ignore_errors=True)
            assert time.time() < deadline, "Ray's storage kept being written after the driver was killed"
    before = faults.finished_end_times(uri, "killed")
    assert len(before) >= 2
    code, out = resume(cmd, tmp_path, monkeypatch, capsys)
    assert code == 0, out[-3000:]
    # a trial process can outlive the killed driver by a moment and finish: the resume keeps what it finds
    kept = re.search(r"(\d+) finished trials kept", out)
    assert kept and int(kept.group(1)) >= len(before), out[-3000:]
    if damage == "storage deleted":
        # no checkpoint is left to continue from (a trial may have finished after the kill, or not yet started)
        assert re.search(r"kept \(not trained again\), 0 continue from their checkpoints", out), out
    assert faults.check(uri, "killed", 6, before) == []
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, "killed")
    assert parent.data.tags["resumes"] == "1" and parent.data.tags["status"] == "completed"
    claimed = json.loads(parent.data.params["tune_losses.resumed_by.1"])  # the resume's claim (tracking/driver.py)
    assert claimed["pid"] != driver.pid and claimed["host"] == json.loads(parent.data.tags[DRIVER_TAG])["host"]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_sweep_resumes(tmp_path, ray_local, monkeypatch, capsys):
    """Ctrl-C (SIGINT to the terminal's process group): trials stop with their checkpoints, the parent is tagged
    interrupted, one line says how to resume, exit code 130; --resume then completes the ledger."""
    # at the first logged epoch: at a finished trial, the signal could land after the 6-s sweep had ended
    driver, cmd, uri, log = start_and_kill_when(tmp_path, "ctrlc", finished=0, sig=signal.SIGINT)
    assert driver.wait(timeout=120) == 130, log.read_text()[-3000:]
    text = log.read_text()
    again = re.search(r"Resume with: (.*)", text)
    assert again and "--resume" in again.group(1) and "Tuner.restore" not in text, text
    words = shlex.split(again.group(1))  # runnable as printed: python -m tune_losses.cli, as this test ran it
    assert shutil.which(words[0]) and words[1:4] == ["-m", "tune_losses.cli", "sweep"], words
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, "ctrlc")
    assert parent.data.tags["status"] == "interrupted" and parent.info.status == "KILLED"
    runs = tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)
    assert all(r.info.status != "RUNNING" for r in runs)
    before = faults.finished_end_times(uri, "ctrlc")
    code, out = resume(cmd, tmp_path, monkeypatch, capsys)
    assert code == 0, out[-3000:]
    assert faults.check(uri, "ctrlc", 6, before) == []


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path, ray_local, monkeypatch, capsys):
    driver, cmd, uri, log = start_and_kill_when(tmp_path, "twice", finished=0, sig=signal.SIGINT, group=False)
    time.sleep(0.3)
    os.kill(driver.pid, signal.SIGINT)
    assert driver.wait(timeout=30) == 130, log.read_text()[-3000:]
    assert "Interrupted again: exiting now" in log.read_text()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)  # what the driver's local Ray left behind
    code, out = resume(cmd, tmp_path, monkeypatch, capsys)
    assert code == 0, out[-3000:]
    assert faults.check(uri, "twice", 6, {}) == []


def test_a_sweep_name_in_the_store_is_resumed_never_started_twice(tmp_path):
    """A new sweep under a name the store holds, or --resume with a space other than the sweep's, is refused before
    Ray starts or anything is written."""
    from mlflow.entities import Param

    from tune_losses.spaces import SpaceError, load_space
    from tune_losses.tuning.resume import parent_params
    from tune_losses.tuning.runner import run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_space(tmp_path / "s.yaml", name="taken")
    space, _, _ = load_space(path)
    c = tracking.client(uri)
    exp = tracking.experiment_id(c)
    parent = c.create_run(exp, tags={"tune_losses.role": "sweep", "tune_losses.sweep": "taken"}).info.run_id
    c.log_batch(parent, params=[Param(k, v) for k, v in parent_params(space, uri).items()])
    with pytest.raises(SpaceError, match="--name: a sweep named 'taken' is already in .*continue it with --resume"):
        run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), make_report=False)
    with pytest.raises(SpaceError, match="epochs: 3 in the sweep, 5 now"):
        run_sweep(
            path,
            tracking_uri=uri,
            storage=str(tmp_path / "ray"),
            resume=True,
            make_report=False,
            overrides={"train.epochs": 5},
        )
    c.set_tag(parent, "ended_by", "completed")
    c.set_terminated(parent, "FINISHED")
    with pytest.raises(SpaceError, match="it has finished .*: give this one another --name"):
        run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), make_report=False)
    assert not (tmp_path / "ray").exists() or not any((tmp_path / "ray").iterdir())
    assert len(c.search_runs([exp])) == 1


@pytest.mark.slow
def test_a_sweep_cut_after_its_parent_was_created_reports_clearly_and_resumes(tmp_path, ray_local, capsys, monkeypatch):
    """Cut right after the parent's creation: `report` and `best` say what happened and what to run (no MLflow
    traceback); `--resume` completes the parent (params, space file) and runs the planned trials."""
    import tune_losses.tracking.driver as driver
    from tune_losses.cli import main
    from tune_losses.tracking.sweeps import sweep_status
    from tune_losses.tuning.runner import run_sweep

    path, uri, c = cut_after_creation(tmp_path)
    superseded = []
    monkeypatch.setattr(driver, "HEARTBEAT_S", 0.2)  # the driver's heartbeat thread beats and checks fast
    monkeypatch.setattr(driver, "_supersede", superseded.append)
    for cmd in (["report", "cut"], ["best", "cut"]):
        assert main([*cmd, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert "stopped while it was being created" in err and "--resume" in err and "Traceback" not in err, err
    run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), resume=True, verbose=0, make_report=False)
    status = sweep_status("cut", uri)
    assert status["state"] == "finished" and status["done"] == status["planned"] == 3
    # the resume's own claim did not make its heartbeat stop it; no beat once the sweep has ended
    assert superseded == [] and "tune_losses.resumed_by.1" in c.get_run(status["run_id"]).data.params
    beat = c.get_run(status["run_id"]).data.tags["heartbeat"]
    time.sleep(0.6)
    assert c.get_run(status["run_id"]).data.tags["heartbeat"] == beat
    parent = c.get_run(status["run_id"])
    assert parent.data.params["num_samples"] == "1" and [f.path for f in c.list_artifacts(parent.info.run_id)]
    parents = "tags.`tune_losses.sweep` = 'cut' and tags.`tune_losses.role` = 'sweep'"
    assert len(c.search_runs([parent.info.experiment_id], parents)) == 1  # resumed, not started again


def test_a_resume_that_loses_its_claim_writes_nothing(tmp_path, ray_local, monkeypatch):
    """Another command resumes the sweep between this resume's check and its claim (or claims at the same
    moment): this one stops with a clear error before writing a tag, param, artifact or trial, and leaves the
    parent's status alone."""
    from mlflow import MlflowClient

    from tune_losses.spaces import SpaceError
    from tune_losses.tracking.driver import SweepBusy

    def other_claim():
        return json.dumps({"host": "elsewhere", "pid": 1, "time": time.time()})

    real = MlflowClient.log_param

    def first_the_other(self, run_id, key, value, *args, **kwargs):
        real(self, run_id, key, other_claim())
        return real(self, run_id, key, value, *args, **kwargs)

    for case in ("claimed before", "claimed at once"):
        (tmp_path / case).mkdir()
        path, uri, c = cut_after_creation(tmp_path / case)
        parent_id = tracking.find_sweep(c, "cut").info.run_id
        before = c.get_run(parent_id)
        sweep = sweep_phases(path, uri, tmp_path / case / "ray", resume=True)
        try:
            sweep.check()
            if case == "claimed before":  # while this one started Ray: the parent read again shows it
                c.log_param(parent_id, "tune_losses.resumed_by.1", other_claim())
                with pytest.raises(SpaceError, match="'cut' is running: its driver beat \\d+ s ago"):
                    sweep.claim()
            else:  # between that read and this claim: the store keeps the other's value
                monkeypatch.setattr(MlflowClient, "log_param", first_the_other)
                with pytest.raises(SweepBusy, match="'cut' was resumed at the same moment by another command"):
                    sweep.claim()
                monkeypatch.undo()
        finally:
            sweep.lock.release()
        after = c.get_run(parent_id)
        assert after.info.status == before.info.status and after.data.tags == before.data.tags
        assert set(after.data.params) == {*before.data.params, "tune_losses.resumed_by.1"}
        assert c.list_artifacts(parent_id) == [] and not (tmp_path / case / "ray" / "cut").exists()
        assert c.search_runs([before.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'") == []


def test_resume_is_refused_while_the_sweeps_driver_runs(tmp_path, ray_local, capsys):
    """A second driver would train the same trials into the same checkpoints: --resume is refused while the
    driver's process lives (this machine) or beat recently (another machine), and allowed once it is gone."""
    import sys

    from tune_losses.cli import main
    from tune_losses.tracking.driver import DRIVER_TAG, running_driver
    from tune_losses.tracking.sweeps import sweep_status

    path = write_space(tmp_path / "s.yaml", name="busy")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c)
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        tags = {"tune_losses.sweep": "busy", "tune_losses.role": "sweep", DRIVER_TAG: driver_of(driver.pid)}
        run_id = c.create_run(exp, run_name="busy", tags=tags).info.run_id
        args = ["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--resume"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"the sweep 'busy' is running: its driver (process {driver.pid} on this machine) is running" in err
        assert sweep_status("busy", uri)["state"] == "running"
        # the same pid with another start time: a later process that reuses the pid, not the driver
        c.set_tag(run_id, DRIVER_TAG, driver_of(driver.pid, start="1"))
        assert running_driver(c.get_run(run_id)) is None
        c.set_tag(run_id, DRIVER_TAG, driver_of(driver.pid))
        driver.kill()
        time.sleep(0.5)  # dead, not reaped yet: a zombie is no driver
        assert running_driver(c.get_run(run_id)) is None and sweep_status("busy", uri)["state"] == "interrupted"
    finally:
        driver.kill()
        driver.wait()
    # another machine's driver (or a container that repeats this host name): its heartbeat decides
    for other in ({"host": "elsewhere"}, {"pidns": "1"}, {"boot": "another-boot"}):
        c.set_tag(run_id, DRIVER_TAG, driver_of(os.getpid(), **other))
        c.set_tag(run_id, "heartbeat", f"{time.time():.0f}")
        assert "beat 0 s ago" in running_driver(c.get_run(run_id)), other
        c.set_tag(run_id, "heartbeat", f"{time.time() - 600:.0f}")
        assert running_driver(c.get_run(run_id)) is None


def test_ctrl_c_while_the_report_is_built_keeps_the_finished_sweep(tmp_path, ray_local, monkeypatch, capsys):
    """A Ctrl-C that lands after the sweep ended, while its report is built: the sweep returns finished, the
    message says only the report is missing (not that no trial was recorded)."""
    import tune_losses.reports.build as build
    from tune_losses.tracking.sweeps import sweep_status
    from tune_losses.tuning.runner import run_sweep

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_report", ctrl_c)
    monkeypatch.setenv("TUNE_LOSSES_HOME", str(tmp_path / "home"))
    path = write_space(tmp_path / "s.yaml", name="late", params={"loss.a": {"grid": [5.0]}})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, make_report=True)
    assert result.best_config is not None and sweep_status("late", uri)["state"] == "finished"
    assert "Ctrl-C: no report built (the sweep has finished and is recorded" in capsys.readouterr().out
