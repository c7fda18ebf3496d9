"""The data set registry: ``build_dataset(name, root=..., download=False, seed=0, ...)`` -> Splits."""

from __future__ import annotations

_DATASETS: dict[str, object] = {}


def register(name: str):
    def wrap(loader):
        _DATASETS[name] = loader
        return loader

    return wrap


def names() -> list[str]:
    return sorted(_DATASETS)


def build_dataset(name: str, root=None, download: bool = False, seed: int = 0, **options):
    if name not in _DATASETS:
        raise ValueError(f"dataset={name!r} is not allowed: dataset must be one of {names()}")
    splits = _DATASETS[name](root=root, download=download, seed=seed, **options)
    splits.info.setdefault("dataset", name)
    return splits
