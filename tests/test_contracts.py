"""Contracts every registered part passes, generated from the registries: every loss (the built-ins and a plugin
registered here), every model, every data set that is present here, every bundled search space. A new loss,
model or data set is one module and one registry line; these tests then run on it with no edit here.

What a loss promises: finite value and gradients at extreme logits, at its defaults and at each value of LADDER
that its constructor accepts for each float parameter; ``torch.func.vmap`` over replicas equals a loop; its
state survives ``state_dict`` (and ``torch.load(weights_only=True)``, as checkpoints load it); the batch mean is
its one reduction (order-free; the mean of one-sample values for a per-sample loss); it refuses NaN for every
float parameter, an unknown keyword, ``num_classes`` < 2 and each parameter set it lists in ``invalid_params``,
with a ValueError naming the parameter.
"""

import ast
import inspect
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.func import functional_call

from tune_losses import data, losses, models
from tune_losses.data.features import write_features
from tune_losses.losses import ClassificationLoss, build_loss, fused
from tune_losses.losses.base import require
from tune_losses.losses.registry import LOSSES, register
from tune_losses.models import build_model, split_output
from tune_losses.models.registry import MODELS, check_params
from tune_losses.registry import Registry
from tune_losses.spaces import bundled_names, load_space, trial_config
from tune_losses.training.config import TrainConfig
from tune_losses.training.loop import model_params
from tune_losses.training.replicas import vectorizable

C, B = 3, 8
LADDER = (0.0, 0.5, 1.0, 2.0, 5.0, 20.0)  # tried for every float parameter; the constructor decides what is valid
PLUGIN = "contract_plugin"


class LabelSmoothingLoss(ClassificationLoss):
    """The plugin: cross-entropy with label smoothing, registered by the ``plugin`` fixture as a project would."""

    invalid_params = [{"smoothing": -0.1}, {"smoothing": 1.0}]

    def __init__(self, num_classes: int, smoothing: float = 0.1):
        super().__init__(num_classes)
        require(0 <= float(smoothing) < 1, "smoothing", smoothing, "in [0, 1)")
        self.smoothing = float(smoothing)

    def compute(self, logits, target, attention=None):
        return F.cross_entropy(logits, target, label_smoothing=self.smoothing)


@pytest.fixture(scope="module", autouse=True)
def plugin():
    register(PLUGIN)(LabelSmoothingLoss)
    yield
    LOSSES.unregister(PLUGIN)


LOSS_NAMES = [*losses.names(), PLUGIN]


def loss_class(name):
    return LabelSmoothingLoss if name == PLUGIN else losses.get(name)


def float_params(name) -> dict:
    """The constructor's float parameters and their defaults."""
    sig = inspect.signature(loss_class(name).__init__)
    return {p.name: p.default for p in sig.parameters.values() if isinstance(p.default, float)}


def settings(name) -> list[dict]:
    """The defaults, then each float parameter at each LADDER value the constructor accepts."""
    out = [{}]
    for param in float_params(name):
        for value in LADDER:
            try:
                loss_class(name)(num_classes=C, **{param: value})
            except ValueError:
                continue
            out.append({param: value})
    return out


SETTINGS = [
    pytest.param(
        name, params, id=f"{name}-" + ("defaults" if not params else ",".join(f"{k}={v}" for k, v in params.items()))
    )
    for name in LOSS_NAMES
    for params in settings(name)
]


@pytest.fixture(params=["fused", "expression"])
def path(request, monkeypatch):
    """Losses with a fused CPU kernel (losses/fused.py) are checked on both paths; the others take theirs twice."""
    if request.param == "fused":
        if fused.kernels() is None:
            pytest.skip("the fused kernels could not be built here")
    else:
        monkeypatch.setattr(fused, "usable", lambda logits: False)
    return request.param


def make(name, **params):
    loss = build_loss(name, num_classes=C, **params)
    loss.update(torch.tensor([[5, 3, 2], [1, 8, 1], [2, 2, 6]]))  # DAL's soft labels; a no-op for most losses
    return loss


def batch(dtype, seed=0, size=B):
    g = torch.Generator().manual_seed(seed)
    z = (3 * torch.randn(size, C, generator=g, dtype=dtype)).requires_grad_()
    y = torch.arange(size) % C  # every class present (CC-Loss has valid samples)
    att = torch.rand(size, 6, generator=g, dtype=dtype).requires_grad_()
    return z, y, att


@pytest.mark.parametrize("name,params", SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_is_finite_with_finite_gradients_at_extreme_logits(path, name, params, dtype):
    """p_t underflowing to 0 (a far-off target), p_t = 1 to the last digit, a tie, and huge logits both ways."""
    z = torch.tensor(
        [[0.0, 900.0, 3.0], [0.0, 120.0, -50.0], [40.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]],
        dtype=dtype,
        requires_grad=True,
    )
    y = torch.tensor([0, 0, 0, 2, 0, 0])
    att = torch.rand(6, 4, dtype=dtype, generator=torch.Generator().manual_seed(1)).requires_grad_()
    value = make(name, **params)(z, y, attention=att)
    grads = torch.autograd.grad(value, (z, att), allow_unused=True)
    assert value.shape == () and value.dtype == dtype and torch.isfinite(value), value
    for g in grads:
        assert g is None or torch.isfinite(g).all(), g


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_under_vmap_over_replicas_equals_a_loop(path, name):
    """As training/replicas.py calls it: each replica its own buffers, logits, targets and attention."""
    k = 3
    replicas = [make(name) for _ in range(k)]
    for i, loss in enumerate(replicas):  # different state per replica where the loss has state
        loss.update(torch.randint(0, 9, (C, C), generator=torch.Generator().manual_seed(i)))
    buffers = {n: torch.stack([dict(lo.named_buffers())[n] for lo in replicas]) for n, _ in replicas[0].named_buffers()}
    parts = [batch(torch.float64, seed=i) for i in range(k)]
    z = torch.stack([p[0].detach() for p in parts]).requires_grad_()
    y = torch.stack([p[1] for p in parts])
    att = torch.stack([p[2].detach() for p in parts]).requires_grad_()

    def one(bufs, logits, target, attention):
        return functional_call(replicas[0], bufs, (logits, target), {"attention": attention, "validate": False})

    batched = torch.vmap(one)(buffers, z, y, att)
    looped = torch.stack([loss(z[i], y[i], attention=att[i]) for i, loss in enumerate(replicas)])
    assert torch.allclose(batched, looped, rtol=1e-12, atol=0)
    for got, want in zip(
        torch.autograd.grad(batched.sum(), (z, att), allow_unused=True),
        torch.autograd.grad(looped.sum(), (z, att), allow_unused=True),
    ):
        assert (got is None) == (want is None) and (got is None or torch.allclose(got, want, rtol=1e-10, atol=1e-15))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_state_survives_state_dict_and_a_weights_only_load(name):
    a = make(name)
    a.update(torch.tensor([[9, 0, 1], [4, 4, 2], [0, 7, 3]]))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build_loss(name, num_classes=C)
    b.load_state_dict(torch.load(buf, weights_only=True))
    z, y, att = batch(torch.float64)
    assert torch.equal(a(z, y, attention=att), b(z, y, attention=att))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_reduces_by_the_batch_mean(path, name):
    loss = make(name)
    z, y, att = batch(torch.float64, size=12)
    value = loss(z, y, attention=att)
    assert value.shape == () and value.dtype == z.dtype
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(loss(z[perm], y[perm], attention=att[perm]), value, rtol=1e-12)
    if not loss.needs_attention:  # a per-sample loss: the mean of its one-sample values
        singles = torch.stack([loss(z[i : i + 1], y[i : i + 1], attention=att[i : i + 1]) for i in range(len(y))])
        assert torch.allclose(singles.mean(), value, rtol=1e-12)


def refusals(name):
    cls = loss_class(name)
    cases = [(dict(p), sorted(p)) for p in getattr(cls, "invalid_params", [])]
    cases += [({p: math.nan}, [p]) for p in float_params(name)]
    return cases


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_refuses_bad_parameters_naming_them(name):
    assert issubclass(loss_class(name), ClassificationLoss)
    if name != PLUGIN and name != "ce":  # the built-ins with parameters declare what they refuse
        assert getattr(loss_class(name), "invalid_params", None), f"{name}: no invalid_params declared"
    for params, named in refusals(name):
        with pytest.raises(ValueError, match="is not allowed") as err:
            build_loss(name, num_classes=C, **params)
        assert any(f"{p}=" in str(err.value) for p in named), (params, str(err.value))
    with pytest.raises(ValueError, match="no_such_param"):
        build_loss(name, num_classes=C, no_such_param=1)
    with pytest.raises(ValueError, match="num_classes=1 is not allowed"):
        build_loss(name, num_classes=1)


# Models. The torchvision backbones take seconds each to build on CPU: in the slow tier.
HEAVY_MODELS = {"vgg16", "resnet18", "googlenet"}
MODEL_NAMES = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY_MODELS else n for n in models.names()]
INPUT = (1, 32, 32)


def model_and_params(name, cam=False, num_classes=C):
    cfg = TrainConfig.model_validate({"model": {"name": name}, "loss": {"name": "cc" if cam else "ce"}})
    params = model_params(cfg, INPUT)  # what `train` fills in from the data: input size, channels, CAM for CC
    return build_model(name, num_classes=num_classes, **params), params


def takes_cam(name) -> bool:
    return "cam" in inspect.signature(MODELS.get(name)).parameters


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_gives_logits_and_attention_when_asked_and_trains(name):
    torch.manual_seed(0)
    x = torch.rand(4, *INPUT)
    for cam in (False, True) if takes_cam(name) else (False,):
        model, params = model_and_params(name, cam=cam)
        check_params(name, params)
        out = model(x)
        logits, attention = split_output(out)
        assert logits.shape == (4, C) and torch.isfinite(logits).all()
        if cam:
            assert isinstance(out, tuple) and attention.dim() == 2 and attention.shape[0] == 4
            assert ((attention > 0) & (attention < 1)).all()  # sigmoid weights, one per channel
        else:
            assert attention is None
        loss = build_loss("cc" if cam else "ce", num_classes=C)(logits, torch.arange(4) % C, attention=attention)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_state_round_trip_eval_determinism_and_refusals(name):
    torch.manual_seed(0)
    a, params = model_and_params(name)
    torch.manual_seed(1)
    b, _ = model_and_params(name)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.rand(2, *INPUT)
    with torch.no_grad():
        assert torch.equal(split_output(a(x))[0], split_output(a(x))[0])
        assert torch.equal(split_output(a(x))[0], split_output(b(x))[0])
    with pytest.raises(ValueError, match="no_such_param"):
        check_params(name, {**params, "no_such_param": 1})
    with pytest.raises(ValueError, match="num_classes=1 is not allowed"):
        build_model(name, num_classes=1, **params)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_model_called_vectorizable_gives_under_vmap_what_each_replica_gives(name):
    """training/replicas.py stacks the replicas of a vectorizable model and vmaps its forward."""
    replicas = []
    for seed in range(3):
        torch.manual_seed(seed)
        replicas.append(model_and_params(name)[0])
    if not vectorizable(replicas[0]):
        pytest.skip(f"{name} is trained as a loop of replicas (training/replicas.py vectorizable)")
    for m in replicas:  # dropout's per-replica noise is training/replicas.py's (ReplicaDropout, test_training.py)
        m.eval()
    params, buffers = torch.func.stack_module_state(replicas)
    x = torch.rand(3, 5, *INPUT)
    base = replicas[0]
    out = torch.vmap(lambda p, b, xk: split_output(functional_call(base, (p, b), (xk,)))[0])(params, buffers, x)
    want = torch.stack([split_output(m(x[i]))[0] for i, m in enumerate(replicas)])
    # a batched convolution may take another algorithm than K single ones: deep nets agree to float rounding
    assert torch.allclose(out, want, rtol=1e-4, atol=1e-5), (out - want).abs().max()


# Data sets: each as `train` builds it (default root, no download); one that is not here is skipped with the
# loader's own message. Those that need a root or a file get a small one made here.
def image_tree(tmp_path):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        folder = tmp_path / "images" / name
        folder.mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (20 + c, 24, 3)).astype(np.uint8)).save(folder / f"{i}.png")
    return {"root": str(tmp_path / "images"), "image_size": 16}


def features_table(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {s: (rng.normal(size=(n, 12)), np.arange(n) % 3) for s, n in (("train", 12), ("val", 6), ("test", 6))}
    meta = {
        "dataset": "synthetic",
        "backbone": "none",
        "weights": "none",
        "num_classes": 3,
        "class_names": ["a", "b", "c"],
    }
    return {"path": str(write_features(tmp_path / "f.parquet", arrays, meta))}


MADE_HERE = {"image_folder": image_tree, "features": features_table}


@pytest.mark.parametrize("name", data.names())
def test_data_set_gives_consistent_seeded_splits(name, tmp_path):
    options = MADE_HERE[name](tmp_path) if name in MADE_HERE else {}
    root = options.pop("root", None)
    try:
        splits = data.build_dataset(name, root=root, seed=0, **options)
    except ValueError as exc:
        pytest.skip(f"{name} is not here: {str(exc)[:300]}")
    assert splits.num_classes >= 2 and len(splits.class_names) == splits.num_classes
    assert splits.info.get("dataset") == name
    for part in ("train", "val", "test"):
        split = getattr(splits, part)
        assert len(split) > 0 and split.x.shape[0] == split.y.shape[0], part
        assert split.y.dtype == torch.int64 and int(split.y.min()) >= 0 and int(split.y.max()) < splits.num_classes
        assert tuple(split.x.shape[1:]) == splits.input_shape, part
        assert split.x.dtype in (torch.uint8, torch.float32), split.x.dtype
        x, y = split.batch(torch.arange(min(4, len(split))))
        assert x.dtype == torch.float32 and torch.isfinite(x).all() and y.shape == (x.shape[0],)
    assert set(splits.train.y.tolist()) == set(range(splits.num_classes))  # every class is trained on
    again = data.build_dataset(name, root=root, seed=0, **options)
    assert torch.equal(again.train.y, splits.train.y) and torch.equal(again.test.y, splits.test.y)


# Search spaces: every bundled one validates, and every trial it can make names registered parts only.
@pytest.mark.parametrize("space_name", bundled_names())
def test_bundled_space_validates_and_names_only_registered_parts(space_name):
    space, path, _ = load_space(space_name)
    trials = [{}] + [{p: v} for p, dom in space.params.items() for v in dom.extremes()]
    for values in trials:
        cfg = TrainConfig.model_validate(trial_config(space, values))
        assert cfg.dataset.name in data.names(), (path, values)
        assert cfg.model.name in models.names(), (path, values)
        assert cfg.loss.name in losses.names(), (path, values)
        build_loss(cfg.loss.name, num_classes=2, **cfg.loss.params)
        check_params(cfg.model.name, cfg.model.params)


def test_a_taken_name_is_refused_unless_replaced_on_purpose():
    reg = Registry("thing")
    first, second = object(), object()
    reg.register("a")(first)
    reg.register("a")(first)  # the same object again (a module imported twice) changes nothing
    with pytest.raises(ValueError, match=r"thing='a' is already registered .*replace=True"):
        reg.register("a")(second)
    assert reg.get("a") is first
    reg.register("a", replace=True)(second)
    assert reg.get("a") is second
    reg.unregister("a")
    assert reg.names() == []
    with pytest.raises(ValueError, match=r"loss='dal' is already registered \(tune_losses\.losses\.dal\."):
        register("dal")(LabelSmoothingLoss)
    assert losses.get("dal").__name__ == "DynamicAttentionLoss"


# The layering of ARCHITECTURE.md: which parts of the package each part may import (at any depth of a module).
ALLOWED = {
    "registry": set(),
    "_internals": set(),
    "yaml_io": set(),
    "atomic": set(),
    "home": set(),
    "process": set(),
    "losses": {"registry", "_internals", "atomic"},
    "models": {"registry"},
    "data": {"registry", "models", "atomic"},
    "training": {"data", "losses", "models", "tracking", "atomic"},
    "spaces": {"training", "losses", "models", "yaml_io"},
    "tracking": {"spaces", "training", "_internals", "atomic", "home", "process"},
    "tuning": {
        "spaces",
        "training",
        "tracking",
        "data",
        "losses",
        "reports",
        "_internals",
        "atomic",
        "home",
        "process",
    },
    "reports": {"tracking"},
    "cli": {"__init__", "data", "reports", "spaces", "training", "tuning", "tracking", "yaml_io", "_internals", "home"},
    "__init__": {"tuning"},
}
PACKAGE = Path(__file__).resolve().parents[1] / "tune_losses"


def imported_parts(path: Path) -> set[str]:
    """The package's top-level parts a module imports (relative imports resolved)."""
    own = path.relative_to(PACKAGE).parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(own[: len(own) - node.level + 1])
                names = [".".join(base + [node.module] if node.module else base)]
                names = [f"{names[0]}.{a.name}" if not node.module else names[0] for a in node.names]
            elif node.module and node.module.split(".")[0] == "tune_losses":
                names = [node.module.removeprefix("tune_losses").lstrip(".") or "__init__"]
                if names == ["__init__"]:
                    names = [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("tune_losses.") for a in node.names if a.name.startswith("tune_losses.")]
        out |= {n.split(".")[0] for n in names if n}
    return out


def test_parts_import_only_what_architecture_md_lists():
    modules = sorted(p for p in PACKAGE.rglob("*.py") if "csrc" not in p.parts)
    assert len(modules) > 40
    for path in modules:
        parts = path.relative_to(PACKAGE).parts
        part = parts[0] if len(parts) > 1 else path.stem
        extra = imported_parts(path) - ALLOWED[part] - {part}
        assert not extra, f"{path.relative_to(PACKAGE)} imports {sorted(extra)}: not allowed by ARCHITECTURE.md"


def _import_time_nodes(tree: ast.Module):
    """The nodes a module evaluates when imported: its statements outside function bodies, plus the defaults and
    decorators of its functions (class bodies run at import too)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            stack += [*node.decorator_list, *node.args.defaults, *filter(None, node.args.kw_defaults)]
        elif isinstance(node, ast.Lambda):
            stack += node.args.defaults
        else:
            yield node
            stack += ast.iter_child_nodes(node)


def _sets_a_default(node) -> bool:
    call = node.value if isinstance(node, ast.Expr) else None
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "setdefault"


def test_no_module_reads_the_environment_when_imported():
    """The warm driver (tuning/warm_driver.py) imports the package before it takes a command's environment: a value
    read at import would be `up`'s, not the command's. Setting a default (``os.environ.setdefault``) is allowed:
    the driver applies again what the imports set."""
    for path in sorted(p for p in PACKAGE.rglob("*.py") if "csrc" not in p.parts):
        tree = ast.parse(path.read_text())
        defaults = {id(n) for stmt in ast.walk(tree) if _sets_a_default(stmt) for n in ast.walk(stmt)}
        for node in _import_time_nodes(tree):
            reads = isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb")
            assert not reads or id(node) in defaults, (
                f"{path.relative_to(PACKAGE)}:{node.lineno} reads the environment when imported; read it in a function"
            )
