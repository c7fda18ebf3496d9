"""`tune-losses report SWEEP`: the papers' sensitivity tables rebuilt from what MLflow holds, beside the
published numbers, with figures and significance, a replication verdict and per-class diagnostics, written as
Markdown / CSV / Parquet / PNG and logged as artifacts (``report/``) of the sweep's parent run.

``build_report`` reads (``compute``), renders each section (``sections.py``), writes the files (``write``) and
publishes them on the parent run (``publish``)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune_losses.tracking.sweeps import sweep_names

from . import sections, verdict
from .collect import sweep_runs, trial_table
from .html import write_html
from .protocol import count_trials, statement, trial_outcomes
from .sections import importance  # noqa: F401  (its home was here: tests and users import it from build)
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
    metrics: dict[str, float] = field(default_factory=dict)  # logged on the parent run (replication.*)
    tags: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)  # the Markdown, section by section

    def save(self, key: str, table: pd.DataFrame, title: str, note: str = "") -> None:
        """A table: CSV and Parquet in the report's directory, and a section of the Markdown."""
        indexed = key.startswith("grid")
        self.tables[key] = table
        table.to_csv(self.directory / f"{key}.csv", index=indexed)
        flat = table.reset_index() if indexed else table
        # a grid's columns are the second parameter's values: Parquet wants every column name a string
        flat.set_axis([str(c) for c in flat.columns], axis=1).to_parquet(self.directory / f"{key}.parquet")
        self.lines.extend(
            [f"## {title}", ""] + ([note, ""] if note else []) + [table.to_markdown(index=indexed, floatfmt=".4g"), ""]
        )

    def figure(self, path: Path) -> None:
        self.figures.append(path)
        self.lines.extend([f"![{path.stem}]({path.name})", ""])


@dataclass
class Sweep:
    """What a report is made from, read from MLflow alone."""

    client: Any  # mlflow.MlflowClient
    parent: Any  # the sweep's parent mlflow Run
    runs: list
    space: dict
    df: pd.DataFrame  # a row per trial and replica, baseline trials excluded
    baseline: pd.DataFrame  # the baseline trials' rows (empty without `baseline:` in the space)

    @property
    def params(self) -> list[str]:
        return [part for p in self.space["params"] for part in p.split(",")]


def compute(sweep: str, tracking_uri: str | None = None) -> Sweep:
    """Read the sweep back from MLflow: its runs, its resolved space and the per-replica table."""
    client, parent, runs, space = sweep_runs(sweep, tracking_uri)
    df = trial_table(client, runs, list(space["params"]), sweep_names(client, runs))
    is_base = df["baseline"].astype(bool) if len(df) else pd.Series(dtype=bool)
    return Sweep(client, parent, runs, space, df[~is_base].reset_index(drop=True), df[is_base].reset_index(drop=True))


def render(data: Sweep, report: Report) -> None:
    """Every section of the report, in order, into ``report.lines`` (and its tables and figures)."""
    sections.header(data, report)
    sections.sensitivity(data, report)
    sections.continuous(data, report)
    sections.best_and_curves(data, report)
    verdict.common_epoch(data, report)
    verdict.replication(data, report)
    verdict.per_class(data, report)


def write(data: Sweep, report: Report) -> None:
    """report.md, report.html and the per-replica table in the report's directory."""
    pd.concat([data.df, data.baseline]).to_csv(report.directory / "trials_per_replica.csv", index=False)
    report.markdown = "\n".join(report.lines)
    (report.directory / "report.md").write_text(report.markdown)
    write_html(report)  # report.html: the same, self-contained (reports/html.py)


def publish(data: Sweep, report: Report) -> None:
    """The report's files as the parent run's report/ artifacts, its verdict as the parent's metrics and tags
    (comparable across sweeps in the MLflow UI), and each trial run's own figures."""
    rid = data.parent.info.run_id
    for f in sorted(report.directory.iterdir()):
        data.client.log_artifact(rid, str(f), "report")
    for key, value in report.metrics.items():
        if value is not None and np.isfinite(value):
            data.client.log_metric(rid, key, float(value))
    for key, tag in report.tags.items():
        data.client.set_tag(rid, key, tag)
    draw_trial_figures(data.client, data.runs)


def build_report(sweep: str, tracking_uri: str | None = None, out_dir=None, log: bool = True) -> Report:
    """The sweep's report (by name or parent run id) from MLflow alone, written to ``out_dir``. With ``log`` it
    also goes to the parent run's report/ artifacts and metrics, and each trial run gets its figures."""
    data = compute(sweep, tracking_uri)
    name = data.parent.data.tags.get("tune_losses.sweep", sweep)
    out = Path(out_dir or tempfile.mkdtemp(prefix=f"report-{name}-"))
    out.mkdir(parents=True, exist_ok=True)
    report = Report(
        name,
        out,
        trials=data.df,
        counts=count_trials(trial_outcomes(data.runs)),
        protocol=statement(data.space, data.parent.data.params),
    )
    render(data, report)
    write(data, report)
    if log:
        publish(data, report)
    return report
