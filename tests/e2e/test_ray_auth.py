"""Joining a cluster with --address: a token-authenticated Ray cluster (`ray start --head` with RAY_AUTH_MODE=token)
and a driver without its token, or with a wrong one, is one line naming RAY_AUTH_TOKEN and RAY_AUTH_MODE, exit 2,
in seconds, before Ray's client starts (it would retry ~20 s and end in two tracebacks). And a cluster sweep with a
local tracking store (each node would write its own) is refused, saying what to use."""

import os
import subprocess
import sys
import time

import pytest

from tune_losses.tuning import preflight

from helpers import driver_env, write_space


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
