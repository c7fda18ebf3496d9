"""The training config, validated with pydantic: one schema for sweep trials and `tune-losses train`."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # .inf / .nan: "should be a finite number"


def check_finite(value, path: str = ""):
    """Refuse inf and nan anywhere in a free-form value (nested dicts and lists), naming where."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path or 'value'}={value!r} is not allowed; allowed: finite numbers")
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_finite(v, f"{path}[{i}]")
    return value


FreeForm = Annotated[dict[str, Any], AfterValidator(check_finite)]


_REGISTRY_MODULES = {"dataset": "tune_losses.data", "model": "tune_losses.models", "loss": "tune_losses.losses"}


def _registered_check(kind: str):
    """A validator: the str must name a registered dataset / model / loss (the registries load lazily)."""

    def check(value: str) -> str:
        import importlib

        names = importlib.import_module(_REGISTRY_MODULES[kind]).names()
        if value not in names:
            raise ValueError(f"unknown {kind} {value!r}; allowed: {names}")
        return value

    return check


DatasetName = Annotated[str, AfterValidator(_registered_check("dataset"))]
ModelName = Annotated[str, AfterValidator(_registered_check("model"))]
LossName = Annotated[str, AfterValidator(_registered_check("loss"))]


class DatasetConfig(Strict):
    name: DatasetName = "digits"
    root: str | None = None
    download: bool = False
    options: FreeForm = Field(default_factory=dict)


class ModelConfig(Strict):
    name: ModelName = "small_cnn"
    params: FreeForm = Field(default_factory=dict)


class LossConfig(Strict):
    name: LossName = "ce"
    params: FreeForm = Field(default_factory=dict)


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


def import_plugins(modules) -> None:
    """Import the modules that register a project's own losses, models or data sets (``@LOSSES.register``)."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or the plugin's own error at import
            raise ValueError(
                f"cannot import {module!r} ({type(exc).__name__}: {exc}); allowed: modules "
                "importable on the driver and on every Ray worker"
            ) from None
    return modules


class TrainConfig(Strict):
    # Modules imported before the names below are checked (pydantic validates fields in order), here and in
    # every trial on every Ray node: a project's own losses / models / data sets, registered like the built-ins.
    plugins: Annotated[list[str], AfterValidator(import_plugins)] = Field(default_factory=list)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(10, ge=1)
    repeats: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)  # replica k trains with seed + k (initialisation and shuffling)
    data_seed: int = Field(0, ge=0)  # the train / val / test split, the same for every replica and trial
    vectorize: bool = True
    rowspace: bool = True  # the exact row-space reduction of the DAL head, where it applies
    device: Literal["auto", "cpu", "cuda"] = "auto"


def fusible_params(loss_name: str) -> tuple[str, ...]:
    """The parameters of loss ``loss_name`` in which the configs of one fused group may differ (the loss class's
    ``replica_params``: training/group.py). The registry loads lazily, as for the names above."""
    import importlib

    cls = importlib.import_module(_REGISTRY_MODULES["loss"]).get(loss_name)
    return tuple(getattr(cls, "replica_params", ()))


BACKBONES = ("vgg16", "resnet18", "googlenet")


def weights_used(cfg: dict) -> str:
    """Which pretrained weights a run uses, for its MLflow params: the backbone's, the cached features' one."""
    model, dataset = cfg["model"], cfg["dataset"]
    if model["name"] in BACKBONES:
        return str(model["params"].get("weights") or "random-init")
    if dataset["name"] == "features":
        opts = dataset.get("options", {})
        if opts.get("path"):
            return f"as cached in {opts['path']}"
        return str(opts.get("weights") or ("random-init" if opts.get("random_init") else "imagenet (hub cache)"))
    return "none (trained from scratch)"
