"""The one training function used by sweep trials and by `tune-losses train`."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from tune_losses.data import build_dataset
from tune_losses.losses import build_loss
from tune_losses.models import build_model

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .metrics import classification_metrics, confusion_matrix, summarize
from .replicas import make_replicas
from .rowspace import RowSpace
from .rowspace import applies as rowspace_applies

Report = Callable[[dict, dict], None]
SUMMARY_METRICS = ("val_acc", "test_acc", "val_f1", "test_f1", "test_nmi")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_params(cfg: TrainConfig, input_shape: tuple[int, ...]) -> dict:
    """The model's keywords, with what the data decides (input size, channels) filled in."""
    params = dict(cfg.model.params)
    if cfg.model.name == "mlp":
        params.setdefault("in_features", int(np.prod(input_shape)))
    elif len(input_shape) == 3:
        params.setdefault("in_channels", input_shape[0])
    if cfg.loss.name == "cc":
        params.setdefault("cam", True)
    return params


def evaluate(replicas, splits, num_classes: int) -> tuple[dict, np.ndarray]:
    """Per-replica val/test metrics, their mean (the trial's metric) and spread, and the test confusion. An
    empty split (no validation: val_fraction 0) has no metrics."""
    out, per = {}, {}
    for name in ("val", "test"):
        split = getattr(splits, name)
        if len(split) == 0:
            continue
        preds = replicas.predict(split).numpy()
        truth = split.y.numpy()
        rows = [classification_metrics(truth, p) for p in preds]
        for metric in ("acc", "f1", "nmi"):
            per[f"{name}_{metric}"] = [r[metric] for r in rows]
        if name == "test":
            confusion = confusion_matrix(split.y, torch.as_tensor(preds[0]), num_classes).numpy()
    for key, values in per.items():
        out[key] = float(np.mean(values))
        if replicas.k > 1 and key in SUMMARY_METRICS:
            for stat, v in summarize(values).items():
                if stat != "mean":
                    out[f"{key}_{stat}"] = v
            for i, v in enumerate(values):
                out[f"{key}_r{i}"] = v
    return out, confusion


def train(config: dict | TrainConfig, report: Report | None = None, resume_from=None,
          return_model: bool = False, splits=None) -> dict:
    """Train ``repeats`` replicas for ``epochs`` epochs; after each epoch call ``report(metrics, state)``.

    ``metrics`` holds the epoch, the mean training loss and validation / test accuracy, macro-F1 and NMI (mean
    over replicas, with std / min / max and per-replica values when repeats > 1) and the test confusion matrix
    (of replica 0); ``state`` is the checkpoint to save. DAL's ``update`` gets each replica's training
    confusion matrix after every epoch. ``resume_from`` (a checkpoint directory) continues exactly where that
    checkpoint stopped. Returns the last metrics, or ``{"status": "diverged", "reason": ...}`` when the
    training loss becomes NaN or inf (nothing is reported for that epoch). With ``return_model`` the result
    also holds replica 0's trained model under ``"model"`` and two training inputs under ``"input_example"``.
    ``splits`` is the data set already built (a sweep ships it to its trials); by default it is built here.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    device = pick_device(cfg.device)
    if splits is None:
        splits = build_dataset(cfg.dataset.name, root=cfg.dataset.root, download=cfg.dataset.download,
                               seed=cfg.data_seed, **cfg.dataset.options)
    example = splits.train.batch(slice(0, 2))[0].numpy()
    c = splits.num_classes
    mparams, lparams = model_params(cfg, splits.input_shape), dict(cfg.loss.params)  # CC takes `lambda` too

    def full_model():
        return build_model(cfg.model.name, num_classes=c, **mparams)

    make_model, rowspace = full_model, None
    if cfg.rowspace and rowspace_applies(cfg, splits):  # exact: see training/rowspace.py
        rowspace = RowSpace(splits)
        splits = rowspace.reduce(splits)
        make_model = lambda: rowspace.reduce_model(full_model())  # noqa: E731  (same init, same seed)
    replicas = make_replicas(make_model,
                             lambda: build_loss(cfg.loss.name, num_classes=c, **lparams),
                             [cfg.seed + i for i in range(cfg.repeats)], cfg.optimizer, c, device,
                             vectorize=cfg.vectorize)
    start = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        replicas.load_state_dict(state["replicas"])
        torch.set_rng_state(state["torch_rng"])
        start = state["epoch"]
    metrics = {"status": "completed", "epoch": start}
    for epoch in range(start + 1, cfg.epochs + 1):
        losses, train_confusion = replicas.train_epoch(splits.train, cfg.batch_size)
        bad = [i for i, v in enumerate(losses.tolist()) if not math.isfinite(v)]
        if bad:
            return {"status": "diverged", "epoch": epoch,
                    "reason": f"training loss became {losses[bad[0]].item()} at epoch {epoch} "
                              f"(replica seeds {[replicas.seeds[i] for i in bad]})"}
        replicas.update_losses(train_confusion)
        metrics, confusion = evaluate(replicas, splits, c)
        metrics = {"epoch": epoch, "train_loss": float(losses.mean()), **metrics,
                   "test_confusion": confusion.tolist()}
        if replicas.k > 1:
            metrics.update({f"train_loss_r{i}": float(v) for i, v in enumerate(losses)})
        if report is not None:
            state = {"epoch": epoch, "replicas": replicas.state_dict(), "torch_rng": torch.get_rng_state()}
            report(metrics, state)
    metrics["status"] = "completed"
    metrics["replicas"] = type(replicas).__name__
    if return_model:
        model = replicas.module(0).cpu()
        if rowspace is not None:
            torch.manual_seed(replicas.seeds[0])
            model = rowspace.expand_model(model, full_model())
        metrics["model"] = model.eval()
        metrics["input_example"] = example
    return metrics
