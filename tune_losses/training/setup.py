"""What a run is built from: the device it trains on, its data set and its model's keywords."""

from __future__ import annotations

import os

import numpy as np
import torch

from tune_losses.data import Splits, build_dataset

from .config import TrainConfig


def pick_device(name: str, gpu_ids=None, visible: str | None = None) -> torch.device:
    """The device a run trains on, from the config's ``device`` (auto / cpu / cuda).

    Outside Ray (``gpu_ids`` None: `tune-losses train`, scripts) ``auto`` is CUDA when a GPU is visible, else the
    CPU. In a Ray trial ``gpu_ids`` are the accelerators Ray assigned it (``ray.get_gpu_ids()``): the trial uses
    the first of them, the CPU when there is none, never a GPU Ray did not give it (Ray 2.60 leaves every GPU
    visible to a task that reserved none, so checking ``torch.cuda.is_available()`` is not enough).
    ``device: cuda`` in a trial with no GPU assigned is an error, not a silent fallback to the CPU, and so is an
    assigned GPU that torch cannot see. Ray's ids are physical indices; ``visible`` (default: the environment's
    CUDA_VISIBLE_DEVICES, which Ray sets to the assigned ids) maps them to torch's index.
    """
    if name == "cpu":
        return torch.device("cpu")
    if gpu_ids is None:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(name)
    if not gpu_ids:
        if name == "cuda":
            raise ValueError(
                "device='cuda' is not allowed in a trial that Ray assigned no GPU: set resources.gpu "
                "> 0 in the search space, or device: auto or cpu"
            )
        return torch.device("cpu")
    gpu = str(gpu_ids[0])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    entries = [v.strip() for v in visible.split(",")] if visible is not None else None
    if not torch.cuda.is_available() or (entries is not None and gpu not in entries):
        raise ValueError(
            f"device={name!r}: Ray assigned this trial GPU {gpu}, which torch cannot use here "
            f"(CUDA available: {torch.cuda.is_available()}, CUDA_VISIBLE_DEVICES={visible!r})"
        )
    return torch.device("cuda", entries.index(gpu) if entries is not None else int(gpu))


def model_params(cfg: TrainConfig, input_shape: tuple[int, ...]) -> dict:
    """The model's keywords, with what the data decides (input size, channels) filled in."""
    params = dict(cfg.model.params)
    if cfg.model.name == "mlp":
        params.setdefault("in_features", int(np.prod(input_shape)))
    elif len(input_shape) == 3:
        params.setdefault("in_channels", input_shape[0])
    if cfg.loss.name == "cc":
        params.setdefault("cam", True)
    return params


def load_splits(cfg: TrainConfig) -> Splits:
    """The config's data set, split with its ``data_seed`` (the same for every replica and trial)."""
    return build_dataset(
        cfg.dataset.name,
        root=cfg.dataset.root,
        download=cfg.dataset.download,
        seed=cfg.data_seed,
        **cfg.dataset.options,
    )
