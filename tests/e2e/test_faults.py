"""Faults during a sweep (each with a real Ray runtime and a real MLflow store): a trial that raises once is
retried from its checkpoint; an MLflow server that goes away for a few seconds loses no metric, and the console
says so in two lines (not MLflow's errors) while `status` says the trials wait. (The driver
killed mid-sweep, a diverging trial and unwritable paths are in test_sweep.py.)"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tune_losses import tracking
from tune_losses.tracking.driver import local_driver

from helpers import free_port, start_mlflow_server, stop_server, write_space

pytestmark = pytest.mark.slow

FLAKY_PLUGIN = '''
"""A test plugin: cross-entropy that raises once, after the training of epoch {fail_at} (marker file: {marker})."""
from pathlib import Path

from tune_losses.losses.ce import CrossEntropyLoss
from tune_losses.losses.registry import register


@register("flaky_ce")
class FlakyCE(CrossEntropyLoss):
    def __init__(self, num_classes, fail_at={fail_at}):
        super().__init__(num_classes)
        self.fail_at, self.epochs = fail_at, 0

    def update(self, confusion):
        self.epochs += 1  # counted from the start of this process: a retry resumes at the checkpoint's epoch
        marker = Path({marker!r})
        if self.epochs == self.fail_at and not marker.exists():
            marker.write_text("raised once")
            raise RuntimeError("injected fault: flaky_ce raises once")
'''


def steps(c, run_id, key="val_acc"):
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def test_a_trial_that_raises_once_is_retried_from_its_checkpoint(tmp_path, plugin, ray_local, monkeypatch, capsys):
    from tune_losses.cli import main

    marker = tmp_path / "raised"
    name = plugin("flaky", FLAKY_PLUGIN.format(fail_at=2, marker=str(marker)))
    space = write_space(
        tmp_path / "flaky.yaml",
        replace=("params",),
        name="flaky_e2e",
        train={
            "plugins": [name],
            "dataset": {"name": "digits"},
            "model": {"name": "mlp"},
            "loss": {"name": "flaky_ce"},
            "epochs": 4,
            "batch_size": 64,
        },
        params={"loss.fail_at": {"grid": [2, 99]}},  # trial 1 raises at epoch 2, trial 2 never
        search={"searcher": "grid", "scheduler": {"name": "fifo"}, "max_failures": 1},
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("TUNE_LOSSES_HOME", str(tmp_path / "home"))  # the sweep's log of Ray's messages goes there
    assert main(["sweep", str(space), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")]) == 0
    out = capsys.readouterr()
    assert marker.exists(), "the fault was not injected"
    assert "2 completed" in out.out and "0 failed" in out.out
    logged = "".join(p.read_text() for p in (tmp_path / "home").glob("logs/*.log")) + out.out + out.err
    assert "snapshotting has been triggered" not in logged  # local storage: no warning spam, not even in the log
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, "flaky_e2e")
    runs = {r.info.run_name: r for r in tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)}
    assert sorted(runs) == ["flaky_ce fail_at=2", "flaky_ce fail_at=99"]  # one run per trial, the retry included
    flaky = runs["flaky_ce fail_at=2"]
    assert flaky.info.status == "FINISHED" and flaky.data.tags["status"] == "completed"
    assert flaky.data.tags["retries"] == "1" and "injected fault" in flaky.data.tags["last_error"]
    assert steps(c, flaky.info.run_id) == [1, 2, 3, 4]  # epoch 1 from before the fault, no gap, no repeat
    assert "retries" not in runs["flaky_ce fail_at=99"].data.tags


def trials_checkpointed(storage) -> int:
    """Trials that have finished an epoch: each keeps <storage>/<sweep>/<parent run id>/checkpoints/<key>/."""
    return len(list(storage.glob("*/*/checkpoints/*/state.pt")))


EPOCHS = 8  # the server goes down after a trial's first epoch: its 7 others are logged through the outage


def wait_for_store_down(locks, uri: str) -> None:
    """Until the driver (its health file beside its lock) says the store is down: 30 s at most."""
    os.environ["TUNE_LOSSES_LOCK_DIR"] = str(locks)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not (local_driver(uri, "server_down_e2e") or {}).get("store_down_since"):
            time.sleep(0.25)
    finally:
        del os.environ["TUNE_LOSSES_LOCK_DIR"]


def said_while_down(status, pid: int, console: str) -> None:
    """What the user saw: `status` says the trials wait, the console has one line when the store went and one when
    it came back, and MLflow's raw HTTP errors are in the log file the sweep names, not on the console."""
    assert status.returncode == 2 and len(status.stderr.strip().splitlines()) == 1, status.stderr
    assert (
        f"sweep 'server_down_e2e' is running (driver process {pid} on this machine); its trials are waiting "
        "for the tracking store since "
    ) in status.stderr
    assert "(30 min) (TUNE_LOSSES_STORE_WAIT_S), then they fail" in status.stderr
    down = re.findall(r"^waiting for the tracking store since \d\d:\d\d:\d\d \(trials paused\).*$", console, re.M)
    assert len(down) == 1 and len(re.findall(r"^tracking store back after \d+:\d\d$", console, re.M)) == 1, console
    for loud in ("HTTPConnectionPool", "Connection refused", "Retrying", "Traceback", "retrying"):
        assert loud not in console, loud
    log = re.search(r"^Ray's and MLflow's messages of this sweep \(faults, retries\): (\S+)$", console, re.M)
    assert log and f"(details: {log.group(1)})" in down[0], console
    assert "the tracking store does not answer: no connection to 127.0.0.1" in Path(log.group(1)).read_text()


def test_mlflow_server_down_for_seconds_mid_sweep_loses_no_metric(tmp_path):
    """... and the user sees two lines, not MLflow's errors; `status` meanwhile says the trials wait."""
    port = free_port()
    backend = f"sqlite:///{tmp_path}/server.db"
    server = start_mlflow_server(backend, port, tmp_path / "artifacts")
    uri = f"http://127.0.0.1:{port}"
    space = write_space(
        tmp_path / "down.yaml",
        name="server_down_e2e",
        train={
            "dataset": {"name": "digits"},
            "model": {"name": "small_cnn"},
            "epochs": EPOCHS,
            "repeats": 1,
            "loss": {"name": "dal", "params": {"a": 10.0}},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "batch_size": 16,
        },
        params={"loss.a": {"grid": [5.0, 10.0, 15.0]}},
    )
    env = {
        **os.environ,
        "RAY_ADDRESS": "",
        "TUNE_LOSSES_LOCK_DIR": str(tmp_path / "locks"),
        "TUNE_LOSSES_HOME": str(tmp_path),
    }
    log = open(tmp_path / "sweep.log", "w")
    command = [sys.executable, "-m", "tune_losses.cli"]
    sweep = subprocess.Popen(
        [*command, "sweep", str(space), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        c = tracking.client(uri)
        deadline = time.time() + 240
        while time.time() < deadline and sweep.poll() is None and trials_checkpointed(tmp_path / "ray") < 2:
            time.sleep(0.25)
        assert sweep.poll() is None, "the sweep ended before the server could be stopped"
        stop_server(server, kill=True)
        # the trials' tracking calls fail and are retried; training waits for the store, and the driver says so
        wait_for_store_down(tmp_path / "locks", uri)
        status = subprocess.run(
            [*command, "status", "server_down_e2e", "--tracking-uri", uri], capture_output=True, text=True, env=env
        )
        assert sweep.poll() is None, "the sweep ended while the server was down: the test tested nothing"
        server = start_mlflow_server(backend, port, tmp_path / "artifacts")
        sweep.wait(timeout=600)
        assert sweep.returncode == 0, (tmp_path / "sweep.log").read_text()[-3000:]
        parent = tracking.find_sweep(c, "server_down_e2e")
        runs = tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)
        assert len(runs) == 3 and parent.info.status == "FINISHED"
        for r in runs:
            assert r.info.status == "FINISHED" and r.data.tags["status"] == "completed"
            for key in ("val_acc", "train_loss", "test_f1"):
                assert steps(c, r.info.run_id, key) == list(range(1, EPOCHS + 1)), (r.info.run_name, key)
            assert {"confusion_matrix.json", "learning_curves.png"} <= {a.path for a in c.list_artifacts(r.info.run_id)}
        said_while_down(status, sweep.pid, (tmp_path / "sweep.log").read_text())
    finally:
        if sweep.poll() is None:
            sweep.kill()
        stop_server(server)
