"""What the papers' tables lack: is a value distinguishable from the best, over the repeats?

Welch's t-test of each value's replicas against the best value's, with the Benjamini-Hochberg correction for
the number of comparisons (scipy.stats.false_discovery_control), at level alpha."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats


def versus_best(groups: dict, mode: str = "max", alpha: float = 0.05) -> pd.DataFrame:
    """groups: value -> sample of the metric over repeats. Returns p (corrected) and `distinguishable` per value."""
    means = {k: float(np.mean(v)) for k, v in groups.items()}
    best = max(means, key=lambda k: means[k]) if mode == "max" else min(means, key=lambda k: means[k])
    rows, pvals = [], []
    for key, sample in groups.items():
        sample, ref = np.asarray(sample, float), np.asarray(groups[best], float)
        if key == best or len(sample) < 2 or len(ref) < 2:
            p = np.nan
        else:
            with warnings.catch_warnings():  # nearly identical samples: scipy warns, the p-value is still usable
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(stats.ttest_ind(sample, ref, equal_var=False).pvalue)
            if np.isnan(p):  # both samples constant
                p = 1.0 if np.mean(sample) == np.mean(ref) else 0.0
        rows.append(key)
        pvals.append(p)
    p_values = np.asarray(pvals, float)
    tested = ~np.isnan(p_values)
    corrected = np.full_like(p_values, np.nan)
    if tested.any():
        corrected[tested] = stats.false_discovery_control(p_values[tested])
    return pd.DataFrame(
        {
            "value": rows,
            "is_best": [r == best for r in rows],
            "p_vs_best": corrected,
            "distinguishable": [bool(q < alpha) if not np.isnan(q) else None for q in corrected],
        }
    )
