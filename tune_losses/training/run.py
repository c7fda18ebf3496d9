"""`tune-losses train`: one full training run recorded in MLflow as its own run."""

from __future__ import annotations

import time

from mlflow.entities import Metric, Param

from tune_losses import tracking
from tune_losses.tracking import record
from tune_losses.tracking.callback import flatten
from tune_losses.tracking.replicas import ReplicaTable, split_replicas

from .config import TrainConfig, weights_used
from .loop import train


def train_and_record(
    cfg: TrainConfig,
    tracking_uri: str | None = None,
    name: str = "train",
    sweep_run_id: str | None = None,
    register: str | None = None,
    progress: bool = False,
) -> dict:
    """Train, log params / per-epoch metrics / the trained model (``mlflow.pytorch``) as one MLflow run, tagged
    with the sweep it came from; ``register`` also registers the model under that name. ``progress``: a tqdm bar
    over the epochs (on stderr) with the last validation accuracy."""
    client = tracking.client(tracking_uri)
    exp_id = tracking.experiment_id(client)
    tags = {record.ROLE: "train", "mlflow.runName": name}
    if sweep_run_id:
        tags[record.FROM_SWEEP] = sweep_run_id
    run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
    client.log_batch(
        run_id,
        params=[Param(k, str(v)) for k, v in flatten(cfg.model_dump()).items()]
        + [Param("weights", weights_used(cfg.model_dump()))],
    )

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.epochs, desc=name, unit="epoch", dynamic_ncols=True)

    def report(metrics, state):
        if bar is not None:
            bar.update(metrics["epoch"] - bar.n)
            bar.set_postfix_str(f"val_acc {metrics.get('val_acc', float('nan')):.4f}")
        ts = int(time.time() * 1000)
        summary, own = split_replicas(metrics)  # each replica's own values: the table, as a trial's run has them
        table.add(metrics["epoch"], own)
        client.log_batch(
            run_id,
            metrics=[
                Metric(k, float(v), ts, metrics["epoch"])
                for k, v in summary.items()
                if isinstance(v, (int, float)) and k != "epoch"
            ],
        )

    table = ReplicaTable()
    try:
        result = train(cfg, report=report, return_model=True)
    finally:
        if bar is not None:
            bar.close()
        if len(table):
            table.upload(client, run_id)
    model, example = result.pop("model", None), result.pop("input_example", None)
    if model is not None:
        import mlflow
        import mlflow.pytorch

        with mlflow.start_run(run_id=run_id):
            mlflow.pytorch.log_model(
                model,
                name="model",
                registered_model_name=register,
                input_example=example,
                pip_requirements=["torch", "tune_losses"],
            )
    client.set_tag(run_id, "status", result["status"])
    if result.get("reason"):
        client.set_tag(run_id, "reason", result["reason"])
    client.set_terminated(run_id, "FINISHED" if result["status"] == "completed" else "FAILED")
    result["mlflow_run_id"] = run_id
    return result
