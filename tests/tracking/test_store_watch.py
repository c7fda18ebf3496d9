"""A running driver notices a store that goes down, and comes back, within seconds (tracking/driver.py
StoreWatch: a TCP probe of the store's server), and says so in a health file beside its lock; `tune-losses status`
reads that file when the store does not answer: the sweep is running, its trials wait for the store since when
and until when. A real TCP server stands for the store's (stopped and started again on the same port)."""

import json
import os
import socket
import time

import pytest

from tune_losses import cli
from tune_losses.tracking import driver
from tune_losses.tracking.driver import DriverLock, StoreWatch, health_path, local_driver
from tune_losses.tracking.ledger import STORE

from helpers import driver_of, free_port


@pytest.fixture
def locks(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNE_LOSSES_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setattr(STORE, "failing_since", None)
    return tmp_path / "locks"


def listen(port: int) -> socket.socket:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    return server


def wait_for(condition, seconds: float = 5.0):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_the_watch_marks_the_store_down_and_back_and_keeps_the_health_file(locks):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = listen(port)
    health = health_path(uri, "s")
    watch = StoreWatch(uri, health, {"sweep": "s"}, every=0.05)
    try:
        assert wait_for(health.is_file)
        assert json.loads(health.read_text())["store_down_since"] is None and STORE.failing_since is None
        server.close()  # the store's server stops
        assert wait_for(lambda: STORE.failing_since is not None)
        assert "no connection to 127.0.0.1" in STORE.last_error
        assert wait_for(lambda: json.loads(health.read_text())["store_down_since"] == STORE.failing_since)
        facts = json.loads(health.read_text())
        assert facts["wait_s"] == 1800.0 and "no connection" in facts["store_error"]
        server = listen(port)  # and answers again
        assert wait_for(lambda: STORE.failing_since is None)
        assert wait_for(lambda: json.loads(health.read_text())["store_down_since"] is None)
    finally:
        server.close()
        watch.stop()
    assert not health.exists()  # the driver's file goes with its watch


def test_status_says_the_sweep_waits_for_the_store_while_it_is_down(locks, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TUNE_LOSSES_STORE_WAIT_S", "600")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens: the store is down
    with DriverLock() as lock:
        lock.acquire(str(tmp_path / "ray"), "waiting", uri)
        lock.drives("0123abcd")  # a driver of this machine (this process) drives the sweep
        assert wait_for(lambda: (local_driver(uri, "waiting") or {}).get("store_down_since") is not None)
        since = local_driver(uri, "waiting")["store_down_since"]
        for name in ("waiting", "0123abcd"):  # by name or by parent run id
            assert cli.main(["status", name, "--tracking-uri", uri]) == 2
            err = capsys.readouterr().err
            assert len(err.strip().splitlines()) == 1, err
            at = time.strftime("%H:%M:%S", time.localtime(since))
            until = time.strftime("%H:%M:%S", time.localtime(since + 600))
            assert f"sweep {name!r} is running (driver process {os.getpid()} on this machine)" in err
            assert f"its trials are waiting for the tracking store since {at}, until about {until} (10 min)" in err
            assert "TUNE_LOSSES_STORE_WAIT_S" in err and "the tracking store is unreachable" in err
    assert cli.main(["status", "waiting", "--tracking-uri", uri]) == 2  # the driver has ended: the store's error
    err = capsys.readouterr().err
    assert "is running" not in err and "the tracking store is unreachable" in err


def test_a_health_file_left_by_a_dead_driver_says_nothing(locks, tmp_path):
    uri = "http://127.0.0.1:1"
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    tag = json.loads(driver_of(os.getpid()))
    os.waitpid(dead, 0)
    health = health_path(uri, "gone")
    facts = {**tag, "pid": dead, "sweep": "gone", "run_id": "r", "store": driver._store_key(uri)}
    health.write_text(json.dumps({**facts, "store_down_since": time.time(), "wait_s": 60}))
    assert local_driver(uri, "gone") is None
    health.write_text(json.dumps({**facts, "pid": os.getpid(), "store_down_since": None, "wait_s": 60}))
    assert local_driver(uri, "gone")["run_id"] == "r"
    assert local_driver("http://127.0.0.1:2", "gone") is None  # another store: another sweep
