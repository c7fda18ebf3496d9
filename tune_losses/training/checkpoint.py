"""Per-epoch checkpoints: replicas (models, optimizers, loss state such as DAL's soft labels, shuffling RNGs),
the global RNG state, the epoch and the metric history. Written atomically, loaded with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path

import torch

FILENAME = "state.pt"


def save_checkpoint(state: dict, directory) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILENAME
    tmp = directory / (FILENAME + ".part")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory) -> dict:
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise ValueError(f"checkpoint={str(directory)!r} is not allowed: no {FILENAME} in that directory")
    return torch.load(path, map_location="cpu", weights_only=True)
