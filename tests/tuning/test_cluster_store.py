"""A sweep on a cluster needs a tracking store every node reaches: a local one is refused before anything starts."""

import secrets
import sys
from pathlib import Path

import pytest

from tune_losses.spaces import SpaceError
from tune_losses.tuning import preflight

BIN = Path(sys.executable).parent
TOKEN = secrets.token_hex(32)


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "file:///tmp/mlruns", "/tmp/mlruns", "runs/mlruns"])
@pytest.mark.parametrize("address", ["10.0.0.5:6379", "ray://head:10001", "auto"])
def test_a_cluster_sweep_with_a_local_store_is_refused(uri, address):
    with pytest.raises(SpaceError, match=r"each node of the cluster would write a store of its own.*mlflow server"):
        preflight.check_cluster_store(address, uri)


@pytest.mark.parametrize("uri", ["http://mlflow:5000", "postgresql+psycopg2://u@db/mlflow", "sqlite:////tmp/m.db"])
def test_a_shared_store_or_a_local_ray_is_allowed(uri):
    if uri.startswith("sqlite"):
        preflight.check_cluster_store(None, uri)
        preflight.check_cluster_store("local", uri)
    else:
        preflight.check_cluster_store("10.0.0.5:6379", uri)
