"""docker/: what can be checked without a Docker engine (none runs on these machines). The compose file is
valid for Compose (`docker-compose config` from Debian, or `docker compose config`) and wired as promised;
the Dockerfile installs with the project's pins and its entry points exist; and the commands the compose
services run (Ray head and worker, the MLflow server) run here with the pinned versions. Not run here: an
image build, `docker compose up`, GPUs in containers, the KubeRay example on a Kubernetes cluster."""

import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tune_losses.tuning.ray_runtime import PRELOAD_MODULES

from helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def compose_cli():
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True) if shutil.which("docker") else None
    return ["docker", "compose"] if probe is not None and probe.returncode == 0 else None


def test_compose_file_passes_compose_config():
    cli = compose_cli()
    if cli is None:
        if os.environ.get("CI"):
            pytest.fail("no Compose client (make test installs Debian's docker-compose)")
        pytest.skip("no Compose client")
    args = [*cli, "-f", str(DOCKER / "compose.yaml"), "config", "-q"]
    ok = subprocess.run(
        args, capture_output=True, text=True, cwd=DOCKER, env={**ENV, "RAY_AUTH_TOKEN": "t", "POSTGRES_PASSWORD": "p"}
    )
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        args,
        capture_output=True,
        text=True,
        cwd=DOCKER,
        env={k: v for k, v in ENV.items() if k not in ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD")},
    )
    assert missing.returncode != 0 and "docker/.env" in missing.stderr  # secrets are required, never defaulted


def test_compose_services_are_wired_as_promised(compose):
    s = compose["services"]
    assert set(s) == {"postgres", "mlflow", "ray-head", "ray-worker"}
    for name, service in s.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this host"
    mlflow = s["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    assert mlflow["command"][mlflow["command"].index("--workers") + 1] == "1"
    assert "mlartifacts:/mlartifacts" in mlflow["volumes"]
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    head, worker = s["ray-head"], s["ray-worker"]
    head_port = shlex.split(head["command"])[shlex.split(head["command"]).index("--port") + 1]
    assert f"--address ray-head:{head_port}" in worker["command"]
    gpus = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    for node in (head, worker):  # the same storage path on every node, the same token, the shared server
        assert "shared:/shared" in node["volumes"]
        assert node["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert node["environment"]["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?")
        assert node["environment"]["RAY_preload_python_modules"] == ",".join(PRELOAD_MODULES)
        assert node["build"]["dockerfile"] == "docker/Dockerfile"


@pytest.mark.slow  # runs the image's smoke command (`tune-losses spaces`) in a fresh interpreter
def test_dockerfile_uses_the_pins_and_its_entry_points_exist():
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG CUDA_IMAGE=nvidia/cuda:" in text and "FROM ${CUDA_IMAGE}" in text
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    install = next(ln for ln in text.splitlines() if "pip install -c constraints.txt" in ln)
    assert set(install.split('".[')[1].split("]")[0].split(",")) <= extras
    assert "torch==" not in text  # versions live in constraints.txt only
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (ROOT / src).exists(), src
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", ".git"} <= set(ignored)
    smoke = next(ln for ln in text.splitlines() if ln.startswith("RUN tune-losses"))
    run = subprocess.run(smoke.removeprefix("RUN "), shell=True, capture_output=True, text=True, env=ENV, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "cc_search" in run.stdout


def test_kuberay_example_matches_the_image_and_pins():
    cluster = yaml.safe_load((DOCKER / "kuberay-raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    pins = dict(
        ln.split("==")
        for ln in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in ln and not ln.startswith("#")
    )
    assert cluster["spec"]["rayVersion"] == pins["ray"]
    worker = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"] for e in worker["env"]}
    assert {"MLFLOW_TRACKING_URI", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_preload_python_modules"} <= env


def _swap(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


@pytest.mark.slow
def test_the_services_commands_run_with_the_pinned_versions(compose, tmp_path):
    """The compose services' own command lines (ports and bind addresses swapped for free local ones)."""
    s = compose["services"]
    procs = []
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    try:
        # MLflow server: the compose command, answering requests addressed to http://mlflow:5000
        port = free_port()
        cmd = _swap(_swap(s["mlflow"]["command"], "--port", str(port)), "--host", "127.0.0.1")
        cmd = _swap(cmd, "--artifacts-destination", str(tmp_path / "mlartifacts"))
        procs.append(
            subprocess.Popen(
                [str(BIN / cmd[0]), *cmd[1:]],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                env={**ENV, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/m.db"},
            )
        )

        def status(host: str) -> int:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host}
            )
            try:
                return urllib.request.urlopen(req, timeout=2).status
            except urllib.error.HTTPError as exc:
                return exc.code

        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                code = status("mlflow:5000")
                break
            except OSError:
                time.sleep(0.5)
        assert code == 200  # what the Ray nodes send
        assert status("attacker.example:5000") in (400, 403)  # DNS rebinding is refused

        # Ray head and worker: the compose commands, on free local ports, with token authentication
        env = {**ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_ADDRESS": ""}
        gcs = free_port()
        head = _swap(
            _swap(shlex.split(s["ray-head"]["command"]), "--port", str(gcs)), "--dashboard-host", "127.0.0.1"
        ) + ["--temp-dir", temp, "--node-ip-address", "127.0.0.1"]
        worker = [
            a.replace("ray-head:", "127.0.0.1:").replace(":6379", f":{gcs}")
            for a in shlex.split(s["ray-worker"]["command"])
        ] + ["--num-cpus", "1", "--node-ip-address", "127.0.0.1"]
        log = open(tmp_path / "ray.log", "w")
        for cmd in (head, worker):
            procs.append(
                subprocess.Popen(
                    [str(BIN / cmd[0]), *cmd[1:]], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
            time.sleep(3)
        code = (
            "import ray; ray.init(address='127.0.0.1:%d', log_to_driver=False); "  # noqa: UP031
            "print('CPUS', ray.cluster_resources().get('CPU'), 'NODES', len(ray.nodes()))" % gcs
        )
        out = ""
        for _ in range(30):
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
            ).stdout
            if "NODES 2" in out:
                break
            time.sleep(1)
        assert "CPUS 1.0 NODES 2" in out, (tmp_path / "ray.log").read_text()[-3000:]  # the head offers no CPU
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(temp, ignore_errors=True)
