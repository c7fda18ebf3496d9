"""The warm Ray's address file (tuning/warm_ray.py): written atomically, a stale one found and removed, and a sweep
with no address joins the recorded Ray. The real `up` -> sweep -> `down` is tests/e2e/test_warm_ray.py."""

import os
import socket
import subprocess
import sys

import pytest

from tune_losses.tuning import warm_ray
from tune_losses.tuning.sweep import SweepOptions

from helpers import write_space


def info(pid: int, address: str = "127.0.0.1:1") -> warm_ray.WarmRay:
    return warm_ray.WarmRay(address, pid, 2, ["tune_losses.tuning.trial"], True, 1.0)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_LOSSES_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture
def keeper(home):
    """A process whose command line names the keeper's module, and a port that answers as its GCS would: what
    ``find`` checks (the file logic, not Ray: tests/e2e/test_warm_ray.py runs the real one)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", warm_ray.KEEPER])
    recorded = info(proc.pid, f"127.0.0.1:{server.getsockname()[1]}")
    warm_ray.write(recorded)
    yield recorded
    proc.kill()
    proc.wait()
    server.close()


def test_the_file_is_written_whole_and_read_back(home):
    warm_ray.write(info(123))
    assert warm_ray.read() == info(123)
    assert [p.name for p in home.iterdir()] == [warm_ray.FILENAME]  # no temporary file left behind


def test_a_stale_file_is_removed_and_nothing_is_up(home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    warm_ray.write(info(dead.pid))
    assert warm_ray.find() is None and not warm_ray.state_file().exists()
    warm_ray.write(info(dead.pid))
    assert warm_ray.down() == (info(dead.pid), False)
    assert not warm_ray.state_file().exists()


def test_a_pid_taken_by_another_process_is_not_a_keeper(home):
    warm_ray.write(info(os.getpid()))  # this test's own process: alive, but no keeper
    assert warm_ray.find() is None and not warm_ray.state_file().exists()


def test_down_with_nothing_up_does_nothing(home):
    assert warm_ray.down() == (None, False)


def test_a_keeper_whose_ray_does_not_answer_is_stale(home, keeper):
    warm_ray.write(info(keeper.pid, "127.0.0.1:1"))
    assert warm_ray.find() is None and not warm_ray.state_file().exists()


def test_a_sweep_with_no_address_joins_the_warm_ray(home, keeper, tmp_path):
    space = write_space(tmp_path / "s.yaml")
    o = SweepOptions.resolve(space, tracking_uri=f"sqlite:///{tmp_path}/m.db", storage=str(tmp_path / "ray"))
    assert (o.address, o.address_option, o.warm_ray) == (keeper.address, "tune-losses up", keeper)
    assert "--address" not in o.resume_command()  # a resume finds the warm Ray again, or starts its own
    named = SweepOptions.resolve(space, address=keeper.address, tracking_uri="sqlite:////tmp/m.db", storage="/tmp/r")
    assert named.warm_ray == keeper  # its own address given: still this machine's warm Ray (a local store is fine)
    given = SweepOptions.resolve(space, address="10.0.0.5:6379", tracking_uri="http://m:5000", storage="/tmp/r")
    assert (given.address, given.warm_ray) == ("10.0.0.5:6379", None)  # an address given wins
