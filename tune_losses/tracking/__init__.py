"""Recording in MLflow: the store, and the Ray Tune callback that logs every trial as a nested run."""

from . import callback  # noqa: F401
from .store import client, default_tracking_uri, experiment_id, find_sweep, redact, run_dir, trial_runs

__all__ = ["client", "default_tracking_uri", "experiment_id", "find_sweep", "redact", "run_dir", "trial_runs"]
