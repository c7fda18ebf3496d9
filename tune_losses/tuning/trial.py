"""The function each Ray Tune trial runs: the one `train`, recording its own MLflow run and its own checkpoint.

A trial finds its run in the sweep's ledger by its key (tracking/ledger.py) and its checkpoint under the sweep's
checkpoint directory by the same key, so it continues where it stopped whether Ray Tune restarts it (a retry
after a failure, a lost node) or a resumed sweep starts it anew. After each epoch, in this order:
1. the epoch's metrics go to MLflow (skipped when the ledger already holds that epoch): the mean over replicas
   and its std / min / max; each replica's own values go to the trial's replica table (tracking/replicas.py);
2. the replica table (the artifact ``replicas.parquet``) is replaced atomically when a checkpoint follows, at the
   last epoch, at every epoch where the scheduler may stop or pause the trial (ASHA's and halving's rungs), and
   after any other once the time since its last write is at least ``1 / TABLE_SHARE - 1`` times what that write
   took (at most ~2% of the trial's time);
3. the checkpoint is replaced atomically: after the first and the last epoch, at every epoch where the scheduler
   may pause the trial (halving's rungs), and after any other once the time since the last write is at least
   ``1 / CHECKPOINT_SHARE - 1`` times what that write took (writes then cost at most ~5% of the trial's time:
   every epoch for a small model, every few for 60 replicas of a wide head);
4. the result goes to Ray Tune (ASHA, the searcher, the progress display), without the replicas' own values.
A kill re-runs the epochs after the last checkpoint and does not log them again (the same numbers: the
checkpoint holds every random state); a kill between 3 and 4 loses nothing. The table is written before every
checkpoint, so it always holds the checkpoint's epoch: a resumed attempt reads it back and adds only the epochs
it re-runs that the table lacks (each epoch once; a kill between 1 and 2 is made up by the re-run). A trial the
ledger holds as finished is not trained again: it reports its recorded final result once, so schedulers and
searchers see it.

With every epoch a trial logs where the time of this attempt went so far, as metrics of its run (so a trial
a scheduler stops has them too): ``seconds_trial`` (all of it), ``seconds_train`` (inside ``train``: data
preparation, e.g. the row-space basis, and every epoch's training and evaluation), ``seconds_first_epoch``
(``train`` called -> its first epoch reported), ``seconds_tracking`` (its MLflow calls), ``seconds_checkpoint``
(checkpoint writes) and ``seconds_tune_report``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch

# torch.optim imports torch._dynamo when the first optimizer is made (~1.8 s on 2 cores): imported here, a
# prestarted worker (ray_runtime.py) pays for it before the sweep starts, not during a trial's first epoch.
import torch._dynamo  # noqa: F401
from ray import tune

from tune_losses.spaces import Space, trial_config
from tune_losses.tracking import outcome, record
from tune_losses.tracking.callback import flatten, trial_name
from tune_losses.tracking.ledger import Ledger, Superseded, TrialRecord, retrying, trial_key
from tune_losses.tracking.replicas import ReplicaTable, recorded_table, split_replicas
from tune_losses.training import save_checkpoint, train
from tune_losses.training.checkpoint import FILENAME, load_checkpoint
from tune_losses.training.config import weights_used

from .baseline import BASELINE_KEY, baseline_config
from .halving import pause_epochs

log = logging.getLogger(__name__)
#: the most of a trial's time that checkpoint writes may take (module docstring)
CHECKPOINT_SHARE = 0.05
#: the most of a trial's time that the replica table's writes may take, between the writes that must be made
TABLE_SHARE = 0.02


class CheckpointStore:
    """The latest checkpoint of each trial, at ``<root>/<key>/state.pt``: a local (or shared) directory, replaced
    atomically, or a URI that pyarrow.fs can write (s3://, gs://: each object is written whole)."""

    def __init__(self, root: str, key: str):
        self.remote = "://" in root
        self.root, self.key = root, key

    @property
    def local_dir(self) -> Path:
        return Path(self.root) / self.key

    def save(self, state: dict) -> None:
        if not self.remote:
            save_checkpoint(state, self.local_dir)
            return
        import pyarrow.fs

        fs, base = pyarrow.fs.FileSystem.from_uri(self.root)
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(state, tmp)
            fs.create_dir(f"{base}/{self.key}", recursive=True)
            pyarrow.fs.copy_files(str(Path(tmp) / FILENAME), f"{base}/{self.key}/{FILENAME}", destination_filesystem=fs)

    def fetch(self, into: Path) -> Path | None:
        """A directory holding a readable checkpoint (``into`` for a remote one), or None when there is none or
        it cannot be read (torn by a copy cut short): the trial then starts again rather than fail for ever."""
        found = self._fetch(into)
        if found is None:
            return None
        try:
            load_checkpoint(found)
        except Exception as exc:
            log.warning("checkpoint %s cannot be read (%s): the trial starts again from epoch 1", found, exc)
            return None
        return found

    def _fetch(self, into: Path) -> Path | None:
        if not self.remote:
            return self.local_dir if (self.local_dir / FILENAME).is_file() else None
        import pyarrow.fs

        fs, base = pyarrow.fs.FileSystem.from_uri(self.root)
        if fs.get_file_info(f"{base}/{self.key}/{FILENAME}").type == pyarrow.fs.FileType.NotFound:
            return None
        pyarrow.fs.copy_files(f"{base}/{self.key}/{FILENAME}", str(into / FILENAME), source_filesystem=fs)
        return into

    def remove(self) -> None:
        if not self.remote:
            shutil.rmtree(self.local_dir, ignore_errors=True)


def trial_label(space: Space, config: dict) -> str:
    given = config.get("params", {})
    values = {p: given[p] for p in space.params if p in given}  # in the space's order
    name = f"baseline {given[BASELINE_KEY]}" if BASELINE_KEY in given else trial_name(space.train.loss.name, values)
    return name if config.get("sample") is None else f"{name} #{config['sample']}"


def trial_environment() -> None:
    """What Ray Tune's runtime environment would have set in a trial process (ray_runtime.use_prestarted_workers
    says why it is set here)."""
    os.environ.setdefault("PL_DISABLE_FORK", "1")


def run_trial(config: dict, space_json: dict, sweep: dict, data=None) -> None:
    """One trial. ``sweep`` names the ledger (tracking_uri, experiment_id, parent_run_id) and the checkpoint
    root; ``data`` is the sweep's Splits from Ray's object store (None: the trial builds its own)."""
    started = time.perf_counter()
    space = prepare(space_json)
    attempt = TrialAttempt(space, config, sweep, started)
    if attempt.record.finished:
        attempt.replay()
        return
    try:
        attempt.begin()
        attempt.finish(attempt.train(data))
    except Superseded as exc:
        # another attempt owns the run and records the trial: end without a write, and without an error that
        # Ray would retry (a retry would take the run back from the attempt that owns it)
        log.warning("%s", exc)
        attempt.superseded()


def prepare(space_json: dict) -> Space:
    """The trial process's set-up: Ray Tune's environment, the space, and exactly the CPUs this trial reserved
    (torch otherwise starts one thread per core of the node, and concurrent trials oversubscribe the cores: two
    1-CPU trials on 2 cores ran ~5x slower)."""
    trial_environment()
    space = Space.model_validate(space_json)
    torch.set_num_threads(max(1, int(space.resources.cpu)))
    return space


class TrialAttempt:
    """One attempt at a trial (a first run, a retry, a resume): it owns the trial's run while its token is the
    one the run holds (tag ``tune_losses.attempt_token``), and checks that before each epoch's writes, so a
    superseded attempt (a retried trial whose first process still runs, a trial of a driver that another took
    over) stops before it logs or checkpoints again."""

    def __init__(self, space: Space, config: dict, sweep: dict, started: float):
        self.space, self.config, self.started = space, config, started
        given = config.get("params", {})
        self.values = {p: given[p] for p in space.params if p in given}
        self.cfg = baseline_config(trial_config(space, self.values), given.get(BASELINE_KEY))
        if config.get("sample") is not None:  # each repeat of a repeated grid point trains its own seeds
            self.cfg["seed"] = self.cfg["seed"] + config["sample"] * self.cfg["repeats"]
        self.node = ray.get_runtime_context().get_node_id()  # which node of the cluster ran each epoch
        self.key = trial_key(config)
        self.ledger = Ledger(sweep["tracking_uri"], sweep["experiment_id"], sweep["parent_run_id"])
        self.record: TrialRecord = self.ledger.find_or_create(
            self.key,
            trial_label(space, config),
            {
                record.SWEEP: space.name,
                record.ROLE: "trial",
                record.STATUS: "running",
                **({record.BASELINE: given[BASELINE_KEY]} if BASELINE_KEY in given else {}),
            },
        )
        self.run_id = self.record.run_id
        self.checkpoints = CheckpointStore(sweep["checkpoints"], self.key)
        self.checkpoint_path = f"{sweep['checkpoints'].rstrip('/')}/{self.key}/{FILENAME}"
        self.token = ""  # this attempt's hold on the run (begin)
        self.clock = TrialClock(started, self.ledger)
        self.last: dict = {}
        self.confusion_logged = False
        self.pauses = set(pause_epochs(space))  # a scheduler may end the process there: checkpoint then
        self.stops = self.pauses | asha_rungs(space)  # a scheduler may end the trial there: its table complete
        self.table = ReplicaTable()
        self.table_writes = Cadence(TABLE_SHARE)

    def replay(self) -> None:
        """A trial the ledger holds as finished: its recorded result, once, for the scheduler and the searcher."""
        final = {k: v for k, v in self.record.metrics.items() if k != "epoch"}
        status = self.record.tags.get(record.STATUS, "completed")
        tune.report(
            {
                **final,
                "epoch": self.record.last_step,
                "trial_status": status,
                "replayed": True,
                "mlflow_run_id": self.run_id,
            }
        )

    def begin(self) -> None:
        """Take the run (this attempt's token), say where it runs, and record its params once."""
        tags = self.record.tags
        nodes = [n for n in tags.get(record.RAY_NODES, "").split(",") if n]
        self.token = self.ledger.take_run(
            self.run_id,
            {
                record.STATUS: "running",
                record.RAY_TRIAL_ID: tune.get_context().get_trial_id(),
                record.ATTEMPTS: int(tags.get(record.ATTEMPTS, "0")) + 1,
                record.RAY_NODE: self.node,
                record.RAY_NODES: ",".join(nodes + [self.node] if self.node not in nodes else nodes),
                record.CHECKPOINT: self.checkpoint_path,
            },
        )
        # what the run holds now: an attempt this one replaced may have logged an epoch since it was first read
        fresh = self.ledger.call("get_run", self.run_id)
        self.record.last_step = int(fresh.data.metrics.get("epoch", 0) or 0)
        if self.record.last_step > 0:  # the epochs an earlier attempt wrote: not added again
            held = retrying(recorded_table, self.ledger.client, self.run_id, dict(fresh.data.metrics))
            if held is not None:
                self.table.load(held)
        if self.record.status != "RUNNING":
            self.ledger.set_status(self.run_id, "RUNNING")
        for stale in (record.STOPPED_AT, record.REASON):  # an end recorded in part before a kill: it goes on
            if stale in tags:
                self.ledger.delete_tag(self.run_id, stale)
        if not tags.get(record.PARAMS_LOGGED):
            params = flatten(self.cfg)
            params.update({record.swept_param(k): json.dumps(v) for k, v in self.values.items()})
            params["weights"] = weights_used(self.cfg)
            if self.config.get("sample") is not None:
                params["sample"] = self.config["sample"]
            self.ledger.log_params(self.run_id, params)
            self.ledger.log_dict(self.run_id, self.cfg, record.CONFIG_ARTIFACT)
            self.ledger.set_tags(self.run_id, {record.PARAMS_LOGGED: "true"})

    def report(self, metrics: dict, state) -> None:
        """After each epoch, in this order: the metrics to MLflow, the checkpoint, the result to Ray Tune (module
        docstring); nothing at all once another attempt owns the run."""
        epoch = self.record_epoch(metrics, self.clock.enter())
        checkpoint = self.clock.checkpoint_due() or epoch >= self.cfg["epochs"] or epoch in self.pauses
        self.write_table(force=checkpoint or epoch in self.stops)
        if checkpoint:
            with self.clock.checkpointing():
                self.checkpoints.save(state())
        with self.clock.reporting():
            tune.report({**self.last, "node_id": self.node, "mlflow_run_id": self.run_id})

    def record_epoch(self, metrics: dict, entered: float) -> int:
        """An epoch's metrics to the trial's run (once: an epoch re-run from an older checkpoint is already
        there), and at the last epoch its confusion matrix (before the last checkpoint: a kill after it resumes
        with nothing to train, and nothing to log it from). Returns the epoch."""
        epoch = int(metrics["epoch"])
        metrics, own = split_replicas(metrics)
        self.ledger.check_owner(self.run_id, self.token)
        if not self.last and metrics.get("device"):  # the device this attempt trains on (loop.py pick_device)
            self.ledger.set_tags(self.run_id, {record.DEVICE: metrics["device"]})
        if epoch > self.record.last_step:
            self.ledger.log_epoch(self.run_id, {**metrics, **self.clock.spent(entered)}, epoch)
        self.table.add(epoch, own)
        if epoch >= self.cfg["epochs"] and metrics.get("test_confusion") is not None:
            self.ledger.log_dict(self.run_id, metrics["test_confusion"], record.CONFUSION_ARTIFACT)
            self.confusion_logged = True
        self.last.clear()
        self.last.update(metrics)
        return epoch

    def write_table(self, force: bool) -> None:
        """The replica table to the run when it holds epochs not written yet and ``force`` or its cadence says
        so (module docstring)."""
        if self.table.unwritten and (force or self.table_writes.due()):
            with self.table_writes.timed():
                self.table.write(self.ledger, self.run_id)

    def train(self, data) -> dict:
        with tempfile.TemporaryDirectory() as tmp:
            resume_from = self.checkpoints.fetch(Path(tmp))
            if resume_from is None and self.record.last_step > 0:  # checkpoint lost: epochs re-run, not re-logged
                self.ledger.set_tags(self.run_id, {record.RESTARTED: "true"})
            self.clock.train_started()
            # exactly the GPUs Ray assigned this trial (none: the CPU), whatever else the node has
            result = train(
                self.cfg, report=self.report, resume_from=resume_from, splits=data, gpu_ids=ray.get_gpu_ids()
            )
            self.clock.train_ended()
        return result

    def finish(self, result: dict, tell_ray: bool = True) -> None:
        """Close the run: completed, or diverged with its reason (``tell_ray``: and say so to Ray Tune, which a
        member of a fused group leaves to its group)."""
        if tell_ray and not self.last and result.get("status") == "completed":
            # resumed from the checkpoint of its last epoch (a kill came before its run was closed): nothing was
            # trained, so the result Ray Tune sees is the one the ledger holds
            final = {k: v for k, v in self.record.metrics.items() if k != "epoch"}
            tune.report({**final, "epoch": self.record.last_step, "node_id": self.node, "mlflow_run_id": self.run_id})
        self.ledger.check_owner(self.run_id, self.token)
        self.write_table(force=True)  # complete before the run says it ended
        if self.last.get("test_confusion") is not None and not self.confusion_logged:  # ended before its last epoch
            self.ledger.log_dict(self.run_id, self.last["test_confusion"], record.CONFUSION_ARTIFACT)
        if result.get("status") == "diverged":
            self._diverged(result, tell_ray)
            return
        timings = self.clock.spent(time.perf_counter(), whole=True) if self.last else None  # the whole attempt's
        tags = {record.STATUS: "completed", record.STOPPED_EARLY: "false"}
        self.ledger.set_tags(self.run_id, tags, timings, int(self.last.get("epoch", 0)))
        self.ledger.set_status(self.run_id, "FINISHED")

    def superseded(self) -> None:
        """The result Ray Tune gets from an attempt that another replaced: the metric at its worst (Ray Tune
        needs it), marked so that the driver records nothing of it (tracking/outcome.py)."""
        worst = float("-inf") if self.space.search.mode == "max" else float("inf")
        epoch = int(self.last.get("epoch", 0) or 0)
        tune.report({self.space.search.metric: worst, "epoch": epoch, "trial_status": outcome.SUPERSEDED_STATUS})

    def _diverged(self, result: dict, tell_ray: bool = True) -> None:
        """Stop with a status and a reason, not NaN metrics: the metric keeps its last finite value (or the worst
        possible one when the first epoch diverged) so schedulers and searchers can rank the trial."""
        metric, mode = self.space.search.metric, self.space.search.mode
        worst = float("-inf") if mode == "max" else float("inf")
        final = {k: v for k, v in self.last.items() if k != "test_confusion"}
        final.update(
            {
                metric: self.last.get(metric, worst),
                "epoch": result["epoch"],
                "trial_status": "diverged",
                "reason": result["reason"],
            }
        )
        tags = {record.STATUS: "diverged", record.REASON: result["reason"], record.STOPPED_EARLY: "false"}
        self.ledger.set_tags(self.run_id, tags)
        self.ledger.set_status(self.run_id, "FINISHED")
        if tell_ray:
            tune.report({**final, "mlflow_run_id": self.run_id})


def asha_rungs(space: Space) -> set[int]:
    """The epochs where ASHA may stop a trial: those that reach one of its milestones, grace_period x
    reduction_factor^k below max_t (Ray Tune's ASHAScheduler, one bracket), and max_t itself, where it stops
    every trial (a space may set max_t below train.epochs)."""
    s = space.search.scheduler
    if s.name != "asha":
        return set()
    max_t = s.max_t or space.train.epochs
    count = int(math.log(max_t / s.grace_period) / math.log(s.reduction_factor) + 1)
    return {math.ceil(s.grace_period * s.reduction_factor**k) for k in range(count)} | {max_t}


class Cadence:
    """Writes that may take at most ``share`` of the time: one is due once the time since the last is at least
    ``1 / share - 1`` times what that one took."""

    def __init__(self, share: float):
        self.share = share
        self.done_at, self.took = float("-inf"), 0.0

    def due(self) -> bool:
        return time.perf_counter() - self.done_at >= self.took * (1 / self.share - 1)

    @contextlib.contextmanager
    def timed(self):
        begun = time.perf_counter()
        yield
        self.done_at = time.perf_counter()
        self.took = self.done_at - begun


class TrialClock:
    """Where an attempt's time goes (module docstring: the ``seconds_*`` metrics), and when a checkpoint is due
    (writes cost at most :data:`CHECKPOINT_SHARE` of the trial's time)."""

    def __init__(self, started: float, ledger: Ledger):
        self.started, self.ledger = started, ledger
        self.seconds = {"checkpoint": 0.0, "tune_report": 0.0, "in_report": 0.0}
        self.train_start = self.train_end = 0.0
        self.saves = Cadence(CHECKPOINT_SHARE)
        self.first = True

    def train_started(self) -> None:
        self.train_start = time.perf_counter()

    def train_ended(self) -> None:
        self.train_end = time.perf_counter()

    def enter(self) -> float:
        """An epoch's report begins (the first one closes ``seconds_first_epoch``)."""
        now = time.perf_counter()
        if self.first:
            self.seconds["first_epoch"] = now - self.train_start
            self.first = False
        self._entered = now
        return now

    def spent(self, now: float, whole: bool = False) -> dict:
        """Where this attempt's time went until ``now``, as metrics (``whole``: after ``train`` returned)."""
        in_train = (self.train_end if whole else now) - self.train_start
        parts = {
            "trial": now - self.started,
            "train": in_train - self.seconds["in_report"],
            "tracking": self.ledger.seconds,
            **{k: v for k, v in self.seconds.items() if k in ("checkpoint", "tune_report", "first_epoch")},
        }
        return {f"seconds_{k}": v for k, v in parts.items()}

    def checkpoint_due(self) -> bool:
        return self.saves.due()

    @contextlib.contextmanager
    def checkpointing(self):
        with self.saves.timed():
            yield
        self.seconds["checkpoint"] += self.saves.took

    @contextlib.contextmanager
    def reporting(self):
        begun = time.perf_counter()
        yield
        done = time.perf_counter()
        self.seconds["tune_report"] += done - begun
        self.seconds["in_report"] += done - self._entered
