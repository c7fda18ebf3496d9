"""Recording in MLflow: the store, the sweep's ledger (one run per trial, idempotent writes) and the driver's
Ray Tune callback."""

from . import callback, ledger  # noqa: F401
from .store import client, default_tracking_uri, experiment_id, find_sweep, redact, run_dir, store_exists, trial_runs

__all__ = [
    "client",
    "default_tracking_uri",
    "experiment_id",
    "find_sweep",
    "redact",
    "run_dir",
    "store_exists",
    "trial_runs",
]
