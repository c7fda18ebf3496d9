"""MLflow as the sweep's ledger: idempotent writes against a real SQLite store, and sweeps killed (SIGKILL, torn Ray
state, storage deleted, Ctrl-C) and resumed end to end, audited with tune_losses.tracking.ledger.audit."""

import datetime
import importlib.util
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
from mlflow.exceptions import MlflowException

from tune_losses import tracking
from tune_losses.tracking.driver import DRIVER_TAG
from tune_losses.tracking.ledger import KEY_TAG, Ledger, audit, retrying, transient, trial_key

from helpers import cut_after_creation, sweep_phases, write_space

ROOT = Path(__file__).resolve().parents[2]
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


def test_a_sweep_whose_driver_stopped_beating_is_interrupted_not_running(ledger):
    """The driver tags the parent run with a heartbeat every 30 s; a RUNNING parent whose heartbeat is old lost
    its driver (a kill, a lost machine): `status` says interrupted and how to resume."""
    from tune_losses.tracking.sweeps import _state

    c, parent_id = ledger.client, ledger.parent_run_id
    c.set_tag(parent_id, "heartbeat", f"{time.time():.0f}")
    assert _state(c.get_run(parent_id), []) == "running"
    c.set_tag(parent_id, "heartbeat", f"{time.time() - 600:.0f}")
    assert _state(c.get_run(parent_id), []) == "interrupted"


@pytest.mark.parametrize("cut_in", ["migration", "copy"])
def test_a_new_sqlite_store_is_made_whole_or_not_at_all(tmp_path, monkeypatch, cut_in):
    """MLflow migrates a new SQLite store in many committed steps; a kill among them left a store no command could
    open. The store is now made beside its path (built, or copied from the schema template) and renamed into place:
    a kill while it is made leaves no store at all."""
    import shutil

    from mlflow.tracking import MlflowClient

    db = tmp_path / "s" / "mlflow.db"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no template yet: the first store builds it
    if cut_in == "copy":
        tracking.client(f"sqlite:///{tmp_path / 'first.db'}")

    def cut(*args, **kwargs):
        if cut_in == "copy":
            with open(args[1], "wb") as half:
                half.write(open(args[0], "rb").read(4096))
        raise KeyboardInterrupt  # as a kill in the middle of the migration or of the copy would stop it

    with monkeypatch.context() as m:
        m.setattr(*((MlflowClient, "search_experiments") if cut_in == "migration" else (shutil, "copyfile")), cut)
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

    path = write_space(tmp_path / "s.yaml", name="spelled")
    space, _, text = load_space(path)
    (tmp_path / "sub").mkdir()
    uri, other = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/sub/../mlflow.db"
    c = tracking.client(uri)
    tags = ParentRun.creation_tags("spelled", {})
    parent = ParentRun(c, ParentRun.new_run(c, tracking.experiment_id(c), "spelled", tags, "n"), "spelled")
    parent.complete(parent_params(space, uri), {path.name: text})
    again = ParentRun(tracking.client(other), parent.run_id, "spelled")
    again.complete(parent_params(space, other), {path.name: text})
    assert c.get_run(parent.run_id).data.params["tracking_uri"] == uri


@pytest.mark.parametrize("searcher, num_samples, planned", [("grid", 2, 6), ("optuna", 4, 4)])
def test_a_parent_cut_short_after_its_creation_tells_status_how_many_trials_it_plans(
    tmp_path, searcher, num_samples, planned
):
    """A kill (or a reader that looks) between the parent's creation and its params: `status` still knows how
    many trials the sweep plans, from the tag the run was created with, and sees a driver that beat just now."""
    from tune_losses.tracking.sweeps import sweep_status

    _, uri, c = cut_after_creation(tmp_path, searcher, num_samples)
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


def test_two_commands_starting_the_same_sweep_at_once_leave_one_parent(tmp_path):
    """Both found no parent of the name and both created one (remote storage, or two machines: no shared lock):
    a command that sees a parent besides its own deletes its own and stops; one that checks after the other
    deleted its own goes on (no clock is compared; two that both look before either deletes both stop)."""
    from tune_losses.spaces import SpaceError
    from tune_losses.tracking.parent import ParentRun, SweepNameTaken

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


def test_a_driver_in_this_process_is_running_while_its_sweep_runs(tmp_path):
    """A notebook's run_sweep: its parent reads running while the call runs, interrupted once it returned."""
    from tune_losses.tracking.driver import DriverLock, driver_alive, driver_tag

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
    bundled = Path(__file__).resolve().parents[2] / "search_spaces" / "quickstart.yaml"
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

    _, uri, _ = cut_after_creation(tmp_path)
    for cmd in (["report", "nosuch"], ["best", "nosuch", "--export", str(tmp_path / "best.yaml")]):
        assert main([*cmd, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert "sweep='nosuch': no sweep of that name" in err and "(sweeps there: cut)" in err, err
    assert not (tmp_path / "best.yaml").exists()
