"""The data set registry: ``build_dataset(name, root=..., download=False, seed=0, ...)`` -> Splits."""

from __future__ import annotations

from tune_losses.registry import Registry

DATASETS = Registry("dataset")
register, names = DATASETS.register, DATASETS.names


def build_dataset(name: str, root=None, download: bool = False, seed: int = 0, **options):
    splits = DATASETS.get(name)(root=root, download=download, seed=seed, **options)
    splits.info.setdefault("dataset", name)
    return splits
