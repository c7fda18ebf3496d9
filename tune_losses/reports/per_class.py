"""Which classes gain: per-class test recall of the best config against the baseline trained in the same sweep
(mean over replicas, 95% t-interval), and the most confused class pairs of each with the change for each pair.

Trials log every replica's test confusion matrix (``confusion_matrix.json``: (K, C, C); older runs: replica 0's
(C, C)). A pair (i, j) counts errors both ways: true i predicted j plus true j predicted i, as a share of the two
classes' test images, so the pair's confusion does not depend on which of the two is called the truth.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .replication import PERCENT, mean_ci

TOP_PAIRS = 5


def confusions(client, run_ids) -> np.ndarray:
    """The test confusion matrices of the runs' replicas, stacked (N, C, C); runs without one are skipped."""
    stacks = []
    with tempfile.TemporaryDirectory() as tmp:
        for rid in run_ids:
            if "confusion_matrix.json" not in {a.path for a in client.list_artifacts(rid)}:
                continue
            cm = np.asarray(json.loads(Path(client.download_artifacts(rid, "confusion_matrix.json", tmp)).read_text()))
            stacks.append(cm[None] if cm.ndim == 2 else cm)
    return np.concatenate(stacks) if stacks else np.zeros((0, 0, 0))


def recalls(stack: np.ndarray) -> np.ndarray:
    """(N, C) recall of each class in each matrix (rows = true class); NaN for a class with no test image."""
    totals = stack.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diagonal(stack, axis1=1, axis2=2) / totals, np.nan)


def per_class_recall(best: np.ndarray, base: np.ndarray) -> pd.DataFrame:
    """A row per class: recall of the baseline and of the best config (mean, CI over replicas) and the gain. The
    matrices come in seed order (runs by grid sample, then replica), so equal counts are paired by seed."""
    rb, rr = recalls(best) * PERCENT, recalls(base) * PERCENT
    rows = []
    for c in range(rb.shape[1]):
        mean_b, low_b, high_b = np.clip(mean_ci(rb[:, c][~np.isnan(rb[:, c])]), 0, PERCENT)  # a recall's range
        mean_r, low_r, high_r = np.clip(mean_ci(rr[:, c][~np.isnan(rr[:, c])]), 0, PERCENT)
        if len(rb) == len(rr):  # same seeds: the paired difference
            diff = rb[:, c] - rr[:, c]
            gain, gain_low, gain_high = np.clip(
                mean_ci(diff[~np.isnan(diff)]), -PERCENT, PERCENT
            )  # a difference of rates
        else:
            gain, gain_low, gain_high = _welch_ci(rb[:, c], rr[:, c])
        rows.append(
            {
                "class": c,
                "baseline_recall_%": mean_r,
                "baseline_ci_low_%": low_r,
                "baseline_ci_high_%": high_r,
                "best_recall_%": mean_b,
                "best_ci_low_%": low_b,
                "best_ci_high_%": high_b,
                "gain_%": gain,
                "gain_ci_low_%": gain_low,
                "gain_ci_high_%": gain_high,
                "paired_by_seed": len(rb) == len(rr),
            }
        )
    return pd.DataFrame(rows)


def _welch_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Difference of means a - b with Welch's 95% interval (scipy's ttest_ind), NaN bounds when it is undefined."""
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if not len(a) or not len(b):
        return np.nan, np.nan, np.nan
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return float(np.mean(a) - np.mean(b)), np.nan, np.nan
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    return float(np.mean(a) - np.mean(b)), float(ci.low), float(ci.high)


def pair_confusion(stack: np.ndarray) -> np.ndarray:
    """(C, C) symmetric share (percent) of the two classes' images confused with each other, mean over matrices."""
    mean = stack.astype(float).mean(axis=0)
    both = mean + mean.T
    sizes = mean.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return both / (sizes[:, None] + sizes[None, :]) * PERCENT


def confused_pairs(best: np.ndarray, base: np.ndarray, top: int = TOP_PAIRS) -> pd.DataFrame:
    """The most confused pairs under the baseline and under the best config (the union of each's top ``top``),
    with each one's confusion under both and the change (best - baseline)."""
    pb, pr = pair_confusion(best), pair_confusion(base)
    i, j = np.triu_indices(pb.shape[0], k=1)
    frame = pd.DataFrame({"class_a": i, "class_b": j, "baseline_%": pr[i, j], "best_%": pb[i, j]})
    chosen = set(frame.nlargest(top, "baseline_%").index) | set(frame.nlargest(top, "best_%").index)
    out = frame.loc[sorted(chosen)].assign(change_points=lambda f: f["best_%"] - f["baseline_%"])
    return out.sort_values("baseline_%", ascending=False).reset_index(drop=True)
