import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray runtime (2 CPUs) shared by the sweep tests."""
    import ray

    from tune_losses.tuning.ray_runtime import init_ray

    init_ray(num_cpus=2, verbose=0)
    yield ray
    ray.shutdown()
