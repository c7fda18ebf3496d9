"""Recording in MLflow: the store, the sweep's ledger (one run per trial, idempotent writes) and the driver's
Ray Tune callback. The package imports only the store: `status` and `sweeps`, which poll it, import neither Ray
Tune nor the ledger (import ``tracking.callback`` and ``tracking.ledger`` where they are used)."""

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
