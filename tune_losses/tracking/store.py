"""Where runs are recorded: a local SQLite MLflow store in the project's run directory by default, any tracking
URI (an MLflow server) with --tracking-uri or MLFLOW_TRACKING_URI. Credentials in a URI never reach logs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

EXPERIMENT = "tune_losses"


def run_dir() -> Path:
    return Path(os.environ.get("TUNE_LOSSES_HOME", "runs")).resolve()


def default_tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{run_dir() / 'mlflow.db'}"


def redact(uri: str) -> str:
    """The URI with any user:password@ removed, for logs and params."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def client(tracking_uri: str | None = None) -> MlflowClient:
    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


# MLflow 3's UI opens an experiment without this tag on its GenAI (traces) pages; with it, on the runs table.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(c: MlflowClient, name: str = EXPERIMENT) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if "mlflow.experimentKind" not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", EXPERIMENT_TAGS["mlflow.experimentKind"])
        return exp.experiment_id
    location = None
    if c.tracking_uri.startswith("sqlite:///"):  # artifacts beside the database file
        location = (Path(c.tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)


def find_sweep(c: MlflowClient, sweep: str, experiment: str = EXPERIMENT):
    """The parent run of a sweep by name, or None."""
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`tune_losses.sweep` = '{sweep}' "
                         "and tags.`tune_losses.role` = 'sweep'", max_results=1)
    return runs[0] if runs else None


def trial_runs(c: MlflowClient, parent_run_id: str, experiment_id_: str):
    return c.search_runs([experiment_id_], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                         max_results=10000)
