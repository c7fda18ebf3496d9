"""Search spaces: one YAML file per study, validated with pydantic before anything starts.

    name: dal_a_table2
    description: one line for `tune-losses spaces`
    study: dal_a                 # which published table a report sets beside it (optional)
    paper_dataset: LabelMe       # only when the trials run on the paper's own data set
    train:                       # the fixed training config (tune_losses.training.TrainConfig)
      dataset: {name: digits}
      loss: {name: dal}
      epochs: 10
      repeats: 4
    params:                      # swept values, by path into `train`
      loss.a: {grid: [5, 8, 10]}           # loss.<p>, model.<p>, optimizer.<f>, dataset.<option>, batch_size, ...
      batch_size: {choice: [16, 32]}
    search: {searcher: grid, num_samples: 1, metric: val_acc, mode: max, max_concurrent: 2,
             scheduler: {name: asha, max_t: 10, grace_period: 2, reduction_factor: 2}}
    resources: {cpu: 1, gpu: 0}

Domains: ``value`` (fixed), ``grid``, ``choice``, ``uniform``, ``loguniform``, ``quniform`` ([lo, hi, q]),
``randint`` ([lo, hi), integers). Errors name the file, the field path and what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tune_losses.training.config import TrainConfig

BUNDLED = Path(__file__).parent / "search_spaces"
DOMAINS = ("value", "grid", "choice", "uniform", "loguniform", "quniform", "randint")


class SpaceError(ValueError):
    """A search space that cannot run; the message names the file, the field and what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Domain(Strict):
    value: Any = None
    grid: list[Any] | None = Field(None, min_length=1)
    choice: list[Any] | None = Field(None, min_length=1)
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    quniform: tuple[float, float, float] | None = None
    randint: tuple[int, int] | None = None

    @model_validator(mode="after")
    def one_kind(self):
        given = [k for k in DOMAINS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {list(DOMAINS)}, got {given or 'none'}")
        kind = given[0]
        bounds = getattr(self, kind)
        if kind in ("uniform", "loguniform", "quniform", "randint") and not bounds[0] < bounds[1]:
            raise ValueError(f"{kind} needs [low, high] with low < high, got {list(bounds)}")
        if kind == "loguniform" and bounds[0] <= 0:
            raise ValueError(f"loguniform needs low > 0, got {bounds[0]}")
        if kind == "quniform" and bounds[2] <= 0:
            raise ValueError(f"quniform needs q > 0, got {bounds[2]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DOMAINS if getattr(self, k) is not None)

    def extremes(self) -> list:
        """The values whose validity decides the whole domain's (every listed value, or both bounds)."""
        kind = self.kind
        if kind == "value":
            return [self.value]
        if kind in ("grid", "choice"):
            return list(getattr(self, kind))
        lo, hi = getattr(self, kind)[:2]
        return [lo, hi - 1 if kind == "randint" else hi]


class Scheduler(Strict):
    name: Literal["asha", "fifo"] = "asha"
    max_t: int | None = Field(None, ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class Plateau(Strict):
    patience: int = Field(ge=1)  # finished trials without an improvement of the best by more than min_delta
    min_delta: float = Field(0.0, ge=0)


METRICS = ("val_acc", "val_f1", "val_nmi", "test_acc", "test_f1", "test_nmi", "train_loss")


class Search(Strict):
    searcher: Literal["grid", "random", "optuna"] = "grid"
    scheduler: Scheduler = Field(default_factory=Scheduler)
    num_samples: int = Field(1, ge=1)
    metric: Literal[METRICS] = "val_acc"
    mode: Literal["max", "min"] = "max"
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)
    time_budget_s: float | None = Field(None, gt=0)  # wall-clock limit of the whole sweep (tuning/budgets.py)
    plateau: Plateau | None = None  # end the sweep when its best stalls (tuning/budgets.py)


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class Space(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    study: Literal["dal_a", "cc_lambda", "cc_batch", "beta_gamma"] | None = None
    paper_dataset: str | None = None  # set when `train` runs the study on the paper's own data set
    train: TrainConfig = Field(default_factory=TrainConfig)
    params: dict[str, Domain] = Field(default_factory=dict)
    search: Search = Field(default_factory=Search)
    resources: Resources = Field(default_factory=Resources)


def param_target(path: str) -> tuple[str, ...]:
    """Where a swept path lands in the train config: loss.a -> (loss, params, a)."""
    head, _, rest = path.partition(".")
    if head in ("loss", "model") and rest:
        return (head, "params", rest)
    if head == "dataset" and rest and rest not in ("name", "root", "download"):
        return ("dataset", "options", rest)
    return tuple(path.split("."))


def set_path(tree: dict, keys: tuple[str, ...], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def trial_config(space: Space, values: dict) -> dict:
    """The full train config of one trial: the space's fixed part with the swept values put in."""
    cfg = space.train.model_dump()
    for path, value in values.items():
        if "," in path:  # a joint path sweeps several fields together: loss.beta,loss.gamma: [[2, 3], ...]
            parts = path.split(",")
            if not isinstance(value, (list, tuple)) or len(value) != len(parts):
                raise ValueError(f"each value of the joint path {path} must be a list of {len(parts)} values")
            for part, v in zip(parts, value):
                set_path(cfg, param_target(part), v)
        else:
            set_path(cfg, param_target(path), value)
    return cfg


def _check_semantics(space: Space) -> list[tuple[str, str]]:
    """Check every swept value the way a trial would (loss, model and config checks); (field, message)s."""
    from tune_losses.losses import build_loss
    from tune_losses.models.registry import check_params as check_model

    problems = []
    if space.search.searcher == "optuna":
        for path, dom in space.params.items():
            if dom.kind == "grid":
                problems.append((f"params.{path}", "grid domains need searcher grid or random; "
                                 "use choice (or a range) with optuna"))
    sched = space.search.scheduler
    if sched.name == "asha":
        max_t = sched.max_t or space.train.epochs
        if sched.grace_period > max_t:
            problems.append(("search.scheduler.grace_period",
                             f"must be <= max_t ({max_t}), got {sched.grace_period}"))
    for path, dom in space.params.items():
        for value in dom.extremes():
            try:
                cfg = TrainConfig.model_validate(trial_config(space, {path: value}))
            except ValidationError as exc:
                err = exc.errors()[0]
                loc = ".".join(str(p) for p in err["loc"])
                problems.append((f"params.{path}", f"value {value!r}: {loc}: {err['msg']}"))
                break
            except ValueError as exc:
                problems.append((f"params.{path}", str(exc)))
                break
            try:
                if "loss." in path:
                    build_loss(cfg.loss.name, num_classes=2, **cfg.loss.params)
                if "model." in path:
                    check_model(cfg.model.name, cfg.model.params)
            except ValueError as exc:
                problems.append((f"params.{path}", str(exc)))
                break
    for field, check in (("train.loss.params", lambda t: build_loss(t.loss.name, num_classes=2, **t.loss.params)),
                         ("train.model.params", lambda t: check_model(t.model.name, t.model.params))):
        try:
            check(space.train)
        except ValueError as exc:
            problems.append((field, str(exc)))
    return problems


def _format(source: str, problems: list[tuple[str, str]]) -> str:
    lines = [f"{source}: invalid search space"] + [f"  {field}: {msg}" for field, msg in problems]
    return "\n".join(lines)


def parse_space(data: Any, source: str = "<space>") -> Space:
    if not isinstance(data, dict):
        raise SpaceError(_format(source, [("(top level)", "must be a mapping of fields")]))
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append((loc or "(top level)", msg))
        raise SpaceError(_format(source, problems)) from None
    problems = _check_semantics(space)
    if problems:
        raise SpaceError(_format(source, problems))
    return space


def resolve_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    return BUNDLED / f"{name_or_path}.yaml"


def load_space(name_or_path: str | Path, overrides: dict | None = None) -> tuple[Space, Path, str]:
    """Read, override (dotted keys, e.g. {"train.epochs": 3}) and validate a space; returns (space, path, text)."""
    path = resolve_path(name_or_path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such search space (bundled ones: {', '.join(bundled_names())})")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: malformed YAML: {exc}") from None
    data = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        if isinstance(data, dict):
            set_path(data, tuple(key.split(".")), value)
    return parse_space(data, str(path)), path, text


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


def describe_bundled() -> list[tuple[str, str]]:
    out = []
    for name in bundled_names():
        data = yaml.safe_load((BUNDLED / f"{name}.yaml").read_text())
        out.append((name, data.get("description", "")))
    return out
