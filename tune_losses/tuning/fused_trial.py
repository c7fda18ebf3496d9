"""A fused group's trial: the configs of a grid that differ only in loss parameters, trained as one vectorised
model (training/group.py) in one Ray trial, each recorded in its own MLflow run exactly as its trial alone would
record it (the same key, params, per-epoch metrics, confusion matrix, status).

Each member is a :class:`~tune_losses.tuning.trial.TrialAttempt` (its run found by its key, taken by its token,
every epoch logged once, its replica table written before each of the group's checkpoints and when it ends);
the group has one checkpoint (``<checkpoints>/group-<hash of the member keys>/``) that
restores every member exactly, so a killed group resumes each member from it, and an epoch a member's run already
holds is not logged again. Ray Tune sees one result per epoch: the best member's metric (the searcher is grid and
the scheduler fifo: nothing is decided from it).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from tune_losses.spaces import Space
from tune_losses.training.group import train_group

from .fusion import group_key
from .trial import TABLE_SHARE, Cadence, CheckpointStore, TrialAttempt, TrialClock, prepare


def run_group(config: dict, space_json: dict, sweep: dict, data=None) -> None:
    """A fused group's trial (``config["group"]``: its members' Ray Tune configs); the rest as ``run_trial``."""
    started = time.perf_counter()
    space = prepare(space_json)
    attempts = [TrialAttempt(space, member, sweep, started) for member in config["group"]]
    group = FusedGroup(space, attempts, sweep["checkpoints"], started)
    if all(a.record.finished for a in attempts):
        group.replay()
        return
    group.run(data)


class FusedGroup:
    """One Ray trial training its members together (module docstring)."""

    def __init__(self, space: Space, attempts: list[TrialAttempt], checkpoints: str, started: float):
        self.space, self.attempts = space, attempts
        self.checkpoints = CheckpointStore(checkpoints, group_key([a.key for a in attempts]))
        self.clock = TrialClock(started, attempts[0].ledger)
        self.table_writes = Cadence(TABLE_SHARE)  # the members' replica tables, written together
        self.closed = {i for i, a in enumerate(attempts) if a.record.finished}  # runs that hold their end
        self.diverged = 0  # members that diverged in this attempt: the live view counts them apart
        self.reported = False
        sign = 1.0 if space.search.mode == "max" else -1.0
        self.best = lambda values: max(values, key=lambda v: sign * v) if values else sign * float("-inf")

    def replay(self) -> None:
        """Every member finished in an earlier run of the sweep: the group's recorded result, once."""
        metric = self.space.search.metric
        values = [a.record.metrics[metric] for a in self.attempts if metric in a.record.metrics]
        epoch = max(a.record.last_step for a in self.attempts)
        tune.report({metric: self.best(values), "epoch": epoch, "replayed": True, "fused": len(self.attempts)})

    def run(self, data) -> None:
        for i, attempt in enumerate(self.attempts):
            if i not in self.closed:
                attempt.begin()
            attempt.clock.train_started()
        with tempfile.TemporaryDirectory() as tmp:
            resume_from = self.checkpoints.fetch(Path(tmp))
            configs = [a.cfg for a in self.attempts]
            results = train_group(configs, self.report, resume_from, splits=data, gpu_ids=ray.get_gpu_ids())
        for i, (attempt, result) in enumerate(zip(self.attempts, results)):
            attempt.clock.train_ended()
            if i not in self.closed:
                attempt.finish(result, tell_ray=False)
        if not self.reported:  # resumed from the checkpoint of its last epoch: nothing trained, nothing reported
            self.replay()

    def report(self, entries: list[dict | None], state) -> None:
        """After each epoch: each live member's metrics to its run (a diverged one closed at once), the members'
        replica tables when due, the group's checkpoint, then one result to Ray Tune."""
        self.clock.enter()
        epoch, values = 0, []
        for i, (attempt, entry) in enumerate(zip(self.attempts, entries)):
            if entry is None or i in self.closed:
                continue  # stopped earlier (diverged), or its run already holds its end
            if entry.get("status") == "diverged":
                attempt.finish(entry, tell_ray=False)
                self.closed.add(i)
                self.diverged += 1
                continue
            epoch = max(epoch, attempt.record_epoch(entry, attempt.clock.enter()))
            if isinstance(entry.get(self.space.search.metric), (int, float)):
                values.append(float(entry[self.space.search.metric]))
        checkpoint = self.clock.checkpoint_due() or epoch >= self.space.train.epochs
        if checkpoint or self.table_writes.due():
            with self.table_writes.timed():  # before the checkpoint: a resume finds every table at its epoch
                for i, attempt in enumerate(self.attempts):
                    if i not in self.closed:
                        attempt.write_table(force=True)
        if checkpoint:
            with self.clock.checkpointing():
                self.checkpoints.save(state())
        self.reported = True
        with self.clock.reporting():
            result = {self.space.search.metric: self.best(values), "epoch": epoch, "fused": len(self.attempts)}
            tune.report({**result, "members_diverged": self.diverged})
