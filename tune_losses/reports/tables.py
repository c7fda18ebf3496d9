"""Sensitivity tables in the papers' own forms, from the per-replica trial table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import reference
from .stats import versus_best

PERCENT = 100.0


def grouped(df: pd.DataFrame, param: str, metric: str, mode: str) -> pd.DataFrame:
    """Per value of `param`: mean / std / min / max / n of `metric` over replicas (and trials), and whether the
    value is distinguishable from the best one (Welch t-test, BH-corrected)."""
    ok = df[df["status"] == "completed"]
    groups = {v: g[metric].dropna().to_numpy() for v, g in ok.groupby(param)}
    rows = [
        {
            param: v,
            "mean": s.mean(),
            "std": s.std(ddof=1) if len(s) > 1 else 0.0,
            "min": s.min(),
            "max": s.max(),
            "n": len(s),
        }
        for v, s in groups.items()
        if len(s)
    ]
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    sig = versus_best({v: s for v, s in groups.items() if len(s)}, mode).rename(columns={"value": param})
    return table.merge(sig, on=param).sort_values(param).reset_index(drop=True)


def with_paper(table: pd.DataFrame, param: str, study, paper_dataset) -> tuple[pd.DataFrame, str]:
    """Add the paper's columns (and our - theirs) when the sweep ran the paper's study on its data set."""
    ref = reference.paper_columns(study, paper_dataset)
    if ref is None:
        return table, ""
    frame, columns = ref
    out = table.copy()
    for ours, theirs, scale in columns:
        known = frame[theirs].set_axis(frame.index.astype(float))
        paper = out[param].map(lambda v, known=known: known.get(float(v), np.nan))
        out[f"paper_{ours}_%"] = paper
        out[f"diff_{ours}_%"] = out[ours] * scale - paper
    return out, f"paper: {paper_dataset}"


def as_percent(table: pd.DataFrame, cols=("mean", "std", "min", "max")) -> pd.DataFrame:
    out = table.copy()
    for c in cols:
        if c in out:
            out[c] = out[c] * PERCENT
    return out.rename(columns={c: f"{c}_%" for c in cols if c in out})


def grid(df: pd.DataFrame, rows: str, cols: str, metric: str) -> pd.DataFrame:
    ok = df[df["status"] == "completed"]
    return ok.pivot_table(index=rows, columns=cols, values=metric, aggfunc="mean")


def is_continuous(df: pd.DataFrame, param: str) -> bool:
    """A TPE / random sweep over a range: (almost) every trial has its own value."""
    values = df.drop_duplicates("run_id")[param]
    return values.nunique() > 8 and values.nunique() >= 0.8 * len(values)
