"""One driver per sweep (tracking/driver.py): the locks on one machine, the claim a resume writes in MLflow
(which holds across machines), the heartbeat thread, and bad lock directories."""

import json
import os
import re
import stat
import time

import pytest

from tune_losses import tracking
from tune_losses.tracking.driver import (
    CLAIM_PREFIX,
    DriverLock,
    Heartbeat,
    SweepBusy,
    claim,
    driver_tag,
    lock_dir,
    running_driver,
)
from tune_losses.tracking.ledger import retrying


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    c = tracking.client(uri)
    tags = {"tune_losses.sweep": "s", "tune_losses.role": "sweep"}
    run_id = c.create_run(tracking.experiment_id(c), run_name="s", tags=tags).info.run_id
    # an interrupted sweep, ready to be resumed: it ended an hour ago
    c.set_terminated(run_id, "KILLED", end_time=int((time.time() - 3600) * 1000))
    return c, run_id


def test_two_resumes_that_found_the_sweep_undriven_cannot_both_claim_it(store):
    """Both read the parent before either wrote: both claim resume 1, MLflow keeps the first value, the second
    command is refused; a retried write of the winner (the same value) is not."""
    c, run_id = store
    seen = c.get_run(run_id)  # what both commands read
    assert claim(c, seen, retrying) == 1
    with pytest.raises(SweepBusy, match="resumed at the same moment by another command"):
        claim(c, seen, retrying)
    params = c.get_run(run_id).data.params
    assert [k for k in params if k.startswith(CLAIM_PREFIX)] == [f"{CLAIM_PREFIX}1"]
    value = params[f"{CLAIM_PREFIX}1"]
    c.log_param(run_id, f"{CLAIM_PREFIX}1", value)  # the same write again: idempotent
    assert claim(c, c.get_run(run_id), retrying) == 2  # a later resume reads claim 1 and claims 2
    c.log_param(run_id, f"{CLAIM_PREFIX}3", "not json")  # a claim that does not parse still counts
    c.log_param(run_id, f"{CLAIM_PREFIX}\u00b2", "x")  # a key int() cannot read is no claim
    assert claim(c, c.get_run(run_id), retrying) == 4


def test_a_claim_from_another_machine_makes_the_sweep_driven_until_it_ends_or_goes_stale(store):
    """A resume elsewhere claimed the sweep and has not yet marked it RUNNING: a resume here is refused while
    the claim is fresh; once it is stale, or the parent ended after it, the sweep is free."""
    from tune_losses.tracking.sweeps import _state

    c, run_id = store
    elsewhere = {**json.loads(driver_tag()), "host": "elsewhere"}
    c.log_param(run_id, f"{CLAIM_PREFIX}1", json.dumps({**elsewhere, "time": time.time() - 7200}))
    assert running_driver(c.get_run(run_id)) is None  # an old claim, the parent ended after it
    c.log_param(run_id, f"{CLAIM_PREFIX}2", json.dumps({**elsewhere, "time": time.time()}))
    assert re.fullmatch(r"its driver beat \d+ s ago .*", running_driver(c.get_run(run_id)))
    assert _state(c.get_run(run_id), []) == "running"
    c.log_param(run_id, f"{CLAIM_PREFIX}3", json.dumps({**elsewhere, "time": time.time() - 600}))
    assert _state(c.get_run(run_id), []) != "running"  # after the parent ended, but a claimant that never beat
    assert running_driver(c.get_run(run_id)) is None
    here = {**json.loads(driver_tag()), "pid": 2**22 + 7, "start": "1"}  # this machine, no such process
    c.log_param(run_id, f"{CLAIM_PREFIX}4", json.dumps({**here, "time": time.time()}))
    assert running_driver(c.get_run(run_id)) is None  # known dead at once, however fresh
    c.log_param(run_id, f"{CLAIM_PREFIX}5", json.dumps({**elsewhere, "time": time.time()}))
    time.sleep(0.01)
    c.set_terminated(run_id, "KILLED")  # the claimant ran and ended
    assert running_driver(c.get_run(run_id)) is None


def _wait_for(check, seconds=10.0):
    deadline = time.time() + seconds
    while not check() and time.time() < deadline:
        time.sleep(0.05)
    return check()


def test_the_heartbeat_beats_while_the_driver_drives_and_stops_when_the_parent_ends(store, monkeypatch):
    import tune_losses.tracking.driver as driver

    c, run_id = store
    monkeypatch.setattr(driver, "HEARTBEAT_S", 0.1)
    with DriverLock() as lock:
        lock.drives(run_id, c)  # as run_sweep does once the parent exists
        assert _wait_for(lambda: "heartbeat" in c.get_run(run_id).data.tags)
        assert abs(float(c.get_run(run_id).data.tags["heartbeat"]) - time.time()) < 5
        lock.ended()
        c.set_tag(run_id, "heartbeat", "1")
        time.sleep(0.5)
        assert c.get_run(run_id).data.tags["heartbeat"] == "1"  # no beat once the parent has ended


def test_a_driver_whose_sweep_another_command_took_over_stops(store):
    """A driver that looked gone (paused, the store out of reach) while another resumed its sweep: at its next
    beat it sees the later claim and stops."""
    c, run_id = store
    stopped = []
    beat = Heartbeat(c, run_id, claimed=1, every=0.1, on_superseded=stopped.append)
    try:
        c.log_param(run_id, f"{CLAIM_PREFIX}1", "{}")  # its own claim: it goes on beating
        assert _wait_for(lambda: "heartbeat" in c.get_run(run_id).data.tags)
        time.sleep(0.3)
        assert not stopped and beat._thread.is_alive()
        c.log_param(run_id, f"{CLAIM_PREFIX}2", "{}")  # another command's
        assert _wait_for(lambda: bool(stopped)) and "taken over by another command (resume 2)" in stopped[0]
        assert _wait_for(lambda: not beat._thread.is_alive()) and len(stopped) == 1  # it stopped beating
    finally:
        beat.stop()


def test_a_heartbeat_whose_read_fails_still_beats(store):
    """A slow or failing read of the parent must not cost the beat (the driver would look gone)."""
    c, run_id = store

    class NoReads:
        def __getattr__(self, name):
            return getattr(c, name)

        def get_run(self, run_id):
            raise ConnectionError("store busy")

    beat = Heartbeat(NoReads(), run_id, every=0.1, on_superseded=pytest.fail)
    try:
        assert _wait_for(lambda: "heartbeat" in c.get_run(run_id).data.tags)
    finally:
        beat.stop()


def test_the_lock_covers_the_store_as_well_as_the_storage(tmp_path, monkeypatch):
    """Two commands of one sweep name with the same tracking store (however spelled) but other storage would
    write the same ledger: the second is refused; another store with the same storage is refused too."""
    monkeypatch.chdir(tmp_path)
    with DriverLock() as lock:
        lock.acquire(str(tmp_path / "a"), "s", f"sqlite:///{tmp_path}/mlflow.db")
        store = f"tracking store sqlite:///{tmp_path}/mlflow.db"
        with pytest.raises(SweepBusy, match=f"'s' \\({store}\\) is being run by process {os.getpid()}"):
            DriverLock().acquire(str(tmp_path / "b"), "s", "sqlite:///mlflow.db")  # the same file, relative
        with pytest.raises(SweepBusy, match=f"'s' \\(storage {tmp_path / 'a'}\\)"):
            DriverLock().acquire(str(tmp_path / "a"), "s", f"sqlite:///{tmp_path}/other.db")
        with DriverLock() as other:
            other.acquire(str(tmp_path / "b"), "t", f"sqlite:///{tmp_path}/mlflow.db")  # another name
    # released: both locks of the failed acquire were let go as well
    with DriverLock() as again:
        again.acquire(str(tmp_path / "b"), "s", "sqlite:///mlflow.db")


def test_the_lock_directory_is_the_users_own_whatever_tmpdir_says(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNE_LOSSES_LOCK_DIR", raising=False)
    first = lock_dir()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert lock_dir() == first and first.name == f"tune_losses-locks-{os.getuid()}"
    assert stat.S_IMODE(first.stat().st_mode) & 0o022 == 0 and first.stat().st_uid == os.getuid()


@pytest.mark.parametrize("bad", ["link", "open", "file", "lockfile-link", "lockfile-hardlink", "unwritable"])
def test_a_lock_directory_that_others_could_tamper_with_is_refused(tmp_path, monkeypatch, bad):
    """A lock directory that is a link or writable by others, a planted link as a lock file, or one that cannot
    be written: a clear error naming the path and TUNE_LOSSES_LOCK_DIR, and the link's target untouched."""
    target = tmp_path / "victim"
    target.write_text("precious")
    locks = tmp_path / "locks"
    if bad == "link":
        locks.symlink_to(tmp_path)
    elif bad == "open":
        locks.mkdir()
        locks.chmod(0o777)
    elif bad == "file":
        locks.write_text("")
    elif bad == "unwritable":
        if os.geteuid() == 0:
            locks = tmp_path / "victim" / "locks"  # under a file: no user can create it
        else:
            locks.mkdir(mode=0o500)
    monkeypatch.setenv("TUNE_LOSSES_LOCK_DIR", str(locks))
    if bad.startswith("lockfile"):
        locks.mkdir(mode=0o700)
        for path in DriverLock.paths(str(tmp_path / "ray"), "s"):
            (path.symlink_to if bad == "lockfile-link" else path.hardlink_to)(target)
    with pytest.raises(ValueError, match=f"{tmp_path}.*TUNE_LOSSES_LOCK_DIR") as err:
        DriverLock().acquire(str(tmp_path / "ray"), "s")
    assert not isinstance(err.value, SweepBusy)
    assert target.read_text() == "precious"


def test_a_bad_lock_directory_stops_the_command_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from tune_losses.cli import main

    from helpers import write_space

    path = write_space(tmp_path / "s.yaml", name="nolock")
    (tmp_path / "locks").symlink_to(tmp_path)
    monkeypatch.setenv("TUNE_LOSSES_LOCK_DIR", str(tmp_path / "locks"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")]) == 2
    err = capsys.readouterr().err
    assert "the driver lock directory" in err and "Traceback" not in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


def test_the_cli_in_a_resume_command_runs_from_any_directory(tmp_path, monkeypatch):
    """`tune-losses` when the shell finds this very command, its absolute path when it does not (a venv not
    activated, run as .venv/bin/tune-losses), and this interpreter with -m from Python or `python -m`."""
    import shutil
    import sys

    from tune_losses.tuning.resume import cli_command as _cli

    exe = tmp_path / "venv" / "bin" / "tune-losses"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["venv/bin/tune-losses", "sweep"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert _cli() == [str(exe)]  # not activated: the absolute path
    monkeypatch.setenv("PATH", f"{exe.parent}:/usr/bin:/bin")
    assert _cli() == ["tune-losses"] and shutil.which("tune-losses") == str(exe)
    monkeypatch.setattr(sys, "argv", ["/somewhere/tune_losses/cli.py"])
    assert _cli() == [sys.executable, "-m", "tune_losses.cli"]
