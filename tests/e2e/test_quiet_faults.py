"""What a user sees on the console when a fault hits a running sweep (real Ray, real MLflow server): a lost Ray
node and a tracking store that goes down and comes back are one line each; Ray's node-death dumps, Ray Tune's
tracebacks and MLflow's raw HTTP errors stay off the console and go to the log file the sweep names."""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cluster import cluster, documented, image_tree  # noqa: F401 (the two-node cluster fixture)

from tune_losses import tracking
from tune_losses.tracking.driver import local_driver

from helpers import free_port, start_mlflow_server, stop_server, write_space

pytestmark = pytest.mark.slow

EPOCHS = 60


@pytest.mark.cluster
def test_a_lost_node_is_one_line_and_its_dumps_go_to_the_log(tmp_path, cluster):  # noqa: F811
    data = image_tree(tmp_path / "images", per_class=12)
    space = write_space(
        tmp_path / "lost.yaml",
        name="lost_node_e2e",
        replace=("params",),
        train={
            "dataset": {"name": "image_folder", "root": str(data), "options": {"image_size": 12, "split": "half"}},
            "model": {"name": "small_cnn"},
            "loss": {"name": "dal", "params": {"a": 10.0}},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "batch_size": 8,
            "epochs": EPOCHS,
            "repeats": 1,
        },
        params={"loss.a": {"grid": [5.0, 10.0]}},
        search={
            "searcher": "grid",
            "scheduler": {"name": "fifo"},
            "max_concurrent": 2,
            "max_failures": 2,
            "fuse": "off",
        },
        resources={"cpu": 1, "gpu": 0},
    )
    uri = cluster["env"]["MLFLOW_TRACKING_URI"]
    driver = documented(
        "driver",
        **{"10.0.0.1:6379": cluster["address"], "cc_search": str(space), "/shared/ray": str(tmp_path / "shared")},
    )
    out = open(tmp_path / "console.txt", "w")
    sweep = subprocess.Popen(
        [sys.executable, "-m", "tune_losses.cli", *shlex.split(driver)[1:]],
        env={**cluster["env"], "PYTHONPATH": os.getcwd()},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    worker_id = cluster["ids"]["worker"]
    try:
        c = tracking.client(uri)
        deadline, on_worker = time.time() + 300, None
        while time.time() < deadline and sweep.poll() is None and on_worker is None:
            time.sleep(0.25)
            parent = tracking.find_sweep(c, "lost_node_e2e")
            if parent is None:
                continue
            for r in tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id):
                if (
                    r.data.tags.get("ray_node_id") == worker_id
                    and len(c.get_metric_history(r.info.run_id, "val_acc")) >= 2
                ):
                    on_worker = r.info.run_name
        assert sweep.poll() is None and on_worker, (tmp_path / "console.txt").read_text()[-3000:]
        os.killpg(cluster["worker"].pid, signal.SIGKILL)
        sweep.wait(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    console = (tmp_path / "console.txt").read_text()
    assert sweep.returncode == 0, console[-3000:]
    lost = re.search(r"^node (\w+) lost: trial (.+) goes on from epoch (\d+) \(details: (\S+)\)$", console, re.M)
    assert lost, console
    assert worker_id.startswith(lost.group(1)) and lost.group(2) == on_worker
    runs = {r.info.run_name: r for r in tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)}
    steps = sorted(m.step for m in c.get_metric_history(runs[on_worker].info.run_id, "val_acc"))
    assert 1 <= int(lost.group(3)) <= len(steps) and steps == list(range(1, EPOCHS + 1))
    for loud in ("Traceback", "ActorUnavailableError", "Trial task failed", "marked dead", "(raylet)", "state-dump"):
        assert loud not in console, loud
    log = Path(lost.group(4))
    assert f"Ray's and MLflow's messages of this sweep (faults, retries): {log}" in console
    text = log.read_text()
    assert "Trial task failed" in text and "Traceback" in text, text[-2000:]


def test_a_store_outage_is_two_lines_and_status_says_the_trials_wait(tmp_path):
    port = free_port()
    backend = f"sqlite:///{tmp_path}/server.db"
    server = start_mlflow_server(backend, port, tmp_path / "artifacts")
    uri = f"http://127.0.0.1:{port}"
    space = write_space(
        tmp_path / "down.yaml",
        name="store_down_e2e",
        train={"model": {"name": "small_cnn"}, "epochs": 6, "repeats": 1, "batch_size": 32},
    )
    env = {
        **os.environ,
        "RAY_ADDRESS": "",
        "TUNE_LOSSES_LOCK_DIR": str(tmp_path / "locks"),
        "TUNE_LOSSES_HOME": str(tmp_path),
    }
    out = open(tmp_path / "console.txt", "w")
    command = [sys.executable, "-m", "tune_losses.cli"]
    sweep = subprocess.Popen(
        [*command, "sweep", str(space), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and sweep.poll() is None and not list(tmp_path.glob("ray/*/*/checkpoints/*/*.pt")):
            time.sleep(0.25)
        assert sweep.poll() is None, (tmp_path / "console.txt").read_text()[-3000:]
        stop_server(server, kill=True)
        os.environ["TUNE_LOSSES_LOCK_DIR"] = env["TUNE_LOSSES_LOCK_DIR"]  # read the driver's health file here
        try:
            deadline = time.time() + 30
            while time.time() < deadline and not (local_driver(uri, "store_down_e2e") or {}).get("store_down_since"):
                time.sleep(0.25)
        finally:
            del os.environ["TUNE_LOSSES_LOCK_DIR"]
        status = subprocess.run(
            [*command, "status", "store_down_e2e", "--tracking-uri", uri], capture_output=True, text=True, env=env
        )
        assert sweep.poll() is None, "the sweep ended while the store was down: the test tested nothing"
        server = start_mlflow_server(backend, port, tmp_path / "artifacts")
        sweep.wait(timeout=600)
    finally:
        if sweep.poll() is None:
            sweep.kill()
        stop_server(server)
    console = (tmp_path / "console.txt").read_text()
    (tmp_path / "status.txt").write_text(status.stderr)  # what the user saw, kept for a reader of the test's files
    assert sweep.returncode == 0, console[-3000:]
    assert status.returncode == 2 and len(status.stderr.strip().splitlines()) == 1, status.stderr
    assert (
        f"sweep 'store_down_e2e' is running (driver process {sweep.pid} on this machine); its trials are waiting "
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
