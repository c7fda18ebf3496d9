"""The function each Ray Tune trial runs: the one `train`, recording its own MLflow run and its own checkpoint.

A trial finds its run in the sweep's ledger by its key (tracking/ledger.py) and its checkpoint under the sweep's
checkpoint directory by the same key, so it continues where it stopped whether Ray Tune restarts it (a retry
after a failure, a lost node) or a resumed sweep starts it anew. After each epoch, in this order:
1. the epoch's metrics go to MLflow (skipped when the ledger already holds that epoch);
2. the checkpoint is replaced atomically: after the first and the last epoch, at every epoch where the scheduler
   may pause the trial (halving's rungs), and after any other once the time since the last write is at least
   ``1 / CHECKPOINT_SHARE - 1`` times what that write took (writes then cost at most ~5% of the trial's time:
   every epoch for a small model, every few for 60 replicas of a wide head);
3. the result goes to Ray Tune (ASHA, the searcher, the progress display).
A kill re-runs the epochs after the last checkpoint and does not log them again (the same numbers: the
checkpoint holds every random state); a kill between 2 and 3 loses nothing. A trial the ledger holds as finished
is not trained again: it reports its recorded final result once, so schedulers and searchers see it.

With every epoch a trial logs where the time of this attempt went so far, as metrics of its run (so a trial
a scheduler stops has them too): ``seconds_trial`` (all of it), ``seconds_train`` (inside ``train``: data
preparation, e.g. the row-space basis, and every epoch's training and evaluation), ``seconds_first_epoch``
(``train`` called -> its first epoch reported), ``seconds_tracking`` (its MLflow calls), ``seconds_checkpoint``
(checkpoint writes) and ``seconds_tune_report``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import ray
import torch

# torch.optim imports torch._dynamo when the first optimizer is made (~1.8 s on 2 cores): imported here, a
# prestarted worker (workers.py) pays for it before the sweep starts, not during a trial's first epoch.
import torch._dynamo  # noqa: F401
from ray import tune

from tune_losses.spaces import Space, trial_config
from tune_losses.tracking.callback import flatten, trial_name
from tune_losses.tracking.ledger import Ledger, trial_key
from tune_losses.training import save_checkpoint, train
from tune_losses.training.checkpoint import FILENAME, load_checkpoint
from tune_losses.training.config import weights_used
from tune_losses.tuning.baseline import BASELINE_KEY, BASELINE_TAG, baseline_config

from .halving import pause_epochs
from .workers import trial_environment

log = logging.getLogger(__name__)
#: the most of a trial's time that checkpoint writes may take (module docstring)
CHECKPOINT_SHARE = 0.05


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


def run_trial(config: dict, space_json: dict, sweep: dict, data=None) -> None:
    """One trial. ``sweep`` names the ledger (tracking_uri, experiment_id, parent_run_id) and the checkpoint
    root; ``data`` is the sweep's Splits from Ray's object store (None: the trial builds its own)."""
    started = time.perf_counter()
    trial_environment()
    space = Space.model_validate(space_json)
    # Use exactly the CPUs this trial reserved: torch otherwise starts one thread per core of the node, and
    # concurrent trials oversubscribe the cores (two 1-CPU trials on 2 cores ran ~5x slower).
    torch.set_num_threads(max(1, int(space.resources.cpu)))
    given = config.get("params", {})
    values = {p: given[p] for p in space.params if p in given}
    cfg = baseline_config(trial_config(space, values), given.get(BASELINE_KEY))
    if config.get("sample") is not None:  # each repeat of a repeated grid point trains its own seeds
        cfg["seed"] = cfg["seed"] + config["sample"] * cfg["repeats"]
    node = ray.get_runtime_context().get_node_id()  # which node of the cluster ran each epoch
    key = trial_key(config)
    ledger = Ledger(sweep["tracking_uri"], sweep["experiment_id"], sweep["parent_run_id"])
    record = ledger.find_or_create(
        key,
        trial_label(space, config),
        {
            "tune_losses.sweep": space.name,
            "tune_losses.role": "trial",
            "status": "running",
            **({BASELINE_TAG: given[BASELINE_KEY]} if BASELINE_KEY in given else {}),
        },
    )
    run_id = record.run_id
    if record.finished:
        final = {k: v for k, v in record.metrics.items() if k != "epoch"}
        status = record.tags.get("status", "completed")
        tune.report(
            {**final, "epoch": record.last_step, "trial_status": status, "replayed": True, "mlflow_run_id": run_id}
        )
        return
    checkpoints = CheckpointStore(sweep["checkpoints"], key)
    nodes = [n for n in record.tags.get("ray_nodes", "").split(",") if n]
    attempts = int(record.tags.get("attempts", "0")) + 1
    tags = {
        "status": "running",
        "ray_trial_id": tune.get_context().get_trial_id(),
        "attempts": attempts,
        "ray_node_id": node,
        "ray_nodes": ",".join(nodes + [node] if node not in nodes else nodes),
        "checkpoint": f"{sweep['checkpoints'].rstrip('/')}/{key}/{FILENAME}",
    }
    if record.status != "RUNNING":
        ledger.set_status(run_id, "RUNNING")
    for stale in ("stopped_at_epoch", "reason"):  # an end recorded in part before a kill: the trial goes on
        if stale in record.tags:
            ledger.call("delete_tag", run_id, stale)
    ledger.set_tags(run_id, tags)
    if attempts == 1 or not record.tags.get("params_logged"):
        params = flatten(cfg)
        params.update({f"swept.{k}": json.dumps(v) for k, v in values.items()})
        params["weights"] = weights_used(cfg)
        if config.get("sample") is not None:
            params["sample"] = config["sample"]
        ledger.log_params(run_id, params)
        ledger.log_dict(run_id, cfg, "config.json")
        ledger.set_tags(run_id, {"params_logged": "true"})
    last_step = record.last_step
    last: dict = {}
    seconds = {"checkpoint": 0.0, "tune_report": 0.0, "in_report": 0.0}
    saved = {"at": float("-inf"), "took": 0.0}  # the end of the last checkpoint write (perf_counter), what it took

    def spent(now: float, in_train: float) -> dict:
        """Where this attempt's time went until ``now`` (``in_train`` of it inside ``train``), as metrics."""
        parts = {
            "trial": now - started,
            "train": in_train - seconds["in_report"],
            "tracking": ledger.seconds,
            **{k: v for k, v in seconds.items() if k in ("checkpoint", "tune_report", "first_epoch")},
        }
        return {f"seconds_{k}": v for k, v in parts.items()}

    pauses = set(pause_epochs(space))  # a scheduler may end the process there: the checkpoint must be current
    confusion_logged: list[int] = []

    def report(metrics: dict, state) -> None:
        entered = time.perf_counter()
        if not last:
            seconds["first_epoch"] = entered - seconds["train_start"]
        epoch = int(metrics["epoch"])
        if not last and metrics.get("device"):  # the device this attempt trains on (training/loop.py pick_device)
            ledger.set_tags(run_id, {"device": metrics["device"]})
        if epoch > last_step:  # an epoch re-run from an older checkpoint is already in the ledger
            # where this attempt's time went so far, with every epoch: a trial a scheduler stops keeps them too
            ledger.log_epoch(run_id, {**metrics, **spent(entered, entered - seconds["train_start"])}, epoch)
        if epoch >= cfg["epochs"] and metrics.get("test_confusion") is not None:
            # before the last checkpoint: a kill after it resumes with nothing to train, and nothing to log it from
            ledger.log_dict(run_id, metrics["test_confusion"], "confusion_matrix.json")
            confusion_logged.append(epoch)
        now = time.perf_counter()
        due = now - saved["at"] >= saved["took"] * (1 / CHECKPOINT_SHARE - 1)
        if due or epoch >= cfg["epochs"] or epoch in pauses:
            checkpoints.save(state())
            saved["at"] = time.perf_counter()
            saved["took"] = saved["at"] - now
            seconds["checkpoint"] += saved["took"]
        last.clear()
        last.update(metrics)
        t0 = time.perf_counter()
        tune.report({**metrics, "node_id": node, "mlflow_run_id": run_id})
        done = time.perf_counter()
        seconds["tune_report"] += done - t0
        seconds["in_report"] += done - entered

    with tempfile.TemporaryDirectory() as tmp:
        resume_from = checkpoints.fetch(Path(tmp))
        if resume_from is None and last_step > 0:
            ledger.set_tags(run_id, {"restarted_from_scratch": "true"})  # checkpoint lost: epochs re-run, not re-logged
        # exactly the GPUs Ray assigned this trial (none: the CPU), whatever else the node has
        seconds["train_start"] = time.perf_counter()
        result = train(cfg, report=report, resume_from=resume_from, splits=data, gpu_ids=ray.get_gpu_ids())
        in_train = time.perf_counter() - seconds["train_start"]
    if not last and result.get("status") == "completed":
        # resumed from the checkpoint of its last epoch (a kill came before its run was closed): nothing was
        # trained, so the result Ray Tune sees is the one the ledger holds
        final = {k: v for k, v in record.metrics.items() if k != "epoch"}
        tune.report({**final, "epoch": record.last_step, "node_id": node, "mlflow_run_id": run_id})
    if last.get("test_confusion") is not None and not confusion_logged:  # ended before its last epoch
        ledger.log_dict(run_id, last["test_confusion"], "confusion_matrix.json")
    if result.get("status") == "diverged":
        # Stop with a status and a reason, not NaN metrics: the metric keeps its last finite value (or the worst
        # possible one when the first epoch diverged) so schedulers and searchers can rank the trial.
        metric, mode = space.search.metric, space.search.mode
        worst = float("-inf") if mode == "max" else float("inf")
        final = {k: v for k, v in last.items() if k != "test_confusion"}
        final.update(
            {
                metric: last.get(metric, worst),
                "epoch": result["epoch"],
                "trial_status": "diverged",
                "reason": result["reason"],
            }
        )
        ledger.set_tags(run_id, {"status": "diverged", "reason": result["reason"], "stopped_early": "false"})
        ledger.set_status(run_id, "FINISHED")
        tune.report({**final, "mlflow_run_id": run_id})
        return
    # the whole attempt's timings, at its last epoch (after those of that epoch's own report)
    timings = spent(time.perf_counter(), in_train) if last else None
    ledger.set_tags(run_id, {"status": "completed", "stopped_early": "false"}, timings, int(last.get("epoch", 0)))
    ledger.set_status(run_id, "FINISHED")
