"""The report's sections, each rendered into a ``build.Report`` from a ``build.Sweep`` (reports/build.py)."""

from __future__ import annotations

import pandas as pd

from . import plots
from .best import ranked
from .collect import histories
from .protocol import chosen_on, describe_trials, split_of, table_metrics
from .tables import as_percent, grid, grouped, is_continuous, with_paper

STOPPED_NOTE = (
    " Trials stopped early by the scheduler (ASHA, halving) count with their values at the epoch they stopped "
    "(`epochs` in trials_per_replica.csv; `stopped_early` marks the values that hold one); the same scan at the "
    "last epoch every trial reached follows below, so that like is compared with like."
)


def header(data, report) -> None:
    """Title, what ran, the protocol, warm-start sources, the paper-comparability note and unfinished trials."""
    df, space, dataset = data.df, data.space, data.space["train"]["dataset"]["name"]
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    replicas = df.groupby("run_id").size().max() if len(df) else 0
    report.lines += [
        f"# Report of sweep `{report.sweep}`",
        "",
        f"{describe_trials(report.counts)}; {replicas} replica(s) per trial; data set `{dataset}`, model "
        f"`{space['train']['model']['name']}`, loss `{space['train']['loss']['name']}`, search metric `{metric}` "
        f"({mode}). Source: MLflow parent run `{data.parent.info.run_id}`.",
        "",
        "## Protocol and selection",
        "",
        *report.protocol,
        "",
    ]
    if len(data.baseline):
        report.lines += [
            f"Baseline: `{data.baseline['baseline'].iloc[0]}`, trained in this sweep with the same "
            "seeds, data and schedule (its own section: Replication).",
            "",
        ]
    by_sweep = df.drop_duplicates("run_id")["from_sweep"].value_counts()
    if len(by_sweep) > 1:  # warm-started: the earlier sweep's trials are in the tables, marked in from_sweep
        report.lines += [
            "Trials by sweep (warm start): " + ", ".join(f"`{k}` {v}" for k, v in by_sweep.items()) + ".",
            "",
        ]
    if not space.get("paper_dataset"):
        report.lines += [
            f"These tables hold data set `{dataset}` with this space's protocol, not the data set of the paper's "
            "table (the space sets no `paper_dataset`), so its published numbers are not set beside them (see "
            "Replication for what the paper says about this data set, or the trend).",
            "",
        ]
    bad = pd.concat([df, data.baseline]).drop_duplicates("run_id")
    bad = bad[bad["status"].isin(["diverged", "error"])]
    if len(bad):
        report.lines += (
            ["Trials that did not finish:", ""]
            + [f"- `{r.trial}`: {r.status} ({r.reason})" for r in bad.itertuples()]
            + [""]
        )


def scan(df: pd.DataFrame, param: str, discrete: list[str]) -> tuple[pd.DataFrame, str]:
    """The rows of a scan of ``param`` at the most common value of each other discrete parameter (the papers'
    way), and that setting in words."""
    subset, others = df, [q for q in discrete if q != param]
    for q in others:
        subset = subset[subset[q] == subset[q].mode().iloc[0]]
    fixed = ", ".join(f"{q} = {subset[q].iloc[0]:g}" for q in others) if others and len(subset) else ""
    return subset, fixed


def discrete_params(data) -> list[str]:
    return [p for p in data.params if not is_continuous(data.df, p)]


def sensitivity_table(report, subset, param, metric, mode, fixed, space, key_prefix="") -> pd.DataFrame | None:
    """One sensitivity table (and its box / error-bar figures) of ``metric`` per value of ``param``."""
    table = grouped(subset, param, metric, mode)
    if table.empty:
        return None
    table, source = with_paper(table, param, space.get("study"), space.get("paper_dataset"))
    stopped = subset.groupby(param)["stopped_early"].any()
    table["stopped_early"] = table[param].map(stopped).fillna(False).astype(bool)
    key = f"{key_prefix}{param.split('.')[-1]}_{metric}"
    note = (
        f"Percent, {metric} per value. `is_best`: the best mean in this table (a description of the table, not a "
        "selection); `distinguishable`: the value's replicas differ from that value's (Welch t-test, "
        "Benjamini-Hochberg corrected, alpha 0.05); empty without repeats."
    )
    note += (STOPPED_NOTE if subset["stopped_early"].any() and not key_prefix else "") + (
        f" {source}" if source else ""
    )
    title = f"{metric} vs {param}" + (f" at {fixed}" if fixed else "")
    report.save(key, as_percent(table), title, note)
    return table


def sensitivity(data, report) -> None:
    """The papers' tables: a scan per discrete parameter and table metric, with figures; a 2-D grid heatmap."""
    discrete, mode = discrete_params(data), data.space["search"]["mode"]
    metrics = table_metrics(data.space)
    out = report.directory
    for p in discrete:
        subset, fixed = scan(data.df, p, discrete)
        for m in metrics:
            table = sensitivity_table(report, subset, p, m, mode, fixed, data.space)
            if table is None:
                continue
            key = f"{p.split('.')[-1]}_{m}"
            plots.boxplot_png(subset[subset["status"] == "completed"], p, m, out / f"{key}_box.png", f"{m} per {p}")
            report.figure(out / f"{key}_box.png")
            plots.errorbar_png(table, p, out / f"{key}_errorbar.png", f"{m} vs {p} (mean ± std)", m)
            report.figure(out / f"{key}_errorbar.png")
    if len(discrete) == 2:
        pivot = grid(data.df, discrete[0], discrete[1], metrics[0])
        report.save(f"grid_{metrics[0]}", pivot, f"{metrics[0]}: {discrete[0]} x {discrete[1]} (mean)")
        plots.heatmap_png(pivot, out / "grid_heatmap.png", f"{metrics[0]} (mean)")
        report.figure(out / "grid_heatmap.png")


def importance(df: pd.DataFrame, params: list[str], metric: str, mode: str) -> pd.DataFrame:
    """Optuna's fANOVA importance of each parameter, from the finished trials as an Optuna study."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    trials = df.drop_duplicates("run_id").dropna(subset=[metric])
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        p: FloatDistribution(float(trials[p].min()), float(trials[p].max()) + 1e-9) for p in params
    }
    for _, row in trials.iterrows():
        study.add_trial(
            optuna.trial.create_trial(
                params={p: float(row[p]) for p in params}, distributions=dists, value=float(row[metric])
            )
        )
    scores = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return pd.DataFrame({"parameter": list(scores), "fanova_importance": list(scores.values())})


def continuous(data, report) -> None:
    """Continuous (TPE / random) sweeps and warm-started ones: every trial listed; fANOVA and a slice plot."""
    df, params = data.df, data.params
    metric, mode = data.space["search"]["metric"], data.space["search"]["mode"]
    ranges = [p for p in params if is_continuous(df, p)]
    by_sweep = df.drop_duplicates("run_id")["from_sweep"].value_counts()
    if not ranges and len(by_sweep) <= 1:
        return
    agg = {**{p: "first" for p in params}, metric: "mean", "trial": "first"}
    trials = df.groupby("run_id", as_index=False).agg({**agg, **({"from_sweep": "first"} if len(by_sweep) > 1 else {})})
    trials = trials.sort_values(metric, ascending=mode == "min").reset_index(drop=True)
    report.save("trials", trials, f"trials by {metric} (mean over replicas)")
    if not ranges:
        return
    if len(trials) >= 4:
        try:
            report.save("importance", importance(trials, ranges, metric, mode), "parameter importance (fANOVA)")
        except (ValueError, RuntimeError) as exc:
            report.lines += [f"(fANOVA importance unavailable: {exc})", ""]
    plots.slice_png(trials, ranges, metric, report.directory / "slice.png")
    report.figure(report.directory / "slice.png")


def best_and_curves(data, report) -> None:
    """The selected config (if the protocol selects), and the learning curves of the best and worst configs."""
    df, space = data.df, data.space
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    chooser, first = chosen_on(space), table_metrics(space)[0]
    names = df.drop_duplicates("run_id").set_index("run_id")["trial"]
    chosen = ranked(df, chooser, mode) if chooser else pd.Series(dtype=float)
    if chooser is None:
        report.lines += ["**Best config: none** (this sweep selects nothing; see Protocol and selection).", ""]
    elif len(chosen):
        rid = chosen.index[0]
        also = f", {first} = {df[df['run_id'] == rid][first].mean():.4g}" if first != chooser else ""
        report.lines += [
            f"**Best config** (selected on `{chooser}`, {split_of(chooser)} split, mean over replicas): "
            f"`{names[rid]}`, {chooser} = {chosen.iloc[0]:.4g}{also}.",
            "",
        ]
    by = chooser or first  # the curves by the selecting metric, else (nothing selected) by the table's
    finished = chosen if chooser else ranked(df, by, mode if by == metric else "max")
    if not len(finished):
        return
    ends = [finished.index[0], finished.index[-1]]
    found = histories(data.client, ends).values()
    curves = {f"{label}: {names[rid]}": h for label, rid, h in zip(("best", "worst"), ends, found)}
    key = "val_acc" if any(h["val_acc"].notna().any() for h in curves.values()) else "test_acc"
    report.lines += [f"Learning curves ({key}) of the best and worst configs by mean `{by}`:", ""]
    plots.curves_compare_png(curves, report.directory / "learning_curves_best_worst.png", key=key)
    report.figure(report.directory / "learning_curves_best_worst.png")
