"""Driver lock files (tracking/driver.py DriverLock) are deleted when their sweep ends, so the per-user lock
directory does not grow; deleting them must not let two drivers hold one lock: a taker that opened the file just
before its holder deleted it re-opens the path (tried deterministically with the holder's release run between the
taker's open and its lock; and by processes taking and releasing one lock in a loop, a smoke check: its window is
narrow)."""

import os
import subprocess
import sys

import pytest

from tune_losses.tracking import driver
from tune_losses.tracking.driver import DriverLock, SweepBusy


@pytest.fixture
def locks(tmp_path, monkeypatch):
    directory = tmp_path / "locks"
    monkeypatch.setenv("TUNE_LOSSES_LOCK_DIR", str(directory))
    return directory


def test_lock_files_are_deleted_when_the_sweep_ends(locks, tmp_path):
    with DriverLock() as lock:
        lock.acquire(str(tmp_path / "ray"), "s", "sqlite:///x.db")
        assert len(list(locks.iterdir())) == 2
    assert list(locks.iterdir()) == []
    for i in range(5):  # many sweeps, one after another: nothing piles up
        with DriverLock() as lock:
            lock.acquire(str(tmp_path / "ray"), f"s{i}", "sqlite:///x.db")
    assert list(locks.iterdir()) == []


def _release_between_open_and_lock(monkeypatch, then):
    """The taker's first flock runs ``then`` first (what other processes do in that instant); later ones do not."""
    real, calls = driver.fcntl.flock, []

    def flock(fd, op):
        calls.append(fd)
        if len(calls) == 1:
            then()
        return real(fd, op)

    monkeypatch.setattr(driver.fcntl, "flock", flock)
    return calls


def test_a_taker_whose_file_was_deleted_and_taken_anew_is_refused(locks, tmp_path, monkeypatch):
    holder, newcomer = DriverLock(), DriverLock()
    holder.acquire(str(tmp_path), "s")

    def holder_ends_and_a_newcomer_takes_it():
        holder.release()  # deletes the file the taker has open
        newcomer.acquire(str(tmp_path), "s")  # a new file of the same name, locked

    _release_between_open_and_lock(monkeypatch, holder_ends_and_a_newcomer_takes_it)
    with pytest.raises(SweepBusy):  # it locked the deleted file, saw that, and found the new one held
        DriverLock().acquire(str(tmp_path), "s")
    newcomer.release()


def test_a_taker_whose_file_was_deleted_holds_a_file_at_the_path(locks, tmp_path, monkeypatch):
    holder = DriverLock()
    holder.acquire(str(tmp_path), "s")
    calls = _release_between_open_and_lock(monkeypatch, holder.release)
    taker = DriverLock()
    taker.acquire(str(tmp_path), "s")
    assert len(calls) == 2  # locked the deleted file, then the path again
    ((path, fd),) = taker._fds
    assert driver._same_file(fd, path)  # what it holds is what the next driver opens
    with pytest.raises(SweepBusy):
        DriverLock().acquire(str(tmp_path), "s")
    taker.release()
    assert list(locks.iterdir()) == []


WORKER = """
import os, sys, time
from tune_losses.tracking.driver import DriverLock, SweepBusy
marker, deadline, held = sys.argv[1], time.time() + float(sys.argv[2]), 0
while time.time() < deadline:
    lock = DriverLock()
    try:
        lock.acquire(sys.argv[3], "race")
    except SweepBusy:
        continue
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another holds the lock too
        os.close(fd)
        held += 1
        os.unlink(marker)
    finally:
        lock.release()
print(held)
"""


@pytest.mark.slow  # processes racing for a few seconds
def test_racing_drivers_never_hold_one_lock_together(locks, tmp_path):
    marker = tmp_path / "held"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(marker), "4", str(tmp_path / "ray")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-1500:] for _, err in outs]
    assert sum(int(out) for out, _ in outs) > 10  # they did take it, over and over
    assert list(locks.iterdir()) == []
