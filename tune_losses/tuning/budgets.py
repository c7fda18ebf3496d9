"""Budgets of a sweep: a wall-clock limit (``search.time_budget_s``) and a plateau stop (``search.plateau``).

The time budget is Ray Tune's own ``TimeoutStopper``: its clock starts with the Tuner's loop, and when it runs out
Ray stops the running trials and starts no new ones. It counts the sweep's time: a resumed sweep has what is left
after the time its earlier drivers ran (recorded on the parent run, tracking/parent.py), and the plateau count
goes on from the trials finished before. Ray's ``ExperimentPlateauStopper`` does not fit the plateau
rule (it looks at the spread of the top results of every epoch, not at whether the sweep's best improves), so the
plateau is counted here over finished trials: each trial that ends (completed, stopped by ASHA, diverged or failed)
with a final metric that does not beat the best so far by more than ``min_delta`` adds one; one that does resets
the count; at ``patience`` the sweep ends. A trial's final metric is its last reported value (Ray's
``scope="last"``, as the sweep's best is chosen).

:class:`Budget` is a Ray Tune callback (it sees trials end, and whether the sweep ran to its end) and holds the
stopper to give the Tuner (``budget.stopper``); ``budget.ended_by`` says why the sweep ended: ``completed``,
``time_budget``, ``plateau`` or ``interrupted``.
"""

from __future__ import annotations

import math

from ray.tune import Callback
from ray.tune.stopper import CombinedStopper, Stopper, TimeoutStopper

from tune_losses.tracking import outcome

ENDED_BY = ("completed", "time_budget", "plateau", "interrupted")


class _Recorded(Stopper):
    """A stopper that remembers when ``stop_all`` first said yes (Ray's stoppers do not say it afterwards)."""

    def __init__(self, inner: Stopper, reason: str, budget: Budget):
        self.inner, self.reason, self.budget = inner, reason, budget

    def __call__(self, trial_id, result):
        return self.inner(trial_id, result)

    def stop_all(self):
        if self.inner.stop_all():
            self.budget.fired = self.budget.fired or self.reason
            return True
        return False


class _PlateauStopper(Stopper):
    def __init__(self, budget: Budget):
        self.budget = budget

    def __call__(self, trial_id, result):
        return False

    def stop_all(self):
        return self.budget.plateaued()


class Budget(Callback):
    """The budgets of one sweep (``spaces.Search``): ``stopper`` for the Tuner, this object among its callbacks."""

    def __init__(self, search, seconds_before: float = 0.0, finished: list | None = None):
        """``seconds_before``: how long the sweep ran under earlier drivers (a resumed sweep's time budget counts
        it); ``finished``: the trials it finished then (tracking/ledger.py TrialRecords, counted for the plateau
        in the order they ended)."""
        self.metric, self.mode = search.metric, search.mode
        self.time_budget_s = search.time_budget_s
        self.patience = search.plateau.patience if search.plateau else None
        self.min_delta = search.plateau.min_delta if search.plateau else 0.0
        self.best: float | None = None
        self.since_best = 0  # finished trials since the best last improved by more than min_delta
        self.fired: str | None = None  # the budget that ended the sweep
        self.interrupted = False
        for trial in sorted(finished or [], key=lambda t: t.end_time or 0):
            self._finished(trial.metrics.get(self.metric) if trial.status == "FINISHED" else None)
        stoppers = []
        #: what is left of the time budget for this driver (spent: the sweep stops at its first check)
        self.time_left_s = max(self.time_budget_s - seconds_before, 1e-3) if self.time_budget_s else None
        if self.time_left_s is not None:
            stoppers.append(_Recorded(TimeoutStopper(self.time_left_s), "time_budget", self))
        if self.patience:
            stoppers.append(_Recorded(_PlateauStopper(self), "plateau", self))
        self.stopper = None if not stoppers else stoppers[0] if len(stoppers) == 1 else CombinedStopper(*stoppers)

    # --- the plateau ------------------------------------------------------------------------------------------
    def plateaued(self) -> bool:
        return self.patience is not None and self.patience > 0 and self.since_best >= self.patience

    def _finished(self, value) -> None:
        value = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
        sign = 1.0 if self.mode == "max" else -1.0
        if value is not None and (self.best is None or sign * (value - self.best) > self.min_delta):
            self.best, self.since_best = value, 0
        else:
            self.since_best += 1

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        # a pending trial stopped by the budget never ran; a replayed one was counted when the Budget was made;
        # a superseded attempt is another attempt's trial
        if last and not last.get("replayed") and last.get("trial_status") != outcome.SUPERSEDED_STATUS:
            self._finished(last.get(self.metric))

    def on_trial_error(self, iteration, trials, trial, **info):
        from tune_losses.tracking.callback import error_text

        if outcome.SUPERSEDED not in error_text(trial):
            self._finished(None)

    def on_experiment_end(self, trials, **info):
        # Ctrl-C is told by the runner (tuning/runner.py Interrupt); trials left unfinished say so too
        self.interrupted = self.interrupted or any(t.status not in ("TERMINATED", "ERROR") for t in trials)

    def get_state(self):
        return {"best": self.best, "since_best": self.since_best}

    def set_state(self, state):
        self.best, self.since_best = state["best"], state["since_best"]

    @property
    def ended_by(self) -> str:
        if self.interrupted:
            return "interrupted"
        return self.fired or "completed"

    def describe(self) -> str:
        """Why the sweep ended, in words."""
        ended_by = self.ended_by
        if ended_by == "time_budget":
            return f"the time budget of {self.time_budget_s:g} s was spent"
        if ended_by == "plateau":
            return (
                f"the best {self.metric} did not improve by more than {self.min_delta:g} for {self.patience} "
                "finished trials"
            )
        return {"completed": "every trial ran", "interrupted": "interrupted"}[ended_by]
