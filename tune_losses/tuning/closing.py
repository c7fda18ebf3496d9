"""What the driver does once Ray Tune's fit has returned: trial runs left open are closed, the trials counted,
the best config chosen. How each trial ended is tracking/outcome.py's rule, the one the callback used."""

from __future__ import annotations

import json
import math

from tune_losses.spaces import Space
from tune_losses.tracking import outcome, record
from tune_losses.tracking.ledger import Ledger, TrialRecord

from .baseline import BASELINE_KEY


def result_outcome(result, epochs: int, budget=None, scheduler: str = "asha") -> outcome.Outcome:
    """The outcome of one of Ray Tune's results (a trial as the fit ended it)."""
    error = None if result.error is None else str(result.error)
    return outcome.decide(
        result.metrics or {},
        epochs,
        error=error,
        budget_fired=getattr(budget, "fired", None),
        scheduler=scheduler,
    )


def close_trial_runs(
    ledger: Ledger, results, epochs: int, interrupted: bool = False, budget=None, scheduler: str = "asha"
) -> None:
    """A trial run still RUNNING lost its last write (the store was unreachable when the trial or the driver
    ended it): close it from what Ray Tune knows. One Ray Tune never heard of in this fit, or one a Ctrl-C
    stopped, stays resumable (``interrupted``, KILLED)."""
    running = set(ledger.running())
    for result in [] if interrupted else results:
        run_id = (result.metrics or {}).get("mlflow_run_id")
        if run_id not in running:
            continue
        ended = result_outcome(result, epochs, budget, scheduler)
        if ended.status == "superseded":
            continue  # another attempt owns that run
        if ended.recorded:
            ledger.set_tags(run_id, ended.tags())
            ledger.set_status(run_id, ended.run_status)
            running.discard(run_id)
    for run_id in running:
        ledger.set_tags(run_id, {record.STATUS: "interrupted"})
        ledger.set_status(run_id, "KILLED")


def summarize(results, space: Space, budget=None, records: list[TrialRecord] | None = None) -> dict:
    """How the trials ended (counted as the report counts its runs' tags) and the epochs run; ``records``: the
    trials' runs, for a fused sweep (its Ray results are groups)."""
    from tune_losses.reports.protocol import count_trials

    epochs = space.train.epochs
    if records is not None:
        rows = [outcome.from_tags(r.tags) for r in records]
        run = sum(r.last_step for r in records)
        return {**count_trials(rows), "epochs_run": run, "epochs_full_budget": len(records) * epochs}
    ends = [result_outcome(r, epochs, budget, space.search.scheduler.name) for r in results]
    ends = [e for e in ends if e.status != "superseded"]  # another attempt of the same trial counts it
    rows = [(e.status, e.stopped_early) for e in ends]
    epochs_run = sum(int((r.metrics or {}).get("epoch", 0) or 0) for r in results)
    return {**count_trials(rows), "epochs_run": epochs_run, "epochs_full_budget": len(ends) * epochs}


def best_config(space: Space, results, done: list[TrialRecord]) -> tuple[dict | None, float | None]:
    """The best config and its metric (last value) among this fit's trials and, for a resumed Optuna sweep, the
    finished trials the study was told about (Ray Tune did not run them again). None under the paper protocol
    without select_on_test, which chooses nothing (spaces.py)."""
    if space.selection_metric is None:
        return None, None
    metric, sign = space.search.metric, 1.0 if space.search.mode == "max" else -1.0
    candidates = [((r.metrics or {}).get(metric), (r.config or {}).get("params", {})) for r in results]
    candidates = [(v, params) for v, params in candidates if BASELINE_KEY not in params]  # a reference, no choice
    candidates += [
        (r.metrics.get(metric), {p: json.loads(r.params[record.swept_param(p)]) for p in space.params})
        for r in done
        if all(record.swept_param(p) in r.params for p in space.params) and record.BASELINE not in r.tags
    ]
    found = [(float(v), c) for v, c in candidates if isinstance(v, (int, float)) and math.isfinite(v)]
    if not found:
        return None, None
    value, config = max(found, key=lambda vc: sign * vc[0])
    return config, value
