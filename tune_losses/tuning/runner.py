"""`tune-losses sweep`: a Ray Tune Tuner over `train`, ASHA and Optuna, every trial recorded in MLflow.

``run_sweep`` is the public entry point; the sweep's phases (options, check, claim, run, close, report) and their
rules are tuning/sweep.py's.
"""

from __future__ import annotations

from tune_losses import tracking
from tune_losses.tracking.driver import DriverLock

from .console import FaultLog, fault_log_path, quiet
from .interrupt import SweepInterrupted
from .sweep import Sweep, SweepOptions, SweepResult

__all__ = ["SweepInterrupted", "SweepResult", "print_summary", "run_sweep"]


def run_sweep(
    space_or_path,
    name: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    dataset: str | None = None,
    overrides: dict | None = None,
    verbose: int = 1,
    num_cpus: int | None = None,
    make_report: bool = True,
    progress: bool = False,
    warm_start: str | None = None,
) -> SweepResult:
    """Validate the space, start (or join) Ray, run the Tuner, record everything in MLflow, return a summary.

    MLflow is the sweep's ledger (tracking/ledger.py): every trial is one child run of the parent, found by a key
    derived from its config. ``resume`` continues the sweep of that name from the ledger alone, whatever Ray
    Tune's own state files hold (torn by a kill, or gone with the storage directory): finished trials are not
    trained again, interrupted ones continue from their checkpoints (or from epoch 1 when the checkpoint is
    gone) in their own runs, and the rest start. ``progress``: show the live view (tuning/progress.py);
    ``warm_start``: an earlier sweep whose trials Optuna starts from (tuning/warm_start.py). One process drives
    a sweep at a time (tracking/driver.py): a second is refused before anything starts.
    """
    quiet(verbose)
    options = SweepOptions.resolve(
        space_or_path,
        name=name,
        address=address,
        tracking_uri=tracking_uri,
        storage=storage,
        resume=resume,
        dataset=dataset,
        overrides=overrides,
        verbose=verbose,
        num_cpus=num_cpus,
        make_report=make_report,
        progress=progress,
        warm_start=warm_start,
    )
    with FaultLog(fault_log_path(tracking.run_dir(), options.name), verbose), DriverLock() as lock:
        sweep = Sweep(options, lock)
        sweep.check()
        sweep.claim()
        try:
            result = sweep.close(sweep.run())
        except BaseException as exc:
            sweep.abandon(exc)
            raise
        return sweep.report(result)


def print_summary(result: SweepResult, metric: str) -> None:
    """What the sweep ran and chose, from what MLflow holds (the trial runs' tags, the parent run's params): the
    same facts and sentences as its report."""
    from tune_losses.reports.collect import sweep_runs
    from tune_losses.reports.protocol import count_trials, describe_trials, statement, trial_outcomes

    s = result.summary
    _, parent, runs, space = sweep_runs(result.parent_run_id, result.tracking_uri)
    print(f"\nSweep {result.name!r}: {describe_trials(count_trials(trial_outcomes(runs)))}")
    print(
        f"Epochs run: {s['epochs_run']} of a full budget of {s['epochs_full_budget']} "
        f"({100 * s['epochs_run'] / max(s['epochs_full_budget'], 1):.0f}%)"
    )
    print("\n".join(line.removeprefix("- ") for line in statement(space, parent.data.params)))
    if result.best_config is not None:
        print(f"Best {metric}: {result.best_metric:.4f} with {result.best_config}")
    print(
        f"MLflow: {tracking.redact(result.tracking_uri)}, parent run {result.parent_run_id} "
        f"(browse with `tune-losses ui`)"
    )
    if result.report is not None:
        print(f"Report: {result.report.directory / 'report.md'} (also in the parent run's report/ artifacts)")
