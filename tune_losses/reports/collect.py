"""Read a sweep back from MLflow alone (any tracking URI): one row per trial and replica, plus histories."""

from __future__ import annotations

import json
import os

import pandas as pd

from tune_losses import tracking
from tune_losses.tracking import record
from tune_losses.tracking.replicas import final_values
from tune_losses.tracking.sweeps import earlier_runs, find

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
BASELINE_TAG = record.BASELINE  # set on a baseline trial's run (tuning/baseline.py)
FINAL = ("val_acc", "test_acc", "val_f1", "test_f1", "val_nmi", "test_nmi", "train_loss")


def _value(text: str):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def sweep_runs(sweep: str, tracking_uri: str | None = None):
    """(client, parent run, child runs, resolved space dict) of a sweep given by name or parent run id."""
    c = tracking.client(tracking_uri, must_exist=True)  # reading: a store that is not there is an error
    parent = find(c, sweep)  # or a ValueError that names the store and the sweeps it holds
    runs = tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)
    runs = list(runs) + earlier_runs(c, parent)  # --warm-start: the earlier sweep's trials are part of this one
    if "space/resolved_space.json" not in {f.path for f in c.list_artifacts(parent.info.run_id, "space")}:
        raise ValueError(
            f"sweep={sweep!r}: its parent run {parent.info.run_id} holds no space/resolved_space.json: the sweep "
            "was stopped while it was being created, before any trial ran; run it again with `tune-losses sweep "
            f"{parent.data.tags.get('space_file', 'SPACE')} --name {parent.data.tags.get('tune_losses.sweep', sweep)} "
            "--resume` (and the same --tracking-uri)"
        )
    path = c.download_artifacts(parent.info.run_id, "space/resolved_space.json")
    with open(path) as f:
        space = json.load(f)
    return c, parent, runs, space


def trial_table(client, runs, swept: list[str], sweeps: dict | None = None) -> pd.DataFrame:
    """One row per (trial, replica): swept values, final metrics of that replica (its own values from the run's
    replica table, or an older run's ``<metric>_r<i>`` metrics: tracking/replicas.py), status tags, and the sweep
    it ran in (``from_sweep``: ``sweeps`` maps parent run ids to sweep names, see tracking.sweeps.sweep_names)."""
    rows = []
    for run in runs:
        m, tags = run.data.metrics, run.data.tags
        values = {p: _value(run.data.params.get(record.swept_param(p))) for p in swept}
        for p in list(values):
            if "," in p and isinstance(values[p], list):  # a joint path: one column per part
                for part, v in zip(p.split(","), values.pop(p)):
                    values[part] = v
        own = final_values(client, run) or {0: {}}  # one replica: its values are the run's metrics
        for r, mine in sorted(own.items()):
            row = {
                "run_id": run.info.run_id,
                "trial": run.info.run_name,
                "replica": r,
                **values,
                "status": tags.get("status", ""),
                "stopped_early": tags.get("stopped_early") == "true",
                "epochs": int(tags.get("stopped_at_epoch", 0)) or None,
                "reason": tags.get("reason", ""),
                "from_sweep": (sweeps or {}).get(tags.get("mlflow.parentRunId"), tags.get("tune_losses.sweep")),
                "baseline": tags.get(BASELINE_TAG, ""),  # the baseline loss's trial (tuning/baseline.py)
                "sample": int(run.data.params.get("sample", 0)),  # the grid repeat: with replica, the seed
            }
            for key in FINAL:
                row[key] = mine.get(key, m.get(key))
            rows.append(row)
    return pd.DataFrame(rows)


def histories(client, run_ids, keys=("train_loss", "val_acc", "test_acc")) -> dict[str, pd.DataFrame]:
    out = {}
    for rid in run_ids:
        cols = {}
        for key in keys:
            cols[key] = {h.step: h.value for h in client.get_metric_history(rid, key)}
        out[rid] = pd.DataFrame(cols).sort_index()
    return out
