"""The report's verdict sections: the table at a common epoch (fidelity), the replication of the paper's finding,
and the per-class diagnostics against the baseline (reports/build.py calls them after sections.py's)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import plots
from .fidelity import at_common_epoch
from .per_class import confused_pairs, confusions, per_class_recall
from .protocol import table_metrics
from .replication import Verdict, paired_gain, replicate
from .sections import discrete_params, scan, sensitivity_table

SUMMARY_KEYS = (
    "kendall_tau",
    "kendall_tau_ci_low",
    "kendall_tau_ci_high",
    "effect_size_%",
    "effect_size_ci_low_%",
    "effect_size_ci_high_%",
    "paper_effect_size_%",
    "paper_best_is_best_or_tied",
)


def common_epoch(data, report) -> None:
    """When a scheduler stopped trials early: each scan again at the last epoch every trial reached."""
    metric, mode = table_metrics(data.space)[0], data.space["search"]["mode"]
    discrete = discrete_params(data)
    for p in discrete:
        subset, fixed = scan(data.df, p, discrete)
        found = at_common_epoch(data.client, subset, metric)
        if found is None:
            continue
        rows, epoch = found
        at = f"epoch {epoch}, the last every trial of this scan reached" + (f"; {fixed}" if fixed else "")
        sensitivity_table(report, rows, p, metric, mode, at, data.space, key_prefix="common_epoch_")
        report.tables[f"common_epoch_{p.split('.')[-1]}_{metric}"].attrs["epoch"] = epoch


def _rows_for_replication(data, subset: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, str]:
    """The rows the verdict compares: at the common epoch when a scheduler stopped trials (like with like)."""
    found = at_common_epoch(data.client, subset, metric)
    if found is None:
        return subset, ""
    return found[0], f" Trials were stopped early, so ours are at epoch {found[1]}, the last every trial reached."


def _csv_rows(verdict: Verdict) -> pd.DataFrame:
    values = verdict.values.rename(columns={verdict.param: "value"}).assign(row="value")
    summary = pd.DataFrame([{"row": k, "value": v} for k, v in verdict.summary.items()])
    table = pd.concat([values, summary], ignore_index=True).assign(parameter=verdict.param, label=verdict.label)
    return table[["parameter", "row", "value", *[c for c in table if c not in ("parameter", "row", "value")]]]


def replication(data, report) -> None:
    """Per swept parameter of a paper study: ours beside the paper's, rank agreement, best value, effect size, and
    the gain over the baseline paired by seed; replication.csv and the parent's replication.* metrics / tags."""
    study = data.space.get("study")
    if not study:
        return
    metric, mode = table_metrics(data.space)[0], data.space["search"]["mode"]
    dataset, discrete = data.space["train"]["dataset"]["name"], discrete_params(data)
    frames = []
    for p in discrete:
        subset, fixed = scan(data.df, p, discrete)
        rows, note = _rows_for_replication(data, subset, metric)
        verdict = replicate(rows, p, metric, mode, study, dataset, data.space.get("paper_dataset"))
        if len(data.baseline):
            verdict.values = verdict.values.merge(paired_gain(rows, data.baseline, p, metric), on=p, how="left")
        frames.append(_csv_rows(verdict))
        _render_verdict(
            report, verdict, metric, fixed, note, str(data.baseline["baseline"].iloc[0]) if len(data.baseline) else ""
        )
        prefix = "replication." if len(discrete) == 1 else f"replication.{p.split('.')[-1]}."
        report.metrics.update({prefix + k.replace("_%", "_pct"): verdict.summary[k] for k in SUMMARY_KEYS})
        report.tags.update({prefix + "best_verdict": verdict.summary["best_verdict"], prefix + "label": verdict.label})
    if frames:
        table = pd.concat(frames, ignore_index=True)
        table.to_csv(report.directory / "replication.csv", index=False)
        report.tables["replication"] = table


def _render_verdict(report, verdict: Verdict, metric: str, fixed: str, note: str, baseline: str) -> None:
    s = verdict.summary
    ci = lambda lo, hi: f"[{lo:.3g}, {hi:.3g}]" if np.isfinite(lo) else "(no interval: fewer than 2 replicas)"  # noqa: E731
    report.lines += [
        f"## Replication: {metric} vs {verdict.param}" + (f" at {fixed}" if fixed else ""),
        "",
        f"**{verdict.label[0].upper() + verdict.label[1:]}.** Percent; ours: mean and 95% t-interval over replicas; "
        "`paper_in_ci`: the paper's number lies in our interval; `stopped_early`: a scheduler stopped a trial of "
        "this value."
        + (f" `gain_*`: minus the `{baseline}` baseline on the same seeds (paired)." if baseline else "")
        + note,
        "",
        verdict.values.to_markdown(index=False, floatfmt=".4g"),
        "",
        _rank_line(verdict, ci),
        f"- Best value: paper {s['paper_best']}, ours {s['our_best']}: {s['best_verdict']}.",
        f"- Effect size (best minus worst mean): ours {s['effect_size_%']:.3g} points, 95% CI "
        f"{ci(s['effect_size_ci_low_%'], s['effect_size_ci_high_%'])}; the paper's "
        + (f"{s['paper_effect_size_%']:.3g}." if np.isfinite(s["paper_effect_size_%"]) else "not given per value."),
        "",
    ]


def _rank_line(verdict: Verdict, ci) -> str:
    """Kendall's tau with its interval; or why there is none (no number per value in the paper for this data set:
    the beta/gamma paper names its Fashion-MNIST choice only)."""
    s = verdict.summary
    if not np.isfinite(s["kendall_tau"]) and verdict.values["paper_%"].isna().all():
        return "- Rank agreement with the paper's curve: none to compare (the paper gives no number per value here)."
    return (
        f"- Rank agreement with the paper's curve: Kendall's tau = {s['kendall_tau']:.3g}, bootstrap 95% CI "
        f"{ci(s['kendall_tau_ci_low'], s['kendall_tau_ci_high'])}."
    )


def _config_runs(df: pd.DataFrame, params: list[str], metric: str, mode: str) -> tuple[list[str], list[str], str]:
    """The run ids of the best and the worst config by mean ``metric`` (each config's runs in seed order: by
    grid sample), and the best config in words."""
    ok = df[df["status"] == "completed"].dropna(subset=[metric])
    means = ok.groupby(params)[metric].mean().sort_values(ascending=mode == "min")
    key = lambda values: values if isinstance(values, tuple) else (values,)  # noqa: E731

    def runs(values) -> list[str]:
        match = np.logical_and.reduce([ok[p] == v for p, v in zip(params, key(values))])
        return list(ok[match].drop_duplicates("run_id").sort_values("sample")["run_id"])

    best = means.index[0]
    words = ", ".join(f"{p} = {v:g}" for p, v in zip(params, key(best)))
    return runs(best), runs(means.index[-1]), words


def per_class(data, report) -> None:
    """Per-class test recall of the best config against the baseline (or, without one, the worst config), the
    most confused class pairs of each and the change; per_class.csv, confused_pairs.csv and a gain figure."""
    metric, mode = table_metrics(data.space)[0], data.space["search"]["mode"]
    if not len(data.df.dropna(subset=[metric])) or not data.params:
        return
    best_runs, worst_runs, words = _config_runs(data.df, data.params, metric, mode)
    if len(data.baseline):
        base_runs = list(data.baseline.drop_duplicates("run_id").sort_values("sample")["run_id"])
        against = f"the `{data.baseline['baseline'].iloc[0]}` baseline (same seeds)"
    else:
        base_runs, against = worst_runs, "the worst config (no baseline in this sweep: add `baseline: ce`)"
    best, base = confusions(data.client, best_runs), confusions(data.client, base_runs)
    if not len(best) or not len(base) or best.shape[1:] != base.shape[1:]:
        return
    recall = per_class_recall(best, base)
    pairs = confused_pairs(best, base)
    note = (
        f"Best config by mean `{metric}`: {words}, against {against}. Test recall in percent, mean and 95% "
        f"t-interval over replicas ({len(best)} vs {len(base)}); `gain_%`: best minus reference"
        + (", paired by seed." if recall["paired_by_seed"].all() else " (Welch interval: replica counts differ).")
    )
    report.save("per_class", recall, "Per-class recall against " + against.split(" (")[0], note)
    report.save(
        "confused_pairs",
        pairs,
        "Most confused class pairs",
        "Share (percent) of the two classes' test images predicted as the other, both ways, mean over replicas; "
        "the union of the reference's and the best config's five most confused pairs; `change_points`: best minus "
        "reference.",
    )
    plots.class_gain_png(
        recall,
        report.directory / "per_class_gain.png",
        f"recall gain of {words} over {against.split(' (')[0]}".replace("`", ""),
    )
    report.figure(report.directory / "per_class_gain.png")
