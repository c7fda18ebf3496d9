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


# study -> {our data set name: the paper's data set column}: the paper's own data sets that run here (mnist_5k is
# a 5000-image MNIST subset), so that a sweep started with --dataset (which drops paper_dataset) still compares
PAPER_DATASETS = {
    "cc_lambda": {"mnist": "mnist", "mnist_5k": "mnist", "cifar100": "cifar100", "stanford_cars": "cars196"},
    "cc_batch": {"cifar100": "cifar100", "stanford_cars": "cars196"},
    "beta_gamma": {"cifar10": "CIFAR-10", "fashion_mnist": "Fashion-MNIST"},
}
# the data set whose column a transfer (a sweep on another data set) is compared with: the paper's main one
MAIN_DATASET = {"dal_a": "LabelMe", "cc_lambda": "mnist", "cc_batch": "cifar100", "beta_gamma": "CIFAR-10"}
# the values a paper chose where its text gives no number per value (beta/gamma, sections 4.1-4.4)
PAPER_BEST = {"beta_gamma": {"CIFAR-10": {"beta": 4.0, "gamma": 5.0}, "Fashion-MNIST": {"beta": 4.0, "gamma": 10.0}}}


def paper_dataset_for(study: str | None, dataset: str, paper_dataset: str | None) -> tuple[str | None, bool]:
    """(the paper's data set to compare with, whether the sweep ran on it): the space's paper_dataset, else the
    column for this data set, else the paper's main data set (a transfer)."""
    if study is None:
        return None, False
    if paper_dataset:
        return paper_dataset, True
    own = PAPER_DATASETS.get(study, {}).get(dataset)
    return (own, True) if own else (MAIN_DATASET.get(study), False)


def paper_curve(study: str | None, column: str | None) -> pd.Series | None:
    """The paper's mean per value of the swept parameter (percent) for that data set column, or None."""
    found = paper_columns(study, column)
    if found is None:
        return None
    frame, columns = found
    ours_mean = [theirs for ours, theirs, _ in columns if ours == "mean"]
    return frame[ours_mean[0]].set_axis(frame.index.astype(float)) if ours_mean else None
