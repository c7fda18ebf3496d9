"""The one training function used by sweep trials and by `tune-losses train`: a group of one config
(group.py), so a single run and a fused group train, evaluate and checkpoint by the same code."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .config import TrainConfig
from .evaluation import SUMMARY_METRICS, evaluate
from .group import GroupTraining
from .setup import model_params, pick_device

__all__ = ["SUMMARY_METRICS", "Report", "evaluate", "model_params", "pick_device", "train"]

Report = Callable[[dict, Callable[[], dict]], None]  # report(metrics, state): state() builds the checkpoint


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
    over replicas, with std / min / max and per-replica values when repeats > 1) and the test confusion matrix
    (of replica 0); ``state()`` builds the checkpoint to save, called only by a report that saves one (the
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
    run = GroupTraining([cfg], splits, gpu_ids)
    if resume_from is not None:
        run.restore(resume_from)

    def one(per_member: list[dict | None], state: Callable[[], dict]) -> None:
        assert report is not None and per_member[0] is not None  # fit reports only epochs that trained it
        report(per_member[0], state)

    result = run.fit(one if report is not None else None)[0]
    if return_model and result["status"] == "completed":
        model = run.replicas.module(0).cpu()
        if run.rowspace is not None:
            torch.manual_seed(run.replicas.seeds[0])
            model = run.rowspace.expand_model(model, run.full_model())
        result["model"] = model.eval()
        result["input_example"] = run.example
    return result
