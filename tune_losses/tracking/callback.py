"""What the driver records of a sweep's trials: only what a trial cannot know itself.

Trials record their own runs (tuning/trial.py: params, every epoch's metrics, completion), so tracking throughput
grows with the number of trials and nothing reported waits in the driver's memory. The driver records the
decisions made outside a trial: a trial stopped by the scheduler (ASHA), a trial that raised and is retried, a
trial that failed for good. Each write is idempotent (tracking/ledger.py); a driver killed before writing one
leaves the run RUNNING, and ``--resume`` continues that trial from its checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ray.tune import Callback

from . import outcome, record
from .ledger import Ledger, as_trial, trial_key

log = logging.getLogger(__name__)
STOP = object()


def trial_name(loss: str, values: dict) -> str:
    """A readable run name from the swept values, e.g. 'dal a=15 bs=32'; a joint path's pair by part, e.g.
    'beta_gamma beta=4 gamma=10' for ``loss.beta,loss.gamma: [4, 10]``."""
    short = {"batch_size": "bs", "optimizer.lr": "lr"}
    parts = []
    for path, value in values.items():
        paths = path.split(",")
        named = zip(paths, value) if len(paths) > 1 and isinstance(value, (list, tuple)) else [(path, value)]
        for part, v in named:
            key = short.get(part, part.split(".")[-1])
            parts.append(f"{key}={v:.4g}" if isinstance(v, float) else f"{key}={v}")
    return " ".join([loss] + parts)


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def error_text(trial, limit: int = 2000) -> str:
    """The end of the traceback Ray wrote for a trial that raised (its last line names the exception)."""
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text()[-limit:].strip() if path else "trial raised"
    except OSError:
        return f"trial raised (traceback in {path})"


class LedgerCallback(Callback):
    """Ray Tune callback on the driver: the scheduler's stops, retries and failures into each trial's run."""

    def __init__(self, ledger: Ledger, epochs: int, interrupted=None):
        """``interrupted``: a threading.Event set on Ctrl-C; trials Ray Tune stops after it are not finished (the
        runner marks them interrupted, and ``--resume`` continues them)."""
        self.ledger, self.epochs, self.interrupted = ledger, epochs, interrupted
        self.budget: Any = None  # tuning/budgets.py Budget: which budget stopped a trial, if one did
        self.scheduler = "asha"
        self.trials: list = []
        self._retries: dict[str, int] = {}

    def _run_id(self, trial) -> str | None:
        config = as_trial(trial.config or {})
        if "group" in config:
            return None  # a fused group: each member's run is written by the group's trial (tuning/fused_trial.py)
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if run_id:
            return run_id
        record = self.ledger.trials().get(trial_key(config))  # it raised before its first report
        return record.run_id if record else None

    def _write(self, what: str, trial, fn) -> None:
        """A write that must not stop the sweep when the store stays unreachable: the resume reconciles it."""
        try:
            run_id = self._run_id(trial)
            if run_id:
                fn(run_id)
        except Exception as exc:
            log.error("could not record %s of trial %s in MLflow: %s", what, trial.trial_id, exc)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        if last.get("replayed"):
            return  # finished in an earlier run of the sweep: its run already says how
        interrupted = self.interrupted is not None and self.interrupted.is_set()
        fired = getattr(self.budget, "fired", None)
        ended = outcome.decide(last, self.epochs, interrupted=interrupted, budget_fired=fired, scheduler=self.scheduler)
        if not ended.recorded:
            return  # a Ctrl-C stopped it (the closing pass marks it), it never reported, or it was superseded

        def write(run_id):
            self.ledger.set_tags(run_id, {**ended.tags(), record.RAY_STATUS: "TERMINATED"})
            if last.get("test_confusion") is not None:
                self.ledger.log_dict(run_id, last["test_confusion"], record.CONFUSION_ARTIFACT)
            self.ledger.set_status(run_id, ended.run_status)

        self._write("the end", trial, write)

    def on_trial_recover(self, iteration, trials, trial, **info):  # it raised; Ray retries it
        if outcome.SUPERSEDED in error_text(trial):
            return  # an attempt that another replaced: the other records the trial
        self._retries[trial.trial_id] = self._retries.get(trial.trial_id, 0) + 1
        n = self._retries[trial.trial_id]
        self._write(
            "a retry",
            trial,
            lambda run_id: self.ledger.set_tags(
                run_id, {"retries": n, "status": "retrying", "last_error": error_text(trial)}
            ),
        )

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.interrupted is not None and self.interrupted.is_set():
            return  # a trial process that the Ctrl-C reached too: the runner marks it interrupted
        if outcome.SUPERSEDED in error_text(trial):
            return  # an attempt that another replaced: the other records the trial

        def write(run_id):
            self.ledger.set_tags(run_id, {"status": "error", "ray_status": "ERROR", "reason": error_text(trial)})
            self.ledger.set_status(run_id, "FAILED")

        self._write("the failure", trial, write)

    def on_experiment_end(self, trials, **info):
        self.trials = list(trials)
