"""Per-epoch checkpoints: replicas (models, optimizers, loss state such as DAL's soft labels, each replica's
shuffling generator and its own random stream, CPU and CUDA), the global RNG states (CPU; CUDA when training on
a GPU), the epoch and, under the row-space reduction, the basis-independent form of the first layer
(rowspace.py); and the group it holds (``members``: each config's loss, its parameters, seed and repeats, so that a
fused group's checkpoint restores only that group, every member exactly) with the members that had stopped
(``stopped``: the result of each that diverged). group.py builds and restores them; checkpoints written before
groups have neither and restore as before. Written atomically, loaded with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import torch

from tune_losses.atomic import replacing

FILENAME = "state.pt"


def save_checkpoint(state: dict, directory) -> Path:
    path = Path(directory) / FILENAME
    with replacing(path, durable=True) as staged:  # a crash leaves the old checkpoint or the new, on disk
        torch.save(state, staged)
    return path


def load_checkpoint(directory) -> dict:
    path = Path(directory) / FILENAME
    if not path.is_file():
        raise ValueError(f"checkpoint={str(directory)!r} is not allowed: no {FILENAME} in that directory")
    return torch.load(path, map_location="cpu", weights_only=True)
