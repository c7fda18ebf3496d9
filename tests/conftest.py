import os
from pathlib import Path

import pytest

E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(config, items):
    """Every test under tests/e2e/ (real sweeps through the CLI or Ray, servers, clusters) is `slow`: `make check`
    runs the rest, the fast tier."""
    for item in items:
        if E2E in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)


os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory):
    """Where a test writes the `train.plugins` modules of its space: on the import path of this process (the
    driver imports a space's plugins to check it) and of the shared Ray's workers (each trial imports them)."""
    import sys

    folder = tmp_path_factory.mktemp("plugins")
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return folder


@pytest.fixture(scope="session")
def ray_local(plugin_dir):
    """One local Ray runtime (2 CPUs) shared by the sweep tests; its workers import from ``plugin_dir`` too."""
    import ray

    from tune_losses.tuning.ray_runtime import init_ray

    init_ray(num_cpus=2, verbose=0)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def token_cluster():
    """A one-node Ray cluster (1 CPU) with token authentication, as `ray start --head` makes one, in a temp dir of
    its own: (address, token). Killed with its process group (`ray stop` would stop every Ray on this machine)."""
    from helpers import start_token_cluster, stop_token_cluster

    head, address, token, temp = start_token_cluster()
    yield address, token
    stop_token_cluster(head, temp)


@pytest.fixture(scope="session")
def server_uri(tmp_path_factory):
    """An MLflow server on SQLite (a store every node of a cluster reaches), for tests whose drivers stop before
    writing anything; its URI."""
    from helpers import free_port, start_mlflow_server, stop_server

    folder, port = tmp_path_factory.mktemp("server"), free_port()
    server = start_mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", port, folder / "artifacts")
    yield f"http://127.0.0.1:{port}"
    stop_server(server, kill=True)
