"""Does the paper's finding hold here? Per value, ours (mean and 95% CI over replicas) beside the paper's, the rank
agreement of the curve (Kendall's tau, bootstrap CI over replicas), whether the paper's best value is our best or
indistinguishable from it (stats.versus_best), the parameter's effect size (best minus worst) beside the paper's,
and each value's gain over a baseline trained in the same sweep, paired by seed.

Everything is in percent points of the metric. The bootstrap resamples each value's replicas independently
(scipy.stats.bootstrap, percentile intervals, seeded), so its interval says how much the seeds move the statistic.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from . import reference
from .stats import versus_best

LEVEL = 0.95
RESAMPLES = 999
SEED = 0
PERCENT = 100.0
# best_verdict's answers, and the parent's metric replication.paper_best_is_best_or_tied for each (NaN: untested)
OUR_BEST = "the paper's best is our best"
INDISTINGUISHABLE = "not our best, but indistinguishable from it (Welch, BH-corrected)"
WORSE = "not our best, and worse (Welch, BH-corrected)"
TIED = {OUR_BEST: 1.0, INDISTINGUISHABLE: 1.0, WORSE: 0.0}


@dataclass
class Verdict:
    """One parameter's replication: the per-value table, and the summary statistics (also the parent's metrics)."""

    param: str
    label: str  # "on the paper's data set" or "trend on X, not the paper's Y: ..."
    values: pd.DataFrame
    summary: dict


def mean_ci(sample) -> tuple[float, float, float]:
    """Mean and the t-interval of the mean at LEVEL (NaN bounds with fewer than 2 values; the mean itself when
    the sample is constant)."""
    x = np.asarray(sample, float)
    mean = float(x.mean()) if len(x) else np.nan
    if len(x) < 2:
        return mean, np.nan, np.nan
    if np.ptp(x) == 0:
        return mean, mean, mean
    low, high = stats.t.interval(LEVEL, len(x) - 1, loc=mean, scale=stats.sem(x))
    return mean, float(low), float(high)


def _bootstrap(samples: list[np.ndarray], statistic) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(*samples)``, each sample resampled on its own."""
    if any(len(s) < 2 for s in samples) or all(np.ptp(s) == 0 for s in samples):
        return np.nan, np.nan
    with warnings.catch_warnings():  # a degenerate resample (ties everywhere) gives NaN taus: scipy warns
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            tuple(samples),
            statistic,
            vectorized=False,
            paired=False,
            n_resamples=RESAMPLES,
            confidence_level=LEVEL,
            method="percentile",
            rng=np.random.default_rng(SEED),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def kendall(samples: list[np.ndarray], paper: np.ndarray) -> tuple[float, float, float]:
    """Kendall's tau between our means per value and the paper's, with its bootstrap interval over replicas."""
    if len(paper) < 2:
        return np.nan, np.nan, np.nan
    tau = float(stats.kendalltau([s.mean() for s in samples], paper).statistic)
    low, high = _bootstrap(samples, lambda *xs: stats.kendalltau([x.mean() for x in xs], paper).statistic)
    return tau, low, high


def effect_size(samples: list[np.ndarray]) -> tuple[float, float, float]:
    """Best minus worst mean over the values, with its bootstrap interval over replicas."""

    def spread(*xs):
        means = [x.mean() for x in xs]
        return max(means) - min(means)

    return float(spread(*samples)), *_bootstrap(samples, spread)


def paired_gain(df: pd.DataFrame, baseline: pd.DataFrame, param: str, metric: str) -> pd.DataFrame:
    """Per value: our metric minus the baseline's on the same seeds (pairs by grid sample and replica), as mean
    and t-interval in percent points, and the number of pairs."""
    base = baseline.set_index(["sample", "replica"])[metric]
    rows = []
    for value, group in df.groupby(param):
        pairs = group.set_index(["sample", "replica"])[metric].sub(base).dropna() * PERCENT
        mean, low, high = mean_ci(pairs.to_numpy())
        rows.append(
            {param: value, "gain_%": mean, "gain_ci_low_%": low, "gain_ci_high_%": high, "gain_pairs": len(pairs)}
        )
    return pd.DataFrame(rows)


def label(dataset: str, paper: str | None, on_paper: bool) -> str:
    if on_paper:
        return f"on the paper's data set ({paper}; ours: `{dataset}`)"
    return f"trend on `{dataset}`, not the paper's {paper}: a test of whether the finding transfers"


def per_value(samples: dict, paper: pd.Series | None, stopped: dict, param: str, on_paper: bool = True) -> pd.DataFrame:
    """A row per value: n, our mean and CI (percent, within 0-100), the paper's number, the difference, whether
    the paper's number lies in our interval (both only ``on_paper``: across data sets only the curve's shape
    compares), and whether a scheduler stopped any of its trials early."""
    rows = []
    for value, sample in samples.items():
        mean, low, high = mean_ci(sample * PERCENT)
        low, high = max(low, 0.0), min(high, 100.0)  # a t-interval of 2 replicas can pass what a rate can be
        theirs = float(paper.get(float(value), np.nan)) if paper is not None else np.nan
        compared = theirs if on_paper else np.nan
        rows.append(
            {
                param: value,
                "n": len(sample),
                "ours_%": mean,
                "ci_low_%": low,
                "ci_high_%": high,
                "paper_%": theirs,
                "diff_%": mean - compared,
                "paper_in_ci": None if np.isnan(compared) or np.isnan(low) else bool(low <= compared <= high),
                "stopped_early": bool(stopped.get(value, False)),
            }
        )
    return pd.DataFrame(rows)


def best_verdict(samples: dict, paper_best, mode: str) -> tuple[str, object]:
    """Whether the paper's best value is our best, indistinguishable from it (Welch, BH), or worse; and ours."""
    tested = versus_best(samples, mode)
    ours = tested.loc[tested["is_best"], "value"].iloc[0]
    if paper_best is None or float(paper_best) not in {float(v) for v in samples}:
        return "the paper's best value was not run here", ours
    row = tested[tested["value"].astype(float) == float(paper_best)].iloc[0]
    if row["is_best"]:
        return OUR_BEST, ours
    if row["distinguishable"] is None:
        return "not our best; untested (no repeats)", ours
    return (WORSE if row["distinguishable"] else INDISTINGUISHABLE), ours


def replicate(df: pd.DataFrame, param: str, metric: str, mode: str, study, dataset: str, paper_dataset) -> Verdict:
    """The replication of one swept parameter from its per-replica rows (finished trials, baseline excluded)."""
    paper_name, on_paper = reference.paper_dataset_for(study, dataset, paper_dataset)
    paper = reference.paper_curve(study, paper_name)
    ok = df[df["status"] == "completed"].dropna(subset=[param, metric])
    samples = {v: g[metric].to_numpy(float) for v, g in ok.groupby(param)}
    stopped = ok.groupby(param)["stopped_early"].any().to_dict()
    table = per_value(samples, paper, stopped, param, on_paper)
    short = param.split(".")[-1]
    known = table.dropna(subset=["paper_%"])
    paired = [samples[v] * PERCENT for v in known[param]]
    tau, tau_low, tau_high = kendall(paired, known["paper_%"].to_numpy()) if len(known) else (np.nan,) * 3
    effect, eff_low, eff_high = effect_size([s * PERCENT for s in samples.values()])
    chosen = reference.PAPER_BEST.get(study or "", {}).get(paper_name or "", {}).get(short)
    paper_best = known[param].iloc[int(known["paper_%"].to_numpy().argmax())] if len(known) else chosen
    verdict, ours_best = best_verdict(samples, paper_best, mode)
    summary = {
        "kendall_tau": tau,
        "kendall_tau_ci_low": tau_low,
        "kendall_tau_ci_high": tau_high,
        "effect_size_%": effect,
        "effect_size_ci_low_%": eff_low,
        "effect_size_ci_high_%": eff_high,
        "paper_effect_size_%": float(np.ptp(known["paper_%"])) if len(known) > 1 else np.nan,
        "paper_best": paper_best,
        "our_best": ours_best,
        "best_verdict": verdict,
        "paper_best_is_best_or_tied": TIED.get(verdict, np.nan),
    }
    return Verdict(param, label(dataset, paper_name, on_paper), table, summary)
