"""Joining a cluster with --address: a token-authenticated Ray cluster (`ray start --head` with RAY_AUTH_MODE=token)
and a driver without its token, or with a wrong one, is one line naming RAY_AUTH_TOKEN and RAY_AUTH_MODE, exit 2,
in seconds, before Ray's client starts (it would retry ~20 s and end in two tracebacks). And a cluster sweep with a
local tracking store (each node would write its own) is refused, saying what to use."""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tune_losses import tracking
from tune_losses.spaces import SpaceError
from tune_losses.tuning import preflight

from helpers import free_port, start_mlflow_server, stop_server, write_space

BIN = Path(sys.executable).parent
TOKEN = secrets.token_hex(32)


@pytest.fixture(scope="module")
def token_cluster():
    """A one-node Ray cluster with token authentication, in a temp dir of its own; killed with its process group
    (`ray stop` would stop every Ray on this machine)."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths: under 108 bytes
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN, "RAY_ADDRESS": ""}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus", "1",
         "--node-ip-address", "127.0.0.1", "--include-dashboard=False", "--disable-usage-stats", "--temp-dir", temp],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # up once a driver with the token is let in
            assert head.poll() is None, "ray start --head exited"
            try:
                with _driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN):
                    preflight.check_ray_auth(f"127.0.0.1:{port}")
                    if tracking.store.reachable("127.0.0.1", port, 1) is None:
                        break
            except SpaceError:
                pass
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    """An MLflow server (a store every node reaches: a local one is refused with --address), one for the module."""
    folder, port = tmp_path_factory.mktemp("server"), free_port()
    server = start_mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", port, folder / "artifacts")
    yield f"http://127.0.0.1:{port}"
    stop_server(server, kill=True)


class _driver_env:
    """The driver's Ray authentication environment, and no token file (HOME elsewhere)."""

    def __init__(self, **env):
        self.env, self.saved = {"HOME": tempfile.mkdtemp(), **env}, {}

    def __enter__(self):
        keys = ("HOME", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
        self.saved = {k: os.environ.pop(k, None) for k in keys}
        os.environ.update(self.env)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, "sends no token (RAY_AUTH_MODE is not 'token' here)"),
        ({"RAY_AUTH_MODE": "token"}, "RAY_AUTH_TOKEN is unset and no token file exists"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "refused this driver's token (RAY_AUTH_TOKEN"),
    ],
    ids=["no-mode", "no-token", "wrong-token"],
)
def test_a_driver_without_the_clusters_token_is_one_line_exit_2(token_cluster, server_uri, env, expected, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    space = write_space(tmp_path / "auth.yaml", name="auth")
    driver = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tune_losses.cli", "sweep", str(space), "--address", token_cluster,
         "--tracking-uri", server_uri, "--storage", str(tmp_path / "storage")],
        env={**driver, **env, "HOME": str(home), "PYTHONPATH": os.getcwd()}, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    took = time.monotonic() - start
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert expected in lines[0] and "RAY_AUTH_TOKEN" in lines[0] and "RAY_AUTH_MODE=token" in lines[0], lines
    assert took < 30, took  # seconds: the CLI's imports, the store's check and one call to the cluster


@pytest.mark.slow
@pytest.mark.cluster
def test_the_clusters_token_passes_the_check_from_the_env_or_a_file(token_cluster, tmp_path):
    with _driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN):
        preflight.check_ray_address(token_cluster)
    (tmp_path / "token").write_text(TOKEN)
    with _driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "token")):
        preflight.check_ray_address(token_cluster)
