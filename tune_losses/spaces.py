"""Search spaces: one YAML file per study, validated with pydantic before anything starts.

    name: dal_a_table2
    description: one line for `tune-losses spaces`
    study: dal_a                 # which published table a report sets beside it (optional)
    paper_dataset: LabelMe       # only when the trials run on the paper's own data set
    baseline: ce                 # one more trial of this loss, same seeds/data/schedule (tuning/baseline.py)
    protocol: standard           # or paper: train on exactly the paper's training set, no validation, no selection
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
             # a test metric chooses on test data: only with select_on_test: true and select_on_test_reason
    resources: {cpu: 1, gpu: 0}

Domains: ``value`` (fixed), ``grid``, ``choice``, ``uniform``, ``loguniform``, ``quniform`` ([lo, hi, q]),
``randint`` ([lo, hi), integers). Errors name the file, the field path and what is allowed.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tune_losses import yaml_io
from tune_losses.training.config import TrainConfig, check_finite

BUNDLED = Path(__file__).parent / "search_spaces"
DOMAINS = ("value", "grid", "choice", "uniform", "loguniform", "quniform", "randint")


class SpaceError(ValueError):
    """A search space that cannot run; the message names the file, the field and what is allowed."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


NAME_RULE = "letters, digits, '_', '.' and '-', not starting with '.' or '-', no '..', at most 128 characters"


def check_name(value: str) -> str:
    """A sweep's name becomes a directory under --storage and an MLflow tag: no path, nothing hidden, not empty."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value) or ".." in value:
        raise ValueError(f"{value!r} is not allowed; allowed: {NAME_RULE}")
    return value


def _as_number(value):
    """A value as a sweep compares it: numbers (and numeric strings, as YAML reads ``1e-5``) as floats, pairs
    element by element."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_number(v) for v in value)
    if isinstance(value, bool):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def check_distinct(values: list, kind: str) -> None:
    """Each value of a grid once: a value given twice (``5`` and ``5.0``, ``1e-5`` and ``0.00001``) would be two
    trials writing one run and one checkpoint."""
    seen: dict = {}
    for value in values:
        key = json.dumps(_as_number(value), sort_keys=True, default=str)
        if key in seen:
            raise ValueError(
                f"{kind} lists the value {value!r} twice (as {seen[key]!r} too: equal as numbers); allowed: each "
                "value once"
            )
        seen[key] = value


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
        if kind in ("value", "grid", "choice"):  # the ranges are floats / ints, which pydantic checks
            check_finite(bounds, kind)
        if kind in ("grid", "choice"):
            check_distinct(bounds, kind)
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
    # asha: asynchronous successive halving; halving: synchronous (every config known up front, grid / random)
    name: Literal["asha", "fifo", "halving"] = "asha"
    max_t: int | None = Field(None, ge=1)
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class Plateau(Strict):
    patience: int = Field(ge=1)  # finished trials without an improvement of the best by more than min_delta
    min_delta: float = Field(0.0, ge=0)


MetricName = Literal["val_acc", "val_f1", "val_nmi", "test_acc", "test_f1", "test_nmi", "train_loss"]
METRICS = get_args(MetricName)
SPLIT_OF = {"val": "validation", "test": "test", "train": "training"}


def metric_split(metric: str) -> str:
    """The split a metric is measured on: 'validation', 'test' or 'training'."""
    return SPLIT_OF[metric.split("_")[0]]


class Search(Strict):
    searcher: Literal["grid", "random", "optuna"] = "grid"
    scheduler: Scheduler = Field(default_factory=Scheduler)
    num_samples: int = Field(1, ge=1)
    # The metric that chooses: ASHA's stops, Optuna's samples, the best config (`best_config` tag, `tune-losses
    # best`). A test metric chooses on the test split, whose numbers the report then gives: refused unless
    # select_on_test is true with a one-line reason (e.g. reproducing a paper's own selection), which the
    # parent run records and every report prints. Protocol `paper` holds out no validation (see Space).
    metric: MetricName = "val_acc"
    mode: Literal["max", "min"] = "max"
    max_concurrent: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0)
    time_budget_s: float | None = Field(None, gt=0)  # wall-clock limit of the whole sweep (tuning/budgets.py)
    plateau: Plateau | None = None  # end the sweep when its best stalls (tuning/budgets.py)
    select_on_test: bool = False
    select_on_test_reason: str = ""
    # auto: grid points that differ only in loss parameters (and their samples) train as fused groups, one
    # vectorised model per group, where the sweep allows it (tuning/fusion.py says when, and why not); off: one
    # trial per grid point, as always.
    fuse: Literal["auto", "off"] = "auto"

    @model_validator(mode="after")
    def opt_in_is_explained(self):
        if self.select_on_test and not self.select_on_test_reason.strip():
            raise ValueError(
                "select_on_test: true needs select_on_test_reason: one line saying why a config may "
                "be chosen on the test split (e.g. reproducing a paper's own selection)"
            )
        if self.select_on_test_reason.strip() and not self.select_on_test:
            raise ValueError("select_on_test_reason is given but select_on_test is not true")
        if self.select_on_test and metric_split(self.metric) != "test":
            raise ValueError(
                f"select_on_test: true with metric {self.metric}: the opt-in is for a test metric "
                "(test_acc, test_f1, test_nmi) only; drop it"
            )
        return self


class Resources(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class Space(Strict):
    name: Annotated[str, AfterValidator(check_name)]
    description: str = ""
    study: Literal["dal_a", "cc_lambda", "cc_batch", "beta_gamma"] | None = None
    paper_dataset: str | None = None  # set when `train` runs the study on the paper's own data set
    # standard: validation is held out of the training part (the data set's val_fraction / ratios), and the
    # search metric chooses on it. paper: the models train on exactly the paper's training set (its train / test
    # split, nothing held out: val_fraction 0, and split half unless the data set has an official test set), so
    # there is no validation split and the sweep selects nothing (a table of test numbers per value, as the
    # papers give), unless search.select_on_test says why it may choose on the test split.
    protocol: Literal["standard", "paper"] = "standard"
    train: TrainConfig = Field(default_factory=TrainConfig, validate_default=True)
    params: dict[str, Domain] = Field(default_factory=dict)
    search: Search = Field(default_factory=Search, validate_default=True)
    resources: Resources = Field(default_factory=Resources)
    # ce or focal (its paper's gamma): one more trial per grid repeat trains that loss with the same seeds, data and
    # schedule, so a report can give each value's gain paired by seed (tuning/baseline.py, reports/replication.py)
    baseline: Literal["ce", "focal"] | None = None

    @model_validator(mode="after")
    def baseline_needs_a_grid(self) -> Space:
        if self.baseline and (
            self.search.searcher != "grid" or any(d.kind not in ("grid", "value") for d in self.params.values())
        ):
            raise ValueError(
                f"baseline: {self.baseline!r} adds one trial to a grid: allowed only with search.searcher grid and "
                "every params domain a grid; drop baseline or make the space a grid"
            )
        return self

    @field_validator("train")
    @classmethod
    def paper_training_set(cls, train: TrainConfig, info: ValidationInfo) -> TrainConfig:
        if info.data.get("protocol") != "paper":
            return train
        options = train.dataset.options
        if options.get("val_fraction", 0) != 0:
            raise ValueError(
                f"dataset.options.val_fraction: {options['val_fraction']!r} is not allowed with "
                "protocol: paper, which trains on exactly the paper's training set: allowed: 0 (or "
                "leave it out), or protocol: standard to hold validation out of the training part"
            )
        if options.get("split", "half") != "half":
            raise ValueError(
                f"dataset.options.split: {options['split']!r} is not allowed with protocol: paper "
                "(the ratios split holds out validation data): allowed: half, or protocol: standard"
            )
        options.update(val_fraction=0, split="half")  # an official test set is kept whatever split says
        return train

    @field_validator("params")
    @classmethod
    def paper_split_not_swept(cls, params: dict, info: ValidationInfo) -> dict:
        swept = [p for path in params for p in path.split(",") if p in ("dataset.val_fraction", "dataset.split")]
        if swept and info.data.get("protocol") == "paper":
            raise ValueError(
                f"{swept[0]} cannot be swept with protocol: paper, whose split is the paper's (half, "
                "val_fraction 0): allowed: protocol: standard"
            )
        return params

    @field_validator("search")
    @classmethod
    def selection_on_allowed_data(cls, search: Search, info: ValidationInfo) -> Search:
        split, paper = metric_split(search.metric), info.data.get("protocol") == "paper"
        if paper and split == "validation":
            raise ValueError(
                f"metric: {search.metric} is not allowed with protocol: paper, which holds out no "
                "validation split: allowed: a test metric (the table's; nothing is selected), or "
                "protocol: standard to select on validation data"
            )
        train = info.data.get("train")
        if split == "validation" and train is not None and train.dataset.options.get("val_fraction") == 0:
            raise ValueError(
                f"metric: {search.metric} is not allowed with train.dataset.options.val_fraction: 0, "
                "which holds out no validation split: allowed: a val_fraction in (0, 1), train_loss, "
                "or protocol: paper (a table of test numbers, nothing selected)"
            )
        if split == "test" and not search.select_on_test:
            if not paper:
                raise ValueError(
                    f"metric: {search.metric} would choose the best config on the test split, the "
                    "data whose numbers are reported: allowed: val_acc, val_f1, val_nmi, train_loss; "
                    "or select_on_test: true with select_on_test_reason (e.g. reproducing a paper's "
                    "own selection), recorded on the sweep and printed in its reports"
                )
            adaptive = [
                x
                for x in (
                    search.searcher == "optuna" and "searcher optuna",
                    search.scheduler.name != "fifo" and f"scheduler {search.scheduler.name}",
                    getattr(search, "plateau", None) is not None and "a plateau stop",
                )
                if x
            ]
            if adaptive:
                raise ValueError(
                    f"{' and '.join(adaptive)} would choose trials on {search.metric}, the test split: "
                    "allowed with protocol: paper: searcher grid or random and scheduler fifo, or "
                    "select_on_test: true with select_on_test_reason"
                )
        return search

    @property
    def selection_metric(self) -> str | None:
        """The metric the sweep chooses its best config on, or None when it chooses nothing (protocol paper)."""
        return None if self.protocol == "paper" and not self.search.select_on_test else self.search.metric


def param_target(path: str) -> tuple[str, ...]:
    """Where a swept path lands in the train config: loss.a -> (loss, params, a)."""
    head, _, rest = path.partition(".")
    if head in ("loss", "model") and rest:
        return (head, "params", rest)
    if head == "dataset" and rest and rest not in ("name", "root", "download"):
        return ("dataset", "options", rest)
    return tuple(path.split("."))


def set_path(tree: dict, keys: tuple[str, ...], value) -> None:
    for i, key in enumerate(keys[:-1]):
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise ValueError(
                f"{'.'.join(keys[: i + 1])} is {tree!r}, not a mapping, so {'.'.join(keys)} cannot be "
                "set; allowed: a path to a field, e.g. train.epochs"
            )
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
                problems.append(
                    (f"params.{path}", "grid domains need searcher grid or random; use choice (or a range) with optuna")
                )
    sched = space.search.scheduler
    if sched.name == "halving" and space.search.searcher == "optuna":
        problems.append(
            (
                "search.scheduler.name",
                "halving runs every config to a rung before any goes on, so it needs them all up front: "
                "allowed with searcher grid or random; with optuna use asha or fifo",
            )
        )
    if sched.name == "halving" and sched.max_t and sched.max_t > space.train.epochs:
        problems.append(
            (
                "search.scheduler.max_t",
                f"must be <= train.epochs ({space.train.epochs}) under halving (a rung past the last epoch would "
                f"pause trials that have ended), got {sched.max_t}",
            )
        )
    if sched.name in ("asha", "halving"):
        max_t = sched.max_t or space.train.epochs
        if sched.grace_period > max_t:
            problems.append(("search.scheduler.grace_period", f"must be <= max_t ({max_t}), got {sched.grace_period}"))
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
    for field, check in (
        ("train.loss.params", lambda t: build_loss(t.loss.name, num_classes=2, **t.loss.params)),
        ("train.model.params", lambda t: check_model(t.model.name, t.model.params)),
    ):
        try:
            check(space.train)
        except ValueError as exc:
            problems.append((field, str(exc)))
    return problems


def _format(source: str, problems: list[tuple[str, str]], what: str = "search space") -> str:
    lines = [f"{source}: invalid {what}"] + [f"  {field}: {msg}" for field, msg in problems]
    return "\n".join(lines)


def validation_problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """pydantic's errors as (field path, message) pairs, without its URLs and input dumps."""
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        problems.append((prefix + loc if loc else "(top level)", msg))
    return problems


def format_validation_error(exc: ValidationError, source: str, what: str, prefix: str = "") -> str:
    """``source: invalid WHAT`` then one ``  field: message`` line per problem (the CLI's form of pydantic's)."""
    return _format(source, validation_problems(exc, prefix), what)


def parse_space(data: Any, source: str = "<space>") -> Space:
    if not isinstance(data, dict):
        raise SpaceError(_format(source, [("(top level)", "must be a mapping of fields")]))
    try:
        space = Space.model_validate(data)
    except ValidationError as exc:
        raise SpaceError(_format(source, validation_problems(exc))) from None
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
    if not path.exists():
        raise SpaceError(f"{path}: no such search space (bundled ones: {', '.join(bundled_names())})")
    try:  # a directory, bytes that are not UTF-8, malformed YAML, a key given twice
        text, data = yaml_io.load_file(path)
    except ValueError as exc:
        raise SpaceError(str(exc)) from None
    data = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        if isinstance(data, dict):
            try:
                set_path(data, tuple(key.split(".")), value)
            except ValueError as exc:
                raise SpaceError(f"{path}: --set {key}: {exc}") from None
    return parse_space(data, str(path)), path, text


def bundled_names() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.yaml"))


def describe_bundled() -> list[tuple[str, str]]:
    out = []
    for name in bundled_names():
        _, data = yaml_io.load_file(BUNDLED / f"{name}.yaml")
        out.append((name, data.get("description", "")))
    return out
