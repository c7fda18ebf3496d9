import os
import sys
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


@pytest.fixture(autouse=True)
def store_health_reset():
    """The tracking store's health is this process's (tracking/ledger.py STORE): a test whose calls reached no store
    must not leave the next test's live view saying that the store is down."""
    yield
    ledger = sys.modules.get("tune_losses.tracking.ledger")  # not imported: nothing to reset
    if ledger is not None:
        ledger.STORE.failing_since, ledger.STORE.last_error = None, ""


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory):
    """Where a test writes the `train.plugins` modules of its space: on the import path of this process (the
    driver imports a space's plugins to check it) and of the shared Ray's workers (each trial imports them)."""
    import sys

    folder, path = tmp_path_factory.mktemp("plugins"), os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(folder))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), path]))
    yield folder
    sys.path.remove(str(folder))
    if path is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = path


@pytest.fixture
def plugin(plugin_dir):
    """``plugin(stem, text)`` writes a `train.plugins` module for this test (helpers.write_plugin) and returns its
    name; the losses and models it registers in this process are taken back after the test (the registries
    outlive it, and other tests list their names)."""
    from tune_losses.losses.registry import LOSSES
    from tune_losses.models.registry import MODELS

    from helpers import write_plugin

    before = {registry: set(registry.names()) for registry in (LOSSES, MODELS)}
    yield lambda stem, text: write_plugin(plugin_dir, stem, text)
    for registry, names in before.items():
        for name in set(registry.names()) - names:
            registry.unregister(name)


@pytest.fixture(scope="session")
def ray_local(plugin_dir):
    """One local Ray runtime (2 CPUs) shared by the sweep tests; its workers import from ``plugin_dir`` too."""
    import ray

    from tune_losses.tuning.ray_runtime import init_ray

    init_ray(num_cpus=2, verbose=0)
    yield ray
    ray.shutdown()
