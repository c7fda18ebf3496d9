"""The warm Ray's address file (tuning/warm_ray.py): written atomically, a stale one found and removed, and a sweep
with no address joins the recorded Ray. The real `up` -> sweep -> `down` is tests/e2e/test_warm_ray_e2e.py."""

import os
import socket
import subprocess
import sys

import pytest

from tune_losses.tuning import warm_ray
from tune_losses.tuning.sweep import SweepOptions

from helpers import write_space


def info(pid: int, address: str = "127.0.0.1:1") -> warm_ray.WarmRay:
    recorded = warm_ray.settings()
    return warm_ray.WarmRay(
        address, pid, 2, ["tune_losses.tuning.trial"], True, 1.0, warm_ray.fingerprint(recorded), settings=recorded
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_LOSSES_HOME", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path


@pytest.fixture
def keeper(home):
    """A process whose command line names the keeper's module, and a port that answers as its GCS would: what
    ``find`` checks (the file logic, not Ray: tests/e2e/test_warm_ray_e2e.py runs the real one)."""
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


def test_a_live_keeper_whose_ray_does_not_answer_is_not_joined_and_not_forgotten(home, keeper):
    """A GCS slow to answer (a busy machine) is not a dead one: no sweep joins it now, but the file stays, so `up`
    starts no second keeper and `down` still stops this one."""
    slow = info(keeper.pid, "127.0.0.1:1")
    warm_ray.write(slow)
    assert warm_ray.find() is None and warm_ray.read() == slow
    assert warm_ray.up() == (slow, True)


def test_a_sweep_with_no_address_joins_the_warm_ray(home, keeper, tmp_path):
    space = write_space(tmp_path / "s.yaml")
    o = SweepOptions.resolve(space, tracking_uri=f"sqlite:///{tmp_path}/m.db", storage=str(tmp_path / "ray"))
    assert (o.address, o.address_option, o.warm_ray) == (keeper.address, "tune-losses up", keeper)
    assert "--address" not in o.resume_command()  # a resume finds the warm Ray again, or starts its own
    named = SweepOptions.resolve(space, address=keeper.address, tracking_uri="sqlite:////tmp/m.db", storage="/tmp/r")
    assert named.warm_ray == keeper  # its own address given: still this machine's warm Ray (a local store is fine)
    given = SweepOptions.resolve(space, address="10.0.0.5:6379", tracking_uri="http://m:5000", storage="/tmp/r")
    assert (given.address, given.warm_ray) == ("10.0.0.5:6379", None)  # an address given wins


def test_a_sweep_with_other_settings_than_the_warm_rays_starts_its_own(home, keeper, tmp_path, monkeypatch, capsys):
    """The warm Ray's workers run the code and the environment of `up`: a sweep whose own differ (here
    TUNE_LOSSES_FUSED, which its trials read) does not join it, and says why and how to refresh it."""
    space = write_space(tmp_path / "s.yaml")
    monkeypatch.setenv("TUNE_LOSSES_FUSED", "0")
    o = SweepOptions.resolve(space, tracking_uri=f"sqlite:///{tmp_path}/m.db", storage=str(tmp_path / "ray"))
    assert (o.address, o.warm_ray) == (None, None)
    said = capsys.readouterr().out
    assert "not joining the warm Ray" in said and "this command's differ (TUNE_LOSSES_FUSED)" in said, said
    assert warm_ray.find() == keeper  # left as it is
    monkeypatch.delenv("TUNE_LOSSES_FUSED")
    assert SweepOptions.resolve(space, tracking_uri=f"sqlite:///{tmp_path}/m.db").warm_ray == keeper
