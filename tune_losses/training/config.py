"""The training config, validated with pydantic: one schema for sweep trials and `tune-losses train`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(Strict):
    name: str = "digits"
    root: str | None = None
    download: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def known(cls, v):
        from tune_losses.data import names

        if v not in names():
            raise ValueError(f"unknown dataset {v!r}; allowed: {names()}")
        return v


class ModelConfig(Strict):
    name: str = "small_cnn"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def known(cls, v):
        from tune_losses.models import names

        if v not in names():
            raise ValueError(f"unknown model {v!r}; allowed: {names()}")
        return v


class LossConfig(Strict):
    name: str = "ce"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def known(cls, v):
        from tune_losses.losses import names

        if v not in names():
            raise ValueError(f"unknown loss {v!r}; allowed: {names()}")
        return v


class OptimizerConfig(Strict):
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class TrainConfig(Strict):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(10, ge=1)
    repeats: int = Field(1, ge=1)
    seed: int = 0  # replica k trains with seed + k (initialisation and shuffling)
    data_seed: int = 0  # the train / val / test split, the same for every replica and trial
    vectorize: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"


def loss_params(cfg: TrainConfig) -> dict:
    """The loss keywords, with a search space's `lambda` spelled `lam` as the loss module takes it."""
    params = dict(cfg.loss.params)
    if "lambda" in params:
        params["lam"] = params.pop("lambda")
    return params
