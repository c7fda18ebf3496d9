"""Joining a cluster with --address: a token-authenticated Ray cluster (`ray start --head` with RAY_AUTH_MODE=token)
and a driver without its token, or with a wrong one, is one line naming RAY_AUTH_TOKEN and RAY_AUTH_MODE, exit 2,
in seconds, before Ray's client starts (it would retry ~20 s and end in two tracebacks). And a cluster sweep with a
local tracking store (each node would write its own) is refused, saying what to use. A trial larger than any node
of the cluster is refused once the driver has joined."""

import os
import subprocess
import sys
import time

import pytest

from tune_losses import tracking
from tune_losses.tuning import preflight

from helpers import driver_env, sqlite_mlflow_server, start_token_cluster, stop_token_cluster, write_space


@pytest.fixture(scope="module")
def token_cluster():
    """A one-node Ray cluster (1 CPU) with token authentication, as `ray start --head` makes one: (address, token).
    Killed with its process group (`ray stop` would stop every Ray on this machine)."""
    head, address, token, temp = start_token_cluster()
    yield address, token
    stop_token_cluster(head, temp)


@pytest.fixture(scope="module")
def server_uri(tmp_path_factory):
    """An MLflow server on SQLite, a store every node reaches (a local one is refused with --address)."""
    yield from sqlite_mlflow_server(tmp_path_factory.mktemp("server"))


def all_runs(uri: str) -> list[str]:
    c = tracking.client(uri)
    return [r.info.run_id for e in c.search_experiments() for r in c.search_runs([e.experiment_id])]


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
    address, _ = token_cluster
    home = tmp_path / "home"
    home.mkdir()
    space = write_space(tmp_path / "auth.yaml", name="auth")
    driver = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tune_losses.cli", "sweep", str(space), "--address", address,
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
    address, token = token_cluster
    with driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token):
        preflight.check_ray_address(address)
    (tmp_path / "token").write_text(token)
    with driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "token")):
        preflight.check_ray_address(address)


@pytest.mark.slow
@pytest.mark.cluster
def test_trial_larger_than_any_cluster_node(tmp_path, token_cluster, server_uri):
    """The one-node cluster (1 CPU): a space asking 2 CPUs per trial is an error once the driver has joined, at once
    and after a bounded wait (TUNE_LOSSES_RESOURCE_WAIT_S) for an autoscaler, with no MLflow run and no Ray Tune
    directory written."""
    address, token = token_cluster
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_ADDRESS": ""}
    env["MLFLOW_TRACKING_URI"] = ""
    space = write_space(tmp_path / "space.yaml", resources={"cpu": 2, "gpu": 0})
    args = [sys.executable, "-m", "tune_losses.cli", "sweep", str(space), "--address", address]
    args += ["--tracking-uri", server_uri, "--storage", str(tmp_path / "ray")]
    before = all_runs(server_uri)
    for wait in ("0", "2"):
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=300, env={**env, "TUNE_LOSSES_RESOURCE_WAIT_S": wait}
        )
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
        assert f"{space}: resources.cpu: 2 CPU per trial is more than the cluster has (1)" in proc.stderr
        assert "allowed: > 0, up to 1" in proc.stderr
        if wait != "0":
            assert "waiting up to 2 s (TUNE_LOSSES_RESOURCE_WAIT_S) for an autoscaler" in proc.stdout
            assert "(after waiting 2 s for one)" in proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"], "something was written"
    assert all_runs(server_uri) == before, "a run was written"
