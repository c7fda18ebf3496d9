"""How a trial ended: the one rule, for the driver's callback, the closing pass, the summary and the live view.

A trial's last result (what it reported to Ray Tune last), whether it raised for good, whether a Ctrl-C had
stopped the sweep, and which budget (if any) had fired decide its outcome:

* an attempt that another replaced (it ended saying so, tuning/trial.py): ``superseded``, and nothing is
  written: the attempt that owns the run records the trial;
* it raised for good: ``error`` (run FAILED);
* Ctrl-C had stopped the sweep and the trial did not finish on its own: ``interrupted`` (run KILLED: a
  ``--resume`` continues it from its checkpoint);
* it reported no epoch: ``not_started`` (a pending trial a budget ended; it has no run);
* it reported ``trial_status: diverged``: ``diverged`` (run FINISHED, never trained again);
* otherwise ``completed`` (run FINISHED); before its last epoch that means stopped early, ``stopped_by`` the
  budget that had fired (``time_budget``, ``plateau``) or else the scheduler (``asha``, ``halving``).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import record

#: what the error of a superseded trial attempt says (tuning/trial.py ``Superseded``): the driver records nothing
#: of it, since the attempt that owns the run now records the trial
SUPERSEDED = "another attempt owns its run now"
#: the ``trial_status`` such an attempt reports to Ray Tune as it ends (tuning/trial.py)
SUPERSEDED_STATUS = "superseded"

#: each outcome's MLflow run status
RUN_STATUS = {
    "completed": "FINISHED",
    "diverged": "FINISHED",
    "error": "FAILED",
    "interrupted": "KILLED",
    "not_started": "KILLED",
    "superseded": "",  # never written: the attempt that owns the run records the trial
}


#: who stops a trial early under each scheduler
STOPPERS = {"asha": "asha", "halving": "halving"}


@dataclass(frozen=True)
class Outcome:
    status: str  # completed, diverged, error, interrupted, not_started or superseded
    epoch: int = 0  # the last epoch it reported
    stopped_by: str | None = None  # who stopped a completed trial before its last epoch
    reason: str | None = None  # why it diverged or failed

    @property
    def stopped_early(self) -> bool:
        return self.stopped_by is not None

    @property
    def run_status(self) -> str:
        return RUN_STATUS[self.status]

    @property
    def recorded(self) -> bool:
        """Whether the driver writes this outcome on the trial's run (not for a trial that never reported, a
        Ctrl-C, which the closing pass marks, or a superseded attempt)."""
        return self.status not in ("interrupted", "not_started", "superseded")

    @property
    def finished(self) -> bool:
        """Ended for good: a resume does not train it again."""
        return self.status in ("completed", "diverged", "error")

    def tags(self) -> dict[str, str]:
        """The trial run's tags that record this outcome (every one written, so that an older partial end is
        overwritten)."""
        tags = {record.STATUS: self.status, record.STOPPED_EARLY: str(self.stopped_early).lower()}
        if self.stopped_by is not None:
            tags[record.STOPPED_AT] = str(self.epoch)
            tags[record.STOPPED_BY] = self.stopped_by
        if self.reason:
            tags[record.REASON] = self.reason[:5000]
        return tags


def decide(
    last: dict | None,
    epochs: int,
    *,
    error: str | None = None,
    interrupted: bool = False,
    budget_fired: str | None = None,
    scheduler: str = "asha",
) -> Outcome:
    """The outcome of a trial whose last result was ``last`` (None: it reported nothing) in a sweep of ``epochs``
    epochs per trial. ``error``: the failure's text when it raised for good."""
    last = last or {}
    epoch = int(last.get("epoch", 0) or 0)
    own = last.get("trial_status")  # what the trial itself said: completed or diverged
    if own == SUPERSEDED_STATUS or (error is not None and SUPERSEDED in error):
        return Outcome("superseded", epoch)
    if error is not None:
        return Outcome("error", epoch, reason=error)
    if interrupted and own is None and epoch < epochs:  # one that reached its last epoch finished on its own
        return Outcome("interrupted", epoch)
    if "epoch" not in last:
        return Outcome("not_started")
    if own == "diverged":
        return Outcome("diverged", epoch, reason=last.get("reason"))
    if epoch < epochs:  # a budget, else the scheduler; fifo stops none itself: Ray's stopper did
        return Outcome("completed", epoch, stopped_by=budget_fired or STOPPERS.get(scheduler, "stopper"))
    return Outcome("completed", epoch)


def from_tags(tags: dict) -> tuple[str, bool]:
    """(status, stopped early) as a trial run's tags record them (what reports count)."""
    return tags.get(record.STATUS, ""), tags.get(record.STOPPED_EARLY) == "true"
