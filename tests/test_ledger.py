"""MLflow as the sweep's ledger: idempotent writes against a real SQLite store, and sweeps killed (SIGKILL, torn Ray
state, storage deleted, Ctrl-C) and resumed end to end, audited with tune_losses.tracking.ledger.audit."""

import contextlib
import datetime
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
import requests
from mlflow.exceptions import MlflowException

from tune_losses import tracking
from tune_losses.tracking.driver import DRIVER_TAG
from tune_losses.tracking.ledger import KEY_TAG, Ledger, audit, retrying, transient, trial_key

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("faults", ROOT / "benchmarks" / "faults.py")
faults = importlib.util.module_from_spec(spec)
spec.loader.exec_module(faults)


@pytest.fixture
def ledger(tmp_path):
    c = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracking.experiment_id(c)
    parent = c.create_run(exp, tags={"tune_losses.role": "sweep", "tune_losses.sweep": "s"}).info.run_id
    return Ledger(c, exp, parent, retry_s=20)


class CreateReachesStoreThenFails:
    """A client whose first create_run reaches the store and then loses the answer (a timeout after the write)."""

    def __init__(self, client):
        self._client, self.creates = client, 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def create_run(self, *args, **kwargs):
        self.creates += 1
        run = self._client.create_run(*args, **kwargs)
        if self.creates == 1:
            raise requests.exceptions.ConnectionError("read timed out after the server wrote the run")
        return run


def test_trial_key_is_stable_and_tells_repeats_apart():
    a = {"params": {"loss.a": 5.0, "batch_size": 32}}
    assert trial_key(a) == trial_key({"params": {"batch_size": 32, "loss.a": 5.0}})
    assert trial_key(a) != trial_key({"params": {"loss.a": 15.0, "batch_size": 32}})
    assert trial_key({**a, "sample": 0}) != trial_key({**a, "sample": 1})


def test_a_create_that_reached_the_store_is_not_made_twice(ledger):
    ledger.client = CreateReachesStoreThenFails(ledger.client)
    record = ledger.find_or_create("k1", "dal a=5", {"status": "running"})
    again = ledger.find_or_create("k1", "dal a=5", {"status": "running"})
    assert ledger.client.creates == 1 and record.run_id == again.run_id
    assert list(ledger.trials()) == ["k1"]


def test_duplicate_runs_of_a_key_collapse_to_the_oldest(ledger):
    made = [
        ledger.client.create_run(
            ledger.experiment_id, tags={KEY_TAG: "k", "mlflow.parentRunId": ledger.parent_run_id}
        ).info.run_id
        for _ in range(3)
    ]
    assert ledger.find_or_create("k", "x", {}).run_id == made[0]
    assert ledger.trials()["k"].run_id == made[0]
    assert [r.info.run_id for r in ledger._runs()] == [made[0]]  # the others are deleted, not just hidden


def test_transient_failures_are_retried_and_refusals_are_not(ledger):
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError("connection refused")
        return "ok"

    assert retrying(flaky, seconds=30) == "ok" and len(calls) == 3
    run_id = ledger.find_or_create("k", "x", {}).run_id
    ledger.log_params(run_id, {"lr": 0.1})
    ledger.log_params(run_id, {"lr": 0.1})  # the same value again: idempotent
    count = []
    original = ledger.client.log_batch
    ledger.client.log_batch = lambda *a, **k: (count.append(1), original(*a, **k))[1]
    with pytest.raises(MlflowException) as err:
        ledger.log_params(run_id, {"lr": 0.2})  # a changed param is refused by MLflow: not retried
    assert len(count) == 1 and not transient(err.value)
    assert transient(MlflowException("API request failed", error_code="TEMPORARILY_UNAVAILABLE"))


def test_audit_finds_every_kind_of_broken_record(ledger):
    c = ledger.client
    ok = ledger.find_or_create("ok", "ok", {"status": "completed"}).run_id
    for step in (1, 2):
        ledger.log_epoch(ok, {"val_acc": 0.5}, step)
    ledger.set_status(ok, "FINISHED")
    assert audit(c, ledger.parent_run_id, ledger.experiment_id, epochs=2) == []
    twice = ledger.find_or_create("twice", "twice", {"status": "completed"}).run_id
    for step in (1, 1, 2):
        time.sleep(0.002)  # another timestamp: MLflow keeps both rows
        ledger.log_epoch(twice, {"val_acc": 0.5}, step)
    gap = ledger.find_or_create("gap", "gap", {"status": "completed"}).run_id
    ledger.log_epoch(gap, {"val_acc": 0.5}, 2)
    ledger.find_or_create("running", "running", {"status": "running"})
    problems = " | ".join(audit(c, ledger.parent_run_id, ledger.experiment_id, epochs=2))
    assert "twice: epochs logged more than once" in problems and "gap: epochs missing" in problems
    assert "running: RUNNING, not FINISHED" in problems


# --- end to end: kills and resumes --------------------------------------------------------------------------------
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


def resume(cmd, directory):
    env = {**os.environ, "RAY_ADDRESS": "", "TUNE_LOSSES_HOME": str(directory / "home")}
    return subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["torn Ray state", "storage deleted"])
def test_killed_sweep_resumes_from_the_ledger(tmp_path, damage):
    """SIGKILL once 2 of 4 trials have finished; tear Ray Tune's state files as a kill mid-write leaves them (or
    delete Ray's whole storage directory); --resume: the 2 finished trials are not trained again, the others end
    in their own runs, every epoch once, nothing RUNNING."""
    driver, cmd, uri, log = start_and_kill_when(tmp_path, "killed", finished=2)
    driver.wait()
    if damage == "torn Ray state":
        assert faults.tear_ray_state(tmp_path / "ray"), "no Ray Tune state file to tear"
    else:
        import shutil

        shutil.rmtree(tmp_path / "ray")
    before = faults.finished_end_times(uri, "killed")
    assert len(before) >= 2
    out = resume(cmd, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # a trial process can outlive the killed driver by a moment and finish: the resume keeps what it finds
    kept = re.search(r"(\d+) finished trials kept", out.stdout)
    assert kept and int(kept.group(1)) >= len(before), out.stdout[-3000:]
    if damage == "storage deleted":
        # no checkpoint is left to continue from (a trial may have finished after the kill, or not yet started)
        assert re.search(r"kept \(not trained again\), 0 continue from their checkpoints", out.stdout), out.stdout
    assert faults.check(uri, "killed", 6, before) == []
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, "killed")
    assert parent.data.tags["resumes"] == "1" and parent.data.tags["status"] == "completed"
    claimed = json.loads(parent.data.params["tune_losses.resumed_by.1"])  # the resume's claim (tracking/driver.py)
    assert claimed["pid"] != driver.pid and claimed["host"] == json.loads(parent.data.tags[DRIVER_TAG])["host"]


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_sweep_resumes(tmp_path):
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
    out = resume(cmd, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert faults.check(uri, "ctrlc", 6, before) == []


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path):
    driver, cmd, uri, log = start_and_kill_when(tmp_path, "twice", finished=0, sig=signal.SIGINT, group=False)
    time.sleep(0.3)
    os.kill(driver.pid, signal.SIGINT)
    assert driver.wait(timeout=30) == 130, log.read_text()[-3000:]
    assert "Interrupted again: exiting now" in log.read_text()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)  # what the driver's local Ray left behind
    out = resume(cmd, tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert faults.check(uri, "twice", 6, {}) == []


def test_a_sweep_name_in_the_store_is_resumed_never_started_twice(tmp_path):
    """A new sweep under a name the store holds, or --resume with a space other than the sweep's, is refused before
    Ray starts or anything is written."""
    from mlflow.entities import Param

    from tune_losses.spaces import SpaceError, load_space
    from tune_losses.tuning.resume import parent_params
    from tune_losses.tuning.runner import run_sweep

    from helpers import write_space

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


def test_a_sweep_whose_driver_stopped_beating_is_interrupted_not_running(ledger):
    """The driver tags the parent run with a heartbeat every 30 s; a RUNNING parent whose heartbeat is old lost
    its driver (a kill, a lost machine): `status` says interrupted and how to resume."""
    from tune_losses.tracking.sweeps import _state

    c, parent_id = ledger.client, ledger.parent_run_id
    c.set_tag(parent_id, "heartbeat", f"{time.time():.0f}")
    assert _state(c.get_run(parent_id), []) == "running"
    c.set_tag(parent_id, "heartbeat", f"{time.time() - 600:.0f}")
    assert _state(c.get_run(parent_id), []) == "interrupted"


def test_a_new_sqlite_store_is_made_whole_or_not_at_all(tmp_path, monkeypatch):
    """MLflow migrates a new SQLite store in many committed steps; a kill among them left a store no command could
    open. The schema is now built beside the store and renamed into place: a failure leaves no store at all."""
    from mlflow.tracking import MlflowClient

    db = tmp_path / "s" / "mlflow.db"

    def cut(self, *args, **kwargs):
        raise KeyboardInterrupt  # as a kill in the middle of the migration would stop it

    with monkeypatch.context() as m:
        m.setattr(MlflowClient, "search_experiments", cut)
        with pytest.raises(KeyboardInterrupt):
            tracking.client(f"sqlite:///{db}")
    assert not db.exists() and list(db.parent.iterdir()) == []
    c = tracking.client(f"sqlite:///{db}")
    assert db.exists() and tracking.experiment_id(c)


def test_resuming_through_another_spelling_of_the_store_does_not_rewrite_the_parent(tmp_path):
    """The same SQLite file reached as .../sub/../mlflow.db: the parent keeps the params it has (MLflow refuses
    a param logged again with another value, which --resume used to do with `tracking_uri`)."""
    from tune_losses.spaces import load_space
    from tune_losses.tracking.parent import ParentRun
    from tune_losses.tuning.resume import parent_params

    from helpers import write_space

    path = write_space(tmp_path / "s.yaml", name="spelled")
    space, _, text = load_space(path)
    (tmp_path / "sub").mkdir()
    uri, other = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/sub/../mlflow.db"
    c = tracking.client(uri)
    parent = ParentRun.create(c, tracking.experiment_id(c), "spelled", {}, str(tmp_path / "ray"))
    parent.complete(parent_params(space, uri), {path.name: text})
    again = ParentRun(tracking.client(other), parent.run_id, "spelled")
    again.complete(parent_params(space, other), {path.name: text})
    assert c.get_run(parent.run_id).data.params["tracking_uri"] == uri


def _cut_after_creation(tmp_path, searcher="grid", num_samples=1):
    """A sweep's claim killed right after its parent run was created (before its params and space file)."""
    from mlflow import MlflowClient

    from helpers import sweep_phases, write_space

    grid = {"grid": [5.0, 10.0, 15.0]} if searcher == "grid" else {"uniform": [5.0, 20.0]}
    search = {"searcher": searcher, "num_samples": num_samples}
    path = write_space(tmp_path / "s.yaml", name="cut", params={"loss.a": grid}, search=search)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = sweep_phases(path, uri, tmp_path / "ray")

    def cut(self, *args, **kwargs):
        raise KeyboardInterrupt  # the kill, right after the run was created

    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(MlflowClient, "log_batch", cut)
            with pytest.raises(KeyboardInterrupt):
                sweep.claim()
    finally:
        sweep.lock.release()
    return path, uri, sweep.client


@pytest.mark.parametrize("searcher, num_samples, planned", [("grid", 2, 6), ("optuna", 4, 4)])
def test_a_parent_cut_short_after_its_creation_tells_status_how_many_trials_it_plans(
    tmp_path, searcher, num_samples, planned
):
    """A kill (or a reader that looks) between the parent's creation and its params: `status` still knows how
    many trials the sweep plans, from the tag the run was created with, and sees a driver that beat just now."""
    from tune_losses.tracking.sweeps import sweep_status

    _, uri, c = _cut_after_creation(tmp_path, searcher, num_samples)
    status = sweep_status("cut", uri)
    # its driver (this process) runs no sweep now: interrupted at once, no two-minute wait for a heartbeat
    assert status["planned"] == planned and status["done"] == 0 and status["state"] == "interrupted"
    assert not c.get_run(status["run_id"]).data.params  # the cut came before the params


def test_a_parent_is_running_while_its_driver_beats_on_another_machine(tmp_path):
    """Seen from elsewhere (no driver tag of this machine), the heartbeat decides: fresh, running; two minutes
    old, interrupted; none at all (a version that beat only once the trials ran, cut short before), interrupted."""
    from tune_losses.tracking.driver import STALE_HEARTBEAT_S
    from tune_losses.tracking.sweeps import sweep_status

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c)
    for name, beat in (("fresh", time.time()), ("stale", time.time() - STALE_HEARTBEAT_S - 60), ("none", None)):
        tags = {"tune_losses.sweep": name, "tune_losses.role": "sweep", "status": "running"}
        if beat is not None:
            tags["heartbeat"] = f"{beat:.0f}"
        c.create_run(exp, run_name=name, tags=tags)
    assert [sweep_status(n, uri)["state"] for n in ("fresh", "stale", "none")] == ["running", *["interrupted"] * 2]


@pytest.mark.slow
def test_a_sweep_cut_after_its_parent_was_created_reports_clearly_and_resumes(tmp_path, ray_local, capsys, monkeypatch):
    """Cut right after the parent's creation: `report` and `best` say what happened and what to run (no MLflow
    traceback); `--resume` completes the parent (params, space file) and runs the planned trials."""
    import tune_losses.tracking.driver as driver
    from tune_losses.cli import main
    from tune_losses.tracking.sweeps import sweep_status
    from tune_losses.tuning.runner import run_sweep

    path, uri, c = _cut_after_creation(tmp_path)
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

    from helpers import sweep_phases

    def other_claim():
        return json.dumps({"host": "elsewhere", "pid": 1, "time": time.time()})

    real = MlflowClient.log_param

    def first_the_other(self, run_id, key, value, *args, **kwargs):
        real(self, run_id, key, other_claim())
        return real(self, run_id, key, value, *args, **kwargs)

    for case in ("claimed before", "claimed at once"):
        (tmp_path / case).mkdir()
        path, uri, c = _cut_after_creation(tmp_path / case)
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


def test_two_commands_starting_the_same_sweep_at_once_leave_one_parent(tmp_path):
    """Both found no parent of the name and both created one (remote storage, or two machines: no shared lock):
    a command that sees a parent besides its own deletes its own and stops; one that checks after the other
    deleted its own goes on (no clock is compared; two that both look before either deletes both stop)."""
    from tune_losses.spaces import SpaceError
    from tune_losses.tracking.parent import ParentRun, SweepNameTaken

    from helpers import sweep_phases, write_space

    path = write_space(tmp_path / "s.yaml", name="twice")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c)
    tags = {"tune_losses.sweep": "twice", "tune_losses.role": "sweep"}
    parents = "tags.`tune_losses.sweep` = 'twice' and tags.`tune_losses.role` = 'sweep'"
    other = ParentRun.new_run(c, exp, "twice", tags, "other")  # the other command's, not yet checked
    time.sleep(0.01)
    sweep = sweep_phases(path, uri, tmp_path / "ray")
    with pytest.raises(SpaceError, match=f"started at the same moment by another command \\(parent run {other}"):
        sweep.claim()
    assert [p.info.run_id for p in c.search_runs([exp], parents)] == [other]
    ParentRun(c, other, "twice").check_alone(exp)  # the other checks now: it is alone, it goes on
    c.delete_run(other)
    first = ParentRun(c, ParentRun.new_run(c, exp, "twice", tags, "1"), "twice")
    time.sleep(0.01)
    second = ParentRun(c, ParentRun.new_run(c, exp, "twice", tags, "2"), "twice")
    assert tracking.find_sweep(c, "twice").info.run_id == first.run_id  # readers take the first meanwhile
    with pytest.raises(SweepNameTaken):
        first.check_alone(exp)  # the first to check sees the other: it stops
    second.check_alone(exp)  # the later one is alone by then: it goes on
    assert [p.info.run_id for p in c.search_runs([exp], parents)] == [second.run_id]


def _driver_of(pid: int, **over) -> str:
    """A driver tag for process ``pid`` of this machine (as that process would write it)."""
    import json

    from tune_losses.tracking.driver import _stat, driver_tag

    return json.dumps({**json.loads(driver_tag()), "pid": pid, "start": _stat(pid)[1], **over})


def test_resume_is_refused_while_the_sweeps_driver_runs(tmp_path, ray_local, capsys):
    """A second driver would train the same trials into the same checkpoints: --resume is refused while the
    driver's process lives (this machine) or beat recently (another machine), and allowed once it is gone."""
    import sys

    from tune_losses.cli import main
    from tune_losses.tracking.driver import DRIVER_TAG, running_driver
    from tune_losses.tracking.sweeps import sweep_status

    from helpers import write_space

    path = write_space(tmp_path / "s.yaml", name="busy")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    exp = tracking.experiment_id(c)
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        tags = {"tune_losses.sweep": "busy", "tune_losses.role": "sweep", DRIVER_TAG: _driver_of(driver.pid)}
        run_id = c.create_run(exp, run_name="busy", tags=tags).info.run_id
        args = ["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--resume"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"the sweep 'busy' is running: its driver (process {driver.pid} on this machine) is running" in err
        assert sweep_status("busy", uri)["state"] == "running"
        # the same pid with another start time: a later process that reuses the pid, not the driver
        c.set_tag(run_id, DRIVER_TAG, _driver_of(driver.pid, start="1"))
        assert running_driver(c.get_run(run_id)) is None
        c.set_tag(run_id, DRIVER_TAG, _driver_of(driver.pid))
        driver.kill()
        time.sleep(0.5)  # dead, not reaped yet: a zombie is no driver
        assert running_driver(c.get_run(run_id)) is None and sweep_status("busy", uri)["state"] == "interrupted"
    finally:
        driver.kill()
        driver.wait()
    # another machine's driver (or a container that repeats this host name): its heartbeat decides
    for other in ({"host": "elsewhere"}, {"pidns": "1"}, {"boot": "another-boot"}):
        c.set_tag(run_id, DRIVER_TAG, _driver_of(os.getpid(), **other))
        c.set_tag(run_id, "heartbeat", f"{time.time():.0f}")
        assert "beat 0 s ago" in running_driver(c.get_run(run_id)), other
        c.set_tag(run_id, "heartbeat", f"{time.time() - 600:.0f}")
        assert running_driver(c.get_run(run_id)) is None


def test_a_driver_in_this_process_is_running_while_its_sweep_runs(tmp_path):
    """A notebook's run_sweep: its parent reads running while the call runs, interrupted once it returned."""
    from tune_losses.tracking.driver import DRIVER_TAG, DriverLock, driver_alive, driver_tag

    c = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = c.create_run(tracking.experiment_id(c), tags={DRIVER_TAG: driver_tag()}).info.run_id
    with DriverLock() as lock:
        lock.drives(run_id)
        assert driver_alive(c.get_run(run_id)) is True
    assert driver_alive(c.get_run(run_id)) is False


def test_the_driver_lock_excludes_a_second_driver_until_the_first_dies(tmp_path):
    """The lock a driver holds on its sweep (storage and name): a second driver (another process, or another
    run_sweep of this one) is refused with the holder's pid; a SIGKILL releases it at once."""
    import sys

    from tune_losses.tracking.driver import DriverLock, SweepBusy

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from tune_losses.tracking.driver import DriverLock; "
            f"DriverLock().acquire({str(tmp_path / 'ray')!r}, 'busy'); print('held', flush=True); "
            "time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            SweepBusy, match=f"the sweep 'busy' \\(storage .*\\) is being run by process {holder.pid} on "
        ):
            DriverLock().acquire(str(tmp_path / "ray"), "busy")
    finally:
        holder.kill()
        holder.wait()
    with DriverLock() as lock:
        lock.acquire(str(tmp_path / "ray"), "busy")  # free at once after the kill
        with pytest.raises(SweepBusy):
            DriverLock().acquire(str(tmp_path / "ray"), "busy")  # this process's second run_sweep
        DriverLock().acquire(str(tmp_path / "ray"), "other")  # another sweep of the same storage
    DriverLock().acquire(str(tmp_path / "ray"), "busy")  # released with the first
    assert not (tmp_path / "ray").exists()  # the lock is not in the user's directories


def test_a_second_sweep_on_a_locked_name_is_refused_before_anything_starts(tmp_path, capsys):
    """`tune-losses sweep` while another process drives that sweep: refused with the holder, and nothing
    written (no store, no parent run)."""
    from tune_losses.cli import main
    from tune_losses.tracking.driver import DriverLock

    from helpers import write_space

    path = write_space(tmp_path / "s.yaml", name="locked")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with DriverLock() as lock:
        lock.acquire(str(tmp_path / "ray"), "locked")
        assert main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")]) == 2
    err = capsys.readouterr().err
    assert f"the sweep 'locked' (storage {tmp_path / 'ray'}) is being run by process {os.getpid()}" in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


def test_the_resume_command_is_the_sweeps_own_and_status_prints_it(tmp_path):
    """`status` of an interrupted sweep prints the command that continues it: its space, name, store (no
    password), storage and every --set, read back by the CLI as the same overrides; trials a dead driver left
    RUNNING read as interrupted."""

    from tune_losses.cli import _overrides, build_parser
    from tune_losses.tracking.record import RESUME_COMMAND as RESUME_TAG
    from tune_losses.tracking.sweeps import format_status, sweep_status
    from tune_losses.tuning.resume import cli_command as _cli
    from tune_losses.tuning.resume import resume_command

    from helpers import write_space

    path = write_space(tmp_path / "my space.yaml", name="again")
    overrides = {
        "train.epochs": 8,
        "train.optimizer": {"name": "sgd", "lr": 1e-05, "betas": [0.9, 0.999]},
        "study": "a: b",
        "x.y": "8",
        "when": datetime.date(2026, 12, 2),
        "note": "two\nlines 'quoted' \"too\"",
        "none": None,
        "yes": "yes",
    }
    uri = "postgresql://user:secret@db:5432/mlflow"
    cmd = resume_command(path, "again", uri, str(tmp_path / "ray"), None, overrides, None, "earlier")
    assert "secret" not in cmd
    args = build_parser().parse_args(shlex.split(cmd)[len(_cli()) :])
    assert args.resume and args.name == "again" and args.space == str(path) and args.storage == str(tmp_path / "ray")
    assert _overrides(args.set) == overrides and args.warm_start == "earlier"
    assert resume_command(path, "again", uri, "/s", None, {"x": object()}, None) == ""  # no command, no crash
    bundled = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    with_dataset = resume_command(bundled, "q", "sqlite:///m.db", "/s", "ray://h:10001", {}, "mnist_5k")
    assert shutil.which(shlex.split(with_dataset)[0])  # runnable as printed, venv activated or not
    assert (
        with_dataset.startswith(f"{shlex.join(_cli())} sweep quickstart --name q")
        and "--dataset mnist_5k" in with_dataset
    )
    assert "--address ray://h:10001" in with_dataset

    store = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(store)
    exp = tracking.experiment_id(c)
    tags = {"tune_losses.sweep": "again", "tune_losses.role": "sweep", RESUME_TAG: cmd, "heartbeat": "1"}
    parent = c.create_run(exp, run_name="again", tags=tags).info.run_id
    c.create_run(exp, run_name="dal a=5", tags={"mlflow.parentRunId": parent, "tune_losses.role": "trial"})
    stopped = {"mlflow.parentRunId": parent, "tune_losses.role": "trial", "status": "interrupted"}  # by Ctrl-C
    c.set_terminated(c.create_run(exp, run_name="dal a=9", tags=stopped).info.run_id, "KILLED")
    text = format_status(sweep_status("again", store))
    assert "interrupted" in text.splitlines()[0] and f"continue it with `{cmd}`" in text, text
    assert "put them in place of ***" in text, text
    assert "2 interrupted (they continue on --resume)" in text and "  interrupted: dal a=5: epoch 0" in text, text
    assert "  interrupted: dal a=9: epoch 0" in text, text
    for trial in c.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'"):
        c.set_tag(trial.info.run_id, "status", "completed")
        c.set_terminated(trial.info.run_id, "FINISHED")
    c.set_tag(parent, "status", "completed")
    c.set_tag(parent, "ended_by", "completed")
    c.set_terminated(parent, "FINISHED")  # (as if it had been resumed and finished)
    text = format_status(sweep_status("again", store))
    assert "interrupted" not in text and "continue it" not in text, text


def test_report_and_best_of_an_unknown_sweep_name_the_sweeps_there(tmp_path, capsys):
    from tune_losses.cli import main

    _, uri, _ = _cut_after_creation(tmp_path)
    for cmd in (["report", "nosuch"], ["best", "nosuch", "--export", str(tmp_path / "best.yaml")]):
        assert main([*cmd, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert "sweep='nosuch': no sweep of that name" in err and "(sweeps there: cut)" in err, err
    assert not (tmp_path / "best.yaml").exists()


def test_ctrl_c_while_the_report_is_built_keeps_the_finished_sweep(tmp_path, ray_local, monkeypatch, capsys):
    """A Ctrl-C that lands after the sweep ended, while its report is built: the sweep returns finished, the
    message says only the report is missing (not that no trial was recorded)."""
    import tune_losses.reports.build as build
    from tune_losses.tracking.sweeps import sweep_status
    from tune_losses.tuning.runner import run_sweep

    from helpers import write_space

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "build_report", ctrl_c)
    monkeypatch.setenv("TUNE_LOSSES_HOME", str(tmp_path / "home"))
    path = write_space(tmp_path / "s.yaml", name="late", params={"loss.a": {"grid": [5.0]}})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, make_report=True)
    assert result.best_config is not None and sweep_status("late", uri)["state"] == "finished"
    assert "Ctrl-C: no report built (the sweep has finished and is recorded" in capsys.readouterr().out
