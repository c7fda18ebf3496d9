"""tune_losses: hyperparameter search for image-classification losses on Ray Tune, Optuna and MLflow."""

__version__ = "0.1.0"


def sweep(space_or_path, **overrides):
    """Run a sweep and return its SweepResult (best config, summary, Ray's ResultGrid, the report).

    Keywords of :func:`tune_losses.tuning.runner.run_sweep` (name, address, tracking_uri, storage, resume,
    dataset, ...) pass through; any other keyword is a dotted override of the space, e.g.
    ``sweep("quickstart", **{"train.epochs": 3}, tracking_uri="http://mlflow:5000")``.
    """
    import inspect

    from tune_losses.tuning.runner import run_sweep

    known = set(inspect.signature(run_sweep).parameters) - {"space_or_path"}
    kwargs = {k: v for k, v in overrides.items() if k in known}
    extra = {k: v for k, v in overrides.items() if k not in known}
    kwargs["overrides"] = {**kwargs.get("overrides", {}), **extra}
    return run_sweep(space_or_path, **kwargs)
