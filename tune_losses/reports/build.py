"""`tune-losses report SWEEP`: the papers' sensitivity tables rebuilt from what MLflow holds, beside the
published numbers, with figures and significance, written as Markdown / CSV / Parquet / PNG and logged as
artifacts (``report/``) of the sweep's parent run."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tune_losses.tracking.sweeps import sweep_names

from . import plots
from .best import ranked
from .collect import histories, sweep_runs, trial_table
from .html import write_html
from .protocol import chosen_on, count_trials, describe_trials, split_of, statement, table_metrics, trial_outcomes
from .tables import as_percent, grid, grouped, is_continuous, with_paper
from .trial_figures import draw_trial_figures


@dataclass
class Report:
    sweep: str
    directory: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    markdown: str = ""
    trials: pd.DataFrame | None = None
    counts: dict = field(default_factory=dict)  # how the trials ended, from their tags (reports/protocol.py)
    protocol: list[str] = field(default_factory=list)  # which protocol, split sizes, what chose what


def _param_columns(space: dict) -> list[str]:
    cols = []
    for p in space["params"]:
        cols.extend(p.split(","))
    return cols


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


def build_report(sweep: str, tracking_uri: str | None = None, out_dir=None, log: bool = True) -> Report:
    """The sweep's report (by name or parent run id) from MLflow alone, written to ``out_dir``. With ``log`` it
    also goes to the parent run's report/ artifacts, and each trial run gets its figures (trial_figures.py)."""
    client, parent, runs, space = sweep_runs(sweep, tracking_uri)
    name = parent.data.tags.get("tune_losses.sweep", sweep)
    out = Path(out_dir or tempfile.mkdtemp(prefix=f"report-{name}-"))
    out.mkdir(parents=True, exist_ok=True)
    params = _param_columns(space)
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    study, paper_dataset = space.get("study"), space.get("paper_dataset")
    df = trial_table(runs, list(space["params"]), sweep_names(client, runs))
    report = Report(
        name, out, trials=df, counts=count_trials(trial_outcomes(runs)), protocol=statement(space, parent.data.params)
    )
    dataset = space["train"]["dataset"]["name"]
    chooser = chosen_on(space)
    lines = [
        f"# Report of sweep `{name}`",
        "",
        f"{describe_trials(report.counts)}; {df.groupby('run_id').size().max() if len(df) else 0} "
        f"replica(s) per trial; data set `{dataset}`, model `{space['train']['model']['name']}`, loss "
        f"`{space['train']['loss']['name']}`, search metric `{metric}` ({mode}). Source: MLflow parent run "
        f"`{parent.info.run_id}`.",
        "",
        "## Protocol and selection",
        "",
        *report.protocol,
        "",
    ]
    by_sweep = df.drop_duplicates("run_id")["from_sweep"].value_counts()
    if len(by_sweep) > 1:  # warm-started: the earlier sweep's trials are in the tables, marked in from_sweep
        lines += ["Trials by sweep (warm start): " + ", ".join(f"`{k}` {v}" for k, v in by_sweep.items()) + ".", ""]
    if not paper_dataset:
        lines += [
            f"These tables hold data set `{dataset}` with this space's protocol, not the paper's data set, "
            "so the paper's published numbers are not set beside them.",
            "",
        ]
    bad = df.drop_duplicates("run_id")
    bad = bad[bad["status"].isin(["diverged", "error"])]
    if len(bad):
        lines += (
            ["Trials that did not finish:", ""]
            + [f"- `{r.trial}`: {r.status} ({r.reason})" for r in bad.itertuples()]
            + [""]
        )

    def save(key: str, table: pd.DataFrame, title: str, note: str = ""):
        report.tables[key] = table
        table.to_csv(out / f"{key}.csv", index=key.startswith("grid"))
        table.reset_index().to_parquet(out / f"{key}.parquet") if key.startswith("grid") else table.to_parquet(
            out / f"{key}.parquet"
        )
        lines.extend(
            [f"## {title}", ""]
            + ([note, ""] if note else [])
            + [table.to_markdown(index=key.startswith("grid"), floatfmt=".4g"), ""]
        )

    def figure(path: Path):
        report.figures.append(path)
        lines.extend([f"![{path.stem}]({path.name})", ""])

    metrics = table_metrics(space)
    continuous = [p for p in params if is_continuous(df, p)]
    discrete = [p for p in params if p not in continuous]
    for p in discrete:
        subset = df
        others = [q for q in discrete if q != p]
        for q in others:  # a scan of p at the most common value of each other parameter (the papers' way)
            subset = subset[subset[q] == subset[q].mode().iloc[0]]
        fixed = ", ".join(f"{q} = {subset[q].iloc[0]:g}" for q in others) if others and len(subset) else ""
        for m in metrics:
            table = grouped(subset, p, m, mode)
            if table.empty:
                continue
            table, source = with_paper(table, p, study, paper_dataset)
            key = f"{p.split('.')[-1]}_{m}"
            save(
                key,
                as_percent(table),
                f"{m} vs {p}" + (f" at {fixed}" if fixed else ""),
                f"Percent, {m} per value. `is_best`: the best mean in this table (a description of the table, "
                "not a selection); `distinguishable`: the value's replicas differ from that value's (Welch "
                "t-test, Benjamini-Hochberg corrected, alpha 0.05); empty without repeats."
                + (
                    " Trials stopped early by the scheduler (ASHA, halving) count with their values at the epoch "
                    "they stopped (`epochs` in trials_per_replica.csv)."
                    if subset["stopped_early"].any()
                    else ""
                )
                + (f" {source}" if source else ""),
            )
            png = out / f"{key}_box.png"
            plots.boxplot_png(subset[subset["status"] == "completed"], p, m, png, f"{m} per {p}")
            figure(png)
            png = out / f"{key}_errorbar.png"
            plots.errorbar_png(table, p, png, f"{m} vs {p} (mean ± std)", m)
            figure(png)
    if len(discrete) == 2:
        pivot = grid(df, discrete[0], discrete[1], metrics[0])
        save(f"grid_{metrics[0]}", pivot, f"{metrics[0]}: {discrete[0]} x {discrete[1]} (mean)")
        png = out / "grid_heatmap.png"
        plots.heatmap_png(pivot, png, f"{metrics[0]} (mean)")
        figure(png)
    if continuous or len(by_sweep) > 1:  # warm-started: every trial is listed with the sweep it ran in
        trials = df.groupby("run_id", as_index=False).agg(
            {
                **{p: "first" for p in params},
                metric: "mean",
                "trial": "first",
                **({"from_sweep": "first"} if len(by_sweep) > 1 else {}),
            }
        )
        save(
            "trials",
            trials.sort_values(metric, ascending=mode == "min").reset_index(drop=True),
            f"trials by {metric} (mean over replicas)",
        )
    if continuous:
        if len(trials) >= 4:
            try:
                save("importance", importance(trials, continuous, metric, mode), "parameter importance (fANOVA)")
            except (ValueError, RuntimeError) as exc:
                lines += [f"(fANOVA importance unavailable: {exc})", ""]
        png = out / "slice.png"
        plots.slice_png(trials, continuous, metric, png)
        figure(png)
    names = df.drop_duplicates("run_id").set_index("run_id")["trial"]
    chosen = ranked(df, chooser, mode) if chooser else pd.Series(dtype=float)
    if chooser is None:
        lines += ["**Best config: none** (this sweep selects nothing; see Protocol and selection).", ""]
    elif len(chosen):
        rid = chosen.index[0]
        also = f", {metrics[0]} = {df[df['run_id'] == rid][metrics[0]].mean():.4g}" if metrics[0] != chooser else ""
        lines += [
            f"**Best config** (selected on `{chooser}`, {split_of(chooser)} split, mean over replicas): "
            f"`{names[rid]}`, {chooser} = {chosen.iloc[0]:.4g}{also}.",
            "",
        ]
    # the curves of the best and worst configs by the selecting metric, else (nothing selected) by the table's
    by = chooser or metrics[0]
    finished = chosen if chooser else ranked(df, by, mode if by == metric else "max")
    if len(finished):
        ends = [finished.index[0], finished.index[-1]]
        curves = {
            f"{label}: {names[rid]}": h
            for label, rid, h in zip(("best", "worst"), ends, histories(client, ends).values())
        }
        png = out / "learning_curves_best_worst.png"
        key = "val_acc" if any(h["val_acc"].notna().any() for h in curves.values()) else "test_acc"
        lines += [f"Learning curves ({key}) of the best and worst configs by mean `{by}`:", ""]
        plots.curves_compare_png(curves, png, key=key)
        figure(png)
    df.to_csv(out / "trials_per_replica.csv", index=False)
    report.markdown = "\n".join(lines)
    (out / "report.md").write_text(report.markdown)
    write_html(report)  # report.html: the same, self-contained (reports/html.py)
    if log:
        for f in sorted(out.iterdir()):
            client.log_artifact(parent.info.run_id, str(f), "report")
        draw_trial_figures(client, runs)
    return report
