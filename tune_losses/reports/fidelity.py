"""Fidelity honesty: a scheduler (ASHA, halving) stops trials at different epochs, so a sensitivity table of
final values compares a value trained 1 epoch with one trained 10. This rebuilds the per-replica rows at the last
epoch every trial reached (from each run's replica table, or an older run's metric histories), so that one table
compares like with like."""

from __future__ import annotations

import pandas as pd

from tune_losses.tracking.replicas import history


def at_common_epoch(client, df: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, int] | None:
    """(the rows with ``metric`` as it was at the common epoch, that epoch), or None when no trial was stopped
    early or a trial recorded no epoch."""
    if not df["stopped_early"].any():
        return None
    rows = df[df["status"] == "completed"]
    replicas = rows.groupby("run_id")["replica"].nunique()
    steps = {rid: history(client, rid, metric, count) for rid, count in replicas.items()}  # replica -> epochs
    reached = [max(max(h) for h in per.values() if h) if any(per.values()) else 0 for per in steps.values()]
    if not reached or min(reached) < 1:
        return None
    epoch = min(reached)
    out = rows.copy()
    out[metric] = [steps[row.run_id][int(row.replica)].get(epoch) for row in rows.itertuples()]
    return out.assign(stopped_early=False, epochs=epoch), epoch
