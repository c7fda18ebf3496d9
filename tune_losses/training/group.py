"""Configs that differ only in loss parameters, trained as one set of replicas: the core of `train` (a group of
one config) and of fused trials, where a sweep's grid points that differ only in the loss's parameters (DAL's
``a``, beta/gamma, CC-Loss's ``lambda``) train as one ``torch.func.vmap``-ed model.

Member m of a group of M configs, each with ``repeats`` R, owns replicas m R .. m R + R - 1, seeded with its
config's ``seed`` .. ``seed + R - 1`` as that config trained alone: the same initialisation, shuffling and random
stream per seed (training/replicas.py), its own loss built from its config (the parameters that differ are
per-replica buffers, losses/base.py ``param_buffer``), and DAL's soft labels rebuilt from its own confusion matrix.
So each member's per-seed results are those of its config alone, to the rounding of batched kernels
(tests/training/test_fused_training.py). What may differ between members is what the loss class lists in
``replica_params``, and the seed (the samples of a repeated grid point train other seeds); everything else is one
training setup. A member whose training loss becomes NaN or inf stops being reported (its result says why); the
others go on (its replicas still train: they share nothing with the others). The row-space reduction's cost rule
counts the group's replicas, so a group may take it where one of its configs alone would not: the same training
in exact arithmetic (rowspace.py), rounded differently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch

from tune_losses.data import Splits
from tune_losses.losses import build_loss
from tune_losses.models import build_model

from .checkpoint import load_checkpoint
from .config import TrainConfig, fusible_params
from .evaluation import member_metrics, replica_metrics
from .replicas import make_replicas
from .rowspace import RowSpace
from .rowspace import applies as rowspace_applies
from .setup import load_splits, model_params, pick_device

# report(per_member, state): per_member holds, for each config in order, that epoch's metrics (the dict `train`
# reports), the result of a member that diverged at that epoch ({"status": "diverged", ...}), or None for one
# that stopped before; state() builds the group's checkpoint.
GroupReport = Callable[[list[dict | None], Callable[[], dict]], None]


def _differences(a, b, path: str = ""):
    """The dotted paths at which two dumped configs differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            yield from _differences(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    elif a != b:
        yield path


def group_configs(configs: Sequence[dict | TrainConfig]) -> list[TrainConfig]:
    """The configs validated, and checked to be one group: equal but for the seed and the loss's
    ``replica_params``."""
    cfgs = [c if isinstance(c, TrainConfig) else TrainConfig.model_validate(c) for c in configs]
    if not cfgs:
        raise ValueError("configs=[] is not allowed: a group needs at least one config")
    first, allowed = cfgs[0].model_dump(), fusible_params(cfgs[0].loss.name)
    for i, cfg in enumerate(cfgs[1:], start=1):
        for path in _differences(first, cfg.model_dump()):
            if path != "seed" and not (path.startswith("loss.params.") and path[12:] in allowed):
                raise ValueError(
                    f"configs[{i}].{path} is not allowed to differ from configs[0].{path} in a group: allowed: "
                    f"the seed, and the parameters {list(allowed)} of loss {cfgs[0].loss.name!r} (its "
                    "replica_params)"
                )
    return cfgs


def identity(cfgs: list[TrainConfig]) -> list[dict]:
    """What a checkpoint records of its group, to refuse restoring another: each member's loss and seeds."""
    return [{"loss": c.loss.name, "params": dict(c.loss.params), "seed": c.seed, "repeats": c.repeats} for c in cfgs]


class GroupTraining:
    """A group's data, replicas (row-space reduced where that applies: rowspace.py), epochs and checkpoints."""

    def __init__(self, cfgs: list[TrainConfig], splits: Splits | None = None, gpu_ids=None):
        self.cfgs, cfg = cfgs, cfgs[0]
        self.device = pick_device(cfg.device, gpu_ids)
        splits = load_splits(cfg) if splits is None else splits
        self.example = splits.train.batch(slice(0, 2))[0].numpy()
        self.num_classes = c = splits.num_classes
        mparams = model_params(cfg, splits.input_shape)
        self.full_model = partial(build_model, cfg.model.name, num_classes=c, **mparams)
        make_model: Callable[[], torch.nn.Module] = self.full_model
        self.rowspace: RowSpace | None = None
        together = cfg.model_copy(update={"repeats": len(cfgs) * cfg.repeats})  # the cost rule counts replicas
        if cfg.rowspace and rowspace_applies(together, splits):  # exact: see training/rowspace.py
            rowspace = self.rowspace = RowSpace(splits)
            splits = rowspace.reduce(splits)
            make_model = lambda: rowspace.reduce_model(self.full_model())  # noqa: E731  (same init, same seed)
        self.splits = splits
        r = cfg.repeats
        self.members = [range(m * r, (m + 1) * r) for m in range(len(cfgs))]
        self.replicas = make_replicas(
            make_model,
            [partial(build_loss, m.loss.name, num_classes=c, **m.loss.params) for m in cfgs for _ in range(r)],
            [m.seed + i for m in cfgs for i in range(r)],
            cfg.optimizer,
            c,
            self.device,
            vectorize=cfg.vectorize,
        )
        self.epoch = 0
        self.stopped: dict[int, dict] = {}  # member -> its result, for members that diverged

    def restore(self, directory) -> None:
        """Continue exactly where the checkpoint in ``directory`` stopped (refused if it is another group's)."""
        saved = load_checkpoint(directory)
        if saved.get("members", identity(self.cfgs)) != identity(self.cfgs):  # older checkpoints have no members
            raise ValueError(
                f"checkpoint={str(directory)!r} is not allowed: it holds the group {saved['members']}, "
                f"not {identity(self.cfgs)}"
            )
        rowspace = self.rowspace
        self.replicas.load_state_dict(rowspace.restore(self.replicas, saved) if rowspace else saved["replicas"])
        torch.set_rng_state(saved["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in saved:
            torch.cuda.set_rng_state(saved["cuda_rng"], self.device)
        self.epoch = saved["epoch"]
        self.stopped = {int(m): dict(result) for m, result in saved.get("stopped", {}).items()}

    def state(self, epoch: int) -> dict:
        """The checkpoint after ``epoch``: replicas, RNG states, the group and its stopped members."""
        out = {
            "epoch": epoch,
            "replicas": self.replicas.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "members": identity(self.cfgs),
            "stopped": {m: dict(result) for m, result in self.stopped.items()},
        }
        if self.device.type == "cuda":  # only then: reading it would start CUDA in a CPU trial
            out["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.rowspace is not None:
            out["rowspace"] = self.rowspace.checkpoint(self.replicas, out["replicas"])
        return out

    def run_epoch(self, epoch: int) -> list[dict | None]:
        """Train one epoch; each member's metrics, its result if it diverged now, or None if it stopped before."""
        losses, train_confusion = self.replicas.train_epoch(self.splits.train, self.cfgs[0].batch_size)
        values = losses.tolist()
        out: list[dict | None] = [None] * len(self.members)
        live = [m for m in range(len(self.members)) if m not in self.stopped]
        for m in live:
            bad = [i for i in self.members[m] if not math.isfinite(values[i])]
            if bad:
                result: dict = {
                    "status": "diverged",
                    "epoch": epoch,
                    "reason": f"training loss became {values[bad[0]]} at epoch {epoch} "
                    f"(replica seeds {[self.replicas.seeds[i] for i in bad]})",
                }
                self.stopped[m] = out[m] = result
        self.epoch = epoch
        live = [m for m in live if m not in self.stopped]
        if not live:
            return out
        self.replicas.update_losses(train_confusion)
        per, test_confusions = replica_metrics(self.replicas, self.splits, self.num_classes)
        for m in live:
            idx = self.members[m]
            metrics, confusion = member_metrics(per, test_confusions, idx)
            record: dict = {
                "epoch": epoch,
                "device": str(self.device),
                "train_loss": float(losses[idx.start : idx.stop].mean()),
                **metrics,
                "test_confusion": confusion.tolist() if confusion is not None else None,
            }
            if len(idx) > 1:
                record.update({f"train_loss_r{i}": values[j] for i, j in enumerate(idx)})
            out[m] = record
        return out

    def fit(self, report: GroupReport | None = None) -> list[dict]:
        """Train the remaining epochs, reporting each one that trained a live member; each member's result."""
        last: list[dict] = [
            self.stopped.get(m, {"status": "completed", "epoch": self.epoch, "device": str(self.device)})
            for m in range(len(self.members))
        ]
        for epoch in range(self.epoch + 1, self.cfgs[0].epochs + 1):
            if len(self.stopped) == len(self.members):
                break
            out = self.run_epoch(epoch)
            last = [entry if entry is not None else prev for entry, prev in zip(out, last)]
            if report is not None and any(e is not None and "status" not in e for e in out):
                report(out, partial(self.state, epoch))
        for result in last:
            if result.get("status") != "diverged":
                result["status"] = "completed"
                result["replicas"] = type(self.replicas).__name__
        return last


def train_group(
    configs: Sequence[dict | TrainConfig],
    report: GroupReport | None = None,
    resume_from=None,
    splits: Splits | None = None,
    gpu_ids=None,
) -> list[dict]:
    """Train configs that differ only in loss parameters (and their ``repeats``) as one vectorised model.

    Returns one result per config, in order: what `train` would return for it alone (its last metrics with
    ``status: completed``, or ``{"status": "diverged", ...}``), to rounding. ``report(per_member, state)`` is
    called after each epoch (see ``GroupReport``): per config the dict `train` reports for it, so a trial can log
    one run per config. ``resume_from``: a directory holding a checkpoint that ``state()`` built, of this group;
    every member continues exactly where it stopped (a diverged one stays stopped). ``splits`` and ``gpu_ids``
    as for `train`.
    """
    run = GroupTraining(group_configs(configs), splits, gpu_ids)
    if resume_from is not None:
        run.restore(resume_from)
    return run.fit(report)
