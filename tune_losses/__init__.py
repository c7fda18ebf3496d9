"""tune_losses: hyperparameter search for image-classification losses on Ray Tune, Optuna and MLflow."""

__version__ = "0.1.0"


def sweep(space_or_path, **overrides):
    """Run a sweep (see :func:`tune_losses.sweep.runner.run_sweep`); imported lazily to keep import light."""
    from tune_losses.sweep.runner import run_sweep

    return run_sweep(space_or_path, **overrides)
