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
