"""A sweep on a real two-node Ray cluster on this machine (`ray start --head` and `ray start --address` as separate
node processes, token authentication on), started with the commands and the environment that
docs/how-to/cluster-without-docker.md gives (read from it: addresses, ports, CPUs and the token put in; `--block`
and a temp dir added so that the test owns the nodes), recording into an MLflow server: trials run on both nodes,
the data reaches them through Ray's object store (its files are deleted once the driver has loaded them), and when
the worker node is killed mid-sweep its trials continue from their checkpoints on the head (the console says so in
one line, Ray's tracebacks go to the log file the sweep names) and every trial ends
recorded once in MLflow."""

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tune_losses import tracking
from tune_losses.tuning.ray_runtime import PRELOAD_MODULES

from helpers import free_port, start_mlflow_server, stop_server, write_space

pytestmark = [pytest.mark.slow, pytest.mark.cluster]
BIN = Path(sys.executable).parent
EPOCHS = 60
HOWTO = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "cluster-without-docker.md"


def documented(title: str, **put) -> str:
    """The how-to's code block of that title, with its example values replaced (``put``: old -> new)."""
    blocks = dict(re.findall(r'```bash title="([^"]+)"\n(.*?)```', HOWTO.read_text(), re.DOTALL))
    text = blocks[title]
    for old, new in put.items():
        assert old in text, (title, old)
        text = text.replace(old, new)
    return text.strip()


def documented_env(tracking_uri: str, home: Path) -> dict:
    """The how-to's cluster.env, for this machine's nodes and driver."""
    text = documented(
        "cluster.env",
        **{"10.0.0.1:5000": tracking_uri.removeprefix("http://"), "change-me": secrets.token_hex(32)},
        **{"/shared/runs": str(home)},
    )
    pairs = [shlex.split(ln, comments=True)[1].split("=", 1) for ln in text.splitlines() if ln.startswith("export ")]
    return dict(pairs)


def documented_command(title: str, port: int, extra: list[str]) -> list[str]:
    put = {"10.0.0.1": "127.0.0.1", "6379": str(port), "--num-cpus 8": "--num-cpus 1"}
    if title == "worker node":
        put["10.0.0.2"] = "127.0.0.1"
    args = shlex.split(documented(title, **put))
    assert args[:2] == ["ray", "start"], args
    return [str(BIN / "ray"), *args[1:], *extra]


def ray_node(command, env, log):
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def node_ids(address, env, procs) -> dict:
    """{'head': id, 'worker': id} once both nodes are up."""
    code = (
        "import json, ray; ray.init(address=%r, log_to_driver=False); "
        "print('NODES' + json.dumps([[n['NodeID'], n['Resources']] for n in ray.nodes() if n['Alive']]))"
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a Ray node process exited; see ray_nodes.log")
        out = subprocess.run(
            [sys.executable, "-c", code % address], capture_output=True, text=True, env=env, timeout=120
        ).stdout
        line = next((ln for ln in out.splitlines() if ln.startswith("NODES")), None)
        nodes = json.loads(line[5:]) if line else []
        if len(nodes) == 2:
            return {"worker" if "node_b" in res else "head": nid for nid, res in nodes}
        time.sleep(1)
    raise RuntimeError(f"the two-node cluster did not come up: {nodes}")


def preloaded(address, env, ids) -> dict:
    """{'head': bool, 'worker': bool}: whether a worker process of each node had the trial code imported
    before it ran anything (RAY_preload_python_modules, as docker/compose.yaml sets it)."""
    code = (  # noqa: UP031 (Python source with braces: % keeps it readable)
        "import json, sys, ray\n"
        "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as On\n"
        "ray.init(address=%r, log_to_driver=False)\n"
        "@ray.remote(num_cpus=0)\n"
        "def probe():\n"
        "    return all(m in sys.modules for m in %r)\n"
        "ids = %r\n"
        "print('PRELOADED' + json.dumps({k: ray.get(probe.options(scheduling_strategy=On(v, soft=False))"
        ".remote()) for k, v in ids.items()}))\n"
    ) % (address, ["torch._dynamo", *PRELOAD_MODULES], ids)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PRELOADED")), None)
    assert line, out.stderr[-2000:]
    return json.loads(line[9:])


@pytest.fixture
def cluster(tmp_path):
    port, mlflow_port = free_port(), free_port()
    server = start_mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", mlflow_port, tmp_path / "mlartifacts")
    # the how-to's environment: token authentication, the preloaded trial code, the MLflow server
    env = {**os.environ, "RAY_ADDRESS": "", **documented_env(f"http://127.0.0.1:{mlflow_port}", tmp_path)}
    assert env["RAY_preload_python_modules"] == ",".join(PRELOAD_MODULES)
    log = open(tmp_path / "ray_nodes.log", "w")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    head = ray_node(documented_command("head node", port, ["--block", "--temp-dir", temp]), env, log)
    worker = None
    try:
        time.sleep(3)
        worker = ray_node(
            documented_command("worker node", port, ["--block", "--resources", '{"node_b": 1}']), env, log
        )
        ids = node_ids(f"127.0.0.1:{port}", env, (head, worker))
        yield {
            "address": f"127.0.0.1:{port}",
            "env": env,
            "worker": worker,
            "ids": ids,
            "preloaded": preloaded(f"127.0.0.1:{port}", env, ids),
        }
    finally:
        for proc in (worker, head):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(temp, ignore_errors=True)
        stop_server(server, kill=True)


def image_tree(root: Path, classes=4, per_class=30, size=12) -> Path:
    """A class-per-folder tree of small PNGs, each class its own mean brightness (learnable)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(40 + 50 * c, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return root


def test_sweep_on_two_nodes_survives_losing_the_worker_node(tmp_path, cluster):
    assert cluster["preloaded"] == {"head": True, "worker": True}  # warm worker processes on every node
    data = image_tree(tmp_path / "images")
    space = write_space(
        tmp_path / "cluster.yaml",
        name="cluster_e2e",
        replace=("params",),
        train={
            "dataset": {"name": "image_folder", "root": str(data), "options": {"image_size": 12, "split": "half"}},
            "model": {"name": "small_cnn"},
            "loss": {"name": "dal", "params": {"a": 10.0}},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "batch_size": 8,
            "epochs": EPOCHS,
        },
        params={"loss.a": {"grid": [5.0, 10.0, 15.0, 20.0]}},
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
    log = open(tmp_path / "sweep.log", "w")
    driver = documented(
        "driver",
        **{"10.0.0.1:6379": cluster["address"], "cc_search": str(space), "/shared/ray": str(tmp_path / "shared")},
    )
    assert driver.startswith("tune-losses sweep ")
    sweep = subprocess.Popen(
        [sys.executable, "-m", "tune_losses.cli", *shlex.split(driver)[1:]],
        env={**cluster["env"], "PYTHONPATH": os.getcwd()},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker_id = cluster["ids"]["worker"]
    try:
        c = tracking.client(uri)
        deadline, on_worker, deleted = time.time() + 300, None, False
        while time.time() < deadline and sweep.poll() is None and on_worker is None:
            time.sleep(0.5)
            parent = tracking.find_sweep(c, "cluster_e2e")
            if parent is None:
                continue
            if not deleted:  # the driver has loaded the data (preflight comes before the parent run)
                shutil.rmtree(data)
                deleted = True
            for r in tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id):
                if (
                    r.data.tags.get("ray_node_id") == worker_id
                    and len(c.get_metric_history(r.info.run_id, "val_acc")) >= 2
                ):
                    on_worker = r.info.run_name
        assert sweep.poll() is None and on_worker, (tmp_path / "sweep.log").read_text()[-3000:]
        os.killpg(cluster["worker"].pid, signal.SIGKILL)  # the node, with the trial running on it
        sweep.wait(timeout=600)
        assert sweep.returncode == 0, (tmp_path / "sweep.log").read_text()[-3000:]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    parent = tracking.find_sweep(c, "cluster_e2e")
    runs = {r.info.run_name: r for r in tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)}
    assert sorted(runs) == ["dal a=10", "dal a=15", "dal a=20", "dal a=5"]  # each trial recorded once
    head_id = cluster["ids"]["head"]
    for name, r in runs.items():
        assert r.info.status == "FINISHED" and r.data.tags["status"] == "completed", name
        steps = sorted(m.step for m in c.get_metric_history(r.info.run_id, "val_acc"))
        assert steps == list(range(1, EPOCHS + 1)), name  # continued from a checkpoint: no gap, no repeat
    moved = runs[on_worker].data.tags
    assert moved["ray_nodes"] == f"{worker_id},{head_id}" and int(moved["retries"]) >= 1
    assert {n for r in runs.values() for n in r.data.tags["ray_nodes"].split(",")} == {worker_id, head_id}
    said_when_the_node_was_lost((tmp_path / "sweep.log").read_text(), worker_id, on_worker, EPOCHS)


def said_when_the_node_was_lost(console: str, worker_id: str, on_worker: str, epochs: int) -> None:
    """One line for the lost node (which trial, from which checkpointed epoch); Ray's tracebacks and node-death
    messages only in the log file the sweep names."""
    lost = re.search(r"^node (\w+) lost: trial (.+) goes on from epoch (\d+) \(details: (\S+)\)$", console, re.M)
    assert lost, console
    assert worker_id.startswith(lost.group(1)) and lost.group(2) == on_worker
    assert 1 <= int(lost.group(3)) < epochs
    for loud in ("Traceback", "ActorUnavailableError", "Trial task failed", "marked dead", "(raylet)", "state-dump"):
        assert loud not in console, loud
    log = Path(lost.group(4))
    assert f"Ray's and MLflow's messages of this sweep (faults, retries): {log}" in console
    text = log.read_text()
    assert "Trial task failed" in text and "Traceback" in text, text[-2000:]
