"""Synchronous successive halving for a grid known up front (scheduler ``halving`` in a space).

Measured against ASHA in a seeded random grid order by ``benchmarks/asha_vs_grid.py``; ASHA stays the default
(see that benchmark's docstring for the numbers)."""

from __future__ import annotations

import math

from ray.tune.schedulers import FIFOScheduler


def rungs(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The epochs where halving compares the trials: grace_period, x reduction_factor, ... (below max_t)."""
    out, r = [], grace_period
    while r < max_t:
        out.append(r)
        r = max(r + 1, int(r * reduction_factor))
    return out


def pause_epochs(space) -> list[int]:
    """The epochs after which the space's scheduler may pause a trial (its process ends; it resumes from its
    checkpoint): halving's rungs; none for asha and fifo (they stop trials, never pause them)."""
    s = space.search.scheduler
    if s.name != "halving":
        return []
    return rungs(s.grace_period, s.reduction_factor, s.max_t or space.train.epochs)


class SuccessiveHalving(FIFOScheduler):
    """Synchronous successive halving (one bracket of Hyperband) over ``trials`` trials known up front: every
    trial runs to the first rung (``grace_period`` epochs) and pauses; once all have reached it, the best
    ceil(n / reduction_factor) by the sweep's metric continue to the next rung (x reduction_factor, at most
    ``max_t``) and the others stop; ... until ``max_t``. A paused trial's process ends; resumed, it continues
    from its own checkpoint in its own MLflow run (tuning/trial.py checkpoints at every rung), so no epoch is
    trained or logged twice. At most ``max_concurrent`` trials run at once: every trial waits, PAUSED from the
    moment it is added, until this scheduler picks it (Ray Tune would otherwise start every PENDING trial that
    resources allow). A halving sweep cannot be resumed (its rung decisions are not recorded: runner.py refuses).
    Written on Ray Tune's public scheduler interface: Ray's HyperBandScheduler fills its brackets from the one
    without halving (its first trials run to max_t) and halves a bracket among the trials added so far."""

    def __init__(self, trials: int, max_t: int, grace_period: int, reduction_factor: float, max_concurrent: int):
        super().__init__()
        self.trials, self.max_t, self.eta, self.max_concurrent = trials, max_t, reduction_factor, max_concurrent
        self.rungs = rungs(grace_period, reduction_factor, max_t)
        self.waiting: set = set()  # trials added, never started: this scheduler starts them, max_concurrent at once
        self.added: list = []  # every trial, in the order the searcher made them
        self.alive: dict = {}  # trial -> its last result, for the trials still in the bracket
        self.promoted: set = set()  # paused trials that continue to the next rung
        self.rung = 0  # index into self.rungs of the rung the alive trials run to
        self.stopped = 0

    def set_search_properties(self, metric, mode, **spec) -> bool:
        self._mode = mode or getattr(self, "_mode", None) or "max"
        return super().set_search_properties(metric, mode, **spec)

    def _target(self) -> int:
        return self.rungs[self.rung] if self.rung < len(self.rungs) else self.max_t

    def on_trial_add(self, tune_controller, trial):
        from ray.tune.experiment import Trial

        self.added.append(trial)
        self.alive[trial] = None
        self.waiting.add(trial)
        # filed as PAUSED by the controller (it files a trial by its status after this call): Ray Tune starts every
        # PENDING trial that resources allow; choose_trial_to_run starts these, max_concurrent at once
        trial.set_status(Trial.PAUSED)

    def on_trial_result(self, tune_controller, trial, result):
        from ray.tune.schedulers import TrialScheduler

        self.alive[trial] = result
        self.promoted.discard(trial)
        epoch = int(result.get("epoch", 0) or 0)
        if epoch >= self.max_t:
            return TrialScheduler.STOP
        if epoch < self._target():
            return TrialScheduler.CONTINUE
        keep = self._halve(tune_controller, current=trial)
        if keep is None:
            return TrialScheduler.PAUSE  # others have yet to reach this rung
        return TrialScheduler.CONTINUE if keep else TrialScheduler.STOP

    def _halve(self, tune_controller, current=None) -> bool | None:
        """When every trial has reached the current rung: stop all but the best, promote those. Whether
        ``current`` (the trial reporting, running) continues; None when the rung is not complete yet."""
        if len(self.added) < self.trials or self.rung >= len(self.rungs) or not self.alive:
            return None
        target = self._target()
        if any(r is None or int(r.get("epoch", 0) or 0) < target for r in self.alive.values()):
            return None
        sign = 1.0 if self._mode == "max" else -1.0

        def score(t) -> float:
            v = self.alive[t].get(self._metric)
            return sign * float(v) if isinstance(v, (int, float)) and math.isfinite(v) else -math.inf

        ranked = sorted(self.alive, key=score, reverse=True)
        n = math.ceil(len(ranked) / self.eta)
        good, bad = ranked[:n], ranked[n:]
        self.rung += 1
        for t in bad:
            self.alive.pop(t)
            self.stopped += 1
            if t is not current:
                tune_controller.stop_trial(t)
        self.promoted.update(t for t in good if t is not current)
        return current in good if current is not None else None

    def on_trial_complete(self, tune_controller, trial, result):
        self.on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial):
        self.promoted.discard(trial)
        if self.alive.pop(trial, "gone") != "gone":  # a trial gone before the rung may complete it
            self._halve(tune_controller)

    def choose_trial_to_run(self, tune_controller):
        from ray.tune.experiment import Trial

        trials = tune_controller.get_trials()
        if sum(t.status in (Trial.RUNNING, Trial.PENDING) for t in trials) >= self.max_concurrent:
            return None
        for t in trials:
            if t.status == Trial.PAUSED and (t in self.promoted or t in self.waiting):
                self.waiting.discard(t)
                return t
        return None

    def debug_string(self) -> str:
        return f"Successive halving: rung {self._target()} of {self.rungs + [self.max_t]}, {self.stopped} stopped"
