"""The papers' published numbers (a copy of shared/reference ships in the package), per study."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent.parent / "reference"

# study -> (CSV, the swept parameter's column there, {paper data set: [(our column, their column, scale)]})
STUDIES = {
    "dal_a": (
        "dal_table2.csv",
        "a",
        {"LabelMe": [("mean", "mean_percent", 100), ("max", "max_percent", 100), ("min", "min_percent", 100)]},
    ),
    "cc_lambda": (
        "cc_loss_lambda.csv",
        "lambda",
        {d: [("mean", f"{d}_percent", 100), ("std", f"{d}_std", 100)] for d in ("mnist", "cifar100", "cars196")},
    ),
    "cc_batch": (
        "cc_loss_batch.csv",
        "batch_size",
        {d: [("mean", f"{d}_percent", 100), ("std", f"{d}_std", 100)] for d in ("cifar100", "cars196")},
    ),
}


def table(name: str) -> pd.DataFrame:
    return pd.read_csv(HERE / name)


def paper_columns(study: str | None, paper_dataset: str | None):
    """(reference frame keyed by the parameter, [(ours, theirs, scale)]) or None when nothing matches."""
    if study not in STUDIES or not paper_dataset:
        return None
    csv, key, by_dataset = STUDIES[study]
    if paper_dataset not in by_dataset:
        return None
    return table(csv).set_index(key), by_dataset[paper_dataset]
