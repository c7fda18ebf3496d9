"""The one training function used by sweep trials and by `tune-losses train`."""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch

from tune_losses.data import build_dataset
from tune_losses.losses import build_loss
from tune_losses.models import build_model

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .metrics import confusion_matrix, confusion_metrics, summarize
from .replicas import make_replicas
from .rowspace import RowSpace
from .rowspace import applies as rowspace_applies

Report = Callable[[dict, Callable[[], dict]], None]  # report(metrics, state): state() builds the checkpoint
SUMMARY_METRICS = ("val_acc", "test_acc", "val_f1", "test_f1", "test_nmi")


def pick_device(name: str, gpu_ids=None, visible: str | None = None) -> torch.device:
    """The device a run trains on, from the config's ``device`` (auto / cpu / cuda).

    Outside Ray (``gpu_ids`` None: `tune-losses train`, scripts) ``auto`` is CUDA when a GPU is visible, else the
    CPU. In a Ray trial ``gpu_ids`` are the accelerators Ray assigned it (``ray.get_gpu_ids()``): the trial uses
    the first of them, the CPU when there is none, never a GPU Ray did not give it (Ray 2.60 leaves every GPU
    visible to a task that reserved none, so checking ``torch.cuda.is_available()`` is not enough).
    ``device: cuda`` in a trial with no GPU assigned is an error, not a silent fallback to the CPU, and so is an
    assigned GPU that torch cannot see. Ray's ids are physical indices; ``visible`` (default: the environment's
    CUDA_VISIBLE_DEVICES, which Ray sets to the assigned ids) maps them to torch's index.
    """
    if name == "cpu":
        return torch.device("cpu")
    if gpu_ids is None:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(name)
    if not gpu_ids:
        if name == "cuda":
            raise ValueError(
                "device='cuda' is not allowed in a trial that Ray assigned no GPU: set resources.gpu "
                "> 0 in the search space, or device: auto or cpu"
            )
        return torch.device("cpu")
    gpu = str(gpu_ids[0])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    entries = [v.strip() for v in visible.split(",")] if visible is not None else None
    if not torch.cuda.is_available() or (entries is not None and gpu not in entries):
        raise ValueError(
            f"device={name!r}: Ray assigned this trial GPU {gpu}, which torch cannot use here "
            f"(CUDA available: {torch.cuda.is_available()}, CUDA_VISIBLE_DEVICES={visible!r})"
        )
    return torch.device("cuda", entries.index(gpu) if entries is not None else int(gpu))


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
    """Per-replica val/test metrics, their mean (the trial's metric) and spread, and the test confusions (K, C, C). An
    empty split (no validation: val_fraction 0) has no metrics."""
    out, per = {}, {}
    for name in ("val", "test"):
        split = getattr(splits, name)
        if len(split) == 0:
            continue
        preds = replicas.predict(split)  # (K, N)
        confusions = confusion_matrix(split.y.expand_as(preds), preds, num_classes).numpy()  # (K, C, C)
        for metric, values in confusion_metrics(confusions).items():
            per[f"{name}_{metric}"] = values.tolist()
        if name == "test":  # every replica's (K, C, C): reports give per-class recall over replicas
            confusion = confusions
    for key, values in per.items():
        out[key] = float(np.mean(values))
        if replicas.k > 1 and key in SUMMARY_METRICS:
            for stat, v in summarize(values).items():
                if stat != "mean":
                    out[f"{key}_{stat}"] = v
            for i, v in enumerate(values):
                out[f"{key}_r{i}"] = v
    return out, confusion


def train(
    config: dict | TrainConfig,
    report: Report | None = None,
    resume_from=None,
    return_model: bool = False,
    splits=None,
    gpu_ids=None,
) -> dict:
    """Train ``repeats`` replicas for ``epochs`` epochs; after each epoch call ``report(metrics, state)``.

    ``metrics`` holds the epoch, the mean training loss and validation / test accuracy, macro-F1 and NMI (mean
    over replicas, with std / min / max and per-replica values when repeats > 1) and the test confusion matrices
    (one per replica, K x C x C); ``state()`` builds the checkpoint to save, called only by a report that saves one (the
    snapshot of many row-space replicas can cost more than the epoch's training). DAL's ``update`` gets each
    replica's training confusion matrix after every epoch. ``resume_from`` (a checkpoint directory) continues
    exactly where that checkpoint stopped. Returns the last metrics, or ``{"status": "diverged", "reason": ...}``
    when the training loss becomes NaN or inf (nothing is reported for that epoch). With ``return_model`` the result
    also holds replica 0's trained model under ``"model"`` and two training inputs under ``"input_example"``.
    ``splits`` is the data set already built (a sweep ships it to its trials); by default it is built here.
    ``gpu_ids``: the GPUs Ray assigned a trial (see ``pick_device``); None outside Ray. Every metrics dict holds
    the device trained on under ``"device"`` (e.g. ``"cpu"``, ``"cuda:0"``).
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config)
    device = pick_device(cfg.device, gpu_ids)
    if splits is None:
        splits = build_dataset(
            cfg.dataset.name,
            root=cfg.dataset.root,
            download=cfg.dataset.download,
            seed=cfg.data_seed,
            **cfg.dataset.options,
        )
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
    replicas = make_replicas(
        make_model,
        lambda: build_loss(cfg.loss.name, num_classes=c, **lparams),
        [cfg.seed + i for i in range(cfg.repeats)],
        cfg.optimizer,
        c,
        device,
        vectorize=cfg.vectorize,
    )
    start = 0
    if resume_from is not None:
        saved = load_checkpoint(resume_from)
        replicas.load_state_dict(rowspace.restore(replicas, saved) if rowspace is not None else saved["replicas"])
        torch.set_rng_state(saved["torch_rng"])
        if device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        start = saved["epoch"]
    metrics = {"status": "completed", "epoch": start, "device": str(device)}
    for epoch in range(start + 1, cfg.epochs + 1):
        losses, train_confusion = replicas.train_epoch(splits.train, cfg.batch_size)
        bad = [i for i, v in enumerate(losses.tolist()) if not math.isfinite(v)]
        if bad:
            return {
                "status": "diverged",
                "epoch": epoch,
                "reason": f"training loss became {losses[bad[0]].item()} at epoch {epoch} "
                f"(replica seeds {[replicas.seeds[i] for i in bad]})",
            }
        replicas.update_losses(train_confusion)
        metrics, confusion = evaluate(replicas, splits, c)
        metrics = {
            "epoch": epoch,
            "device": str(device),
            "train_loss": float(losses.mean()),
            **metrics,
            "test_confusion": confusion.tolist(),
        }
        if replicas.k > 1:
            metrics.update({f"train_loss_r{i}": float(v) for i, v in enumerate(losses)})
        if report is not None:

            def state(epoch=epoch) -> dict:
                out = {"epoch": epoch, "replicas": replicas.state_dict(), "torch_rng": torch.get_rng_state()}
                if device.type == "cuda":  # only then: reading it would start CUDA in a CPU trial
                    out["cuda_rng"] = torch.cuda.get_rng_state(device)
                if rowspace is not None:
                    out["rowspace"] = rowspace.checkpoint(replicas, out["replicas"])
                return out

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
