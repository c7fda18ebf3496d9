"""Fidelity honesty: a scheduler (ASHA, halving) stops trials at different epochs, so a sensitivity table of
final values compares a value trained 1 epoch with one trained 10. This rebuilds the per-replica rows at the last
epoch every trial reached (from each run's metric history), so that one table compares like with like."""

from __future__ import annotations

import pandas as pd


def replica_key(metric: str, replica: int, replicas: int) -> str:
    """The per-epoch metric of one replica (``test_acc_r2``), or the trial's own when it trained one replica."""
    return f"{metric}_r{replica}" if replicas > 1 else metric


def at_common_epoch(client, df: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, int] | None:
    """(the rows with ``metric`` as it was at the common epoch, that epoch), or None when no trial was stopped
    early or a trial recorded no epoch."""
    if not df["stopped_early"].any():
        return None
    rows = df[df["status"] == "completed"]
    replicas = rows.groupby("run_id")["replica"].nunique()
    steps: dict[str, dict[str, dict[int, float]]] = {}
    for rid, count in replicas.items():
        keys = {replica_key(metric, r, count) for r in range(count)}
        steps[rid] = {k: {h.step: h.value for h in client.get_metric_history(rid, k)} for k in keys}
    reached = [max(max(h) for h in per.values() if h) if any(per.values()) else 0 for per in steps.values()]
    if not reached or min(reached) < 1:
        return None
    epoch = min(reached)
    out = rows.copy()
    out[metric] = [
        steps[row.run_id][replica_key(metric, int(row.replica), replicas[row.run_id])].get(epoch)
        for row in rows.itertuples()
    ]
    return out.assign(stopped_early=False, epochs=epoch), epoch
