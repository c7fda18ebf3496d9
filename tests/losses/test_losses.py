"""Each loss against an independent float64 reference written here from the paper's formula (numpy loops)."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tune_losses.losses import build_loss, fused, names
from tune_losses.losses.cc import channel_correlation

SHAPES = [(1, 2), (7, 3), (32, 10), (64, 100)]


@pytest.fixture(params=["fused", "expression"])
def both_paths(request, monkeypatch):
    """DAL, beta/gamma and CC have two implementations on CPU (losses/fused.py): every check runs on both."""
    if request.param == "fused":
        if fused.kernels() is None:
            pytest.skip("the fused kernels could not be built here (see test_fused_kernels_build_where_a_compiler_is)")
    else:
        monkeypatch.setattr(fused, "usable", lambda logits: False)
    return request.param


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ref_focal(z, y, gamma, alpha=None):
    p = softmax(z)
    out = []
    for i, c in enumerate(y):
        w = 1.0 if alpha is None else alpha[c]
        out.append(-w * (1 - p[i, c]) ** gamma * np.log(p[i, c]))
    return np.mean(out)


def ref_dal(z, y, confusion, a):
    """Algorithm 1 with explicit loops: row rates, S = -R/a with unit diagonal, loss = -sum_j S[y,j] log P_j."""
    c = confusion.shape[0]
    s = np.eye(c)
    if confusion is not None:
        for r in range(c):
            total = confusion[r].sum()
            for k in range(c):
                if k != r and total > 0:
                    s[r, k] = -confusion[r, k] / total / a
    logp = np.log(softmax(z))
    return np.mean([-sum(s[t, j] * logp[i, j] for j in range(c)) for i, t in enumerate(y)])


def ref_beta_gamma(z, y, beta, gamma):
    p = softmax(z)
    return np.mean([-((1 - p[i, c] ** beta) ** gamma) * np.log(p[i, c]) for i, c in enumerate(y)])


def ref_cc(att, y, eps=1e-6):
    n = len(y)
    ratios = []
    for i in range(n):
        intra = [np.sum((att[i] - att[j]) ** 2) for j in range(n) if j != i and y[j] == y[i]]
        inter = [np.sum((att[i] - att[j]) ** 2) for j in range(n) if y[j] != y[i]]
        if intra and inter:
            ratios.append(np.mean(intra) / (np.mean(inter) + eps))
    return np.mean(ratios) if ratios else 0.0


def inputs(batch, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, classes, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, classes, (batch,), generator=g)
    return z, y


def test_registry_names():
    assert names() == ["beta_gamma", "cc", "ce", "dal", "focal"]


@pytest.mark.parametrize("batch,classes", SHAPES)
def test_ce_matches_reference(batch, classes):
    z, y = inputs(batch, classes)
    got = build_loss("ce", num_classes=classes)(z, y)
    assert got.item() == pytest.approx(ref_focal(z.numpy(), y.numpy(), 0.0), rel=1e-10)


@pytest.mark.parametrize("batch,classes", SHAPES)
@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_focal_matches_reference(batch, classes, gamma):
    z, y = inputs(batch, classes, seed=1)
    alpha = np.linspace(0.2, 1.0, classes)
    loss = build_loss("focal", num_classes=classes, gamma=gamma, alpha=alpha.tolist()).double()
    assert loss(z, y).item() == pytest.approx(ref_focal(z.numpy(), y.numpy(), gamma, alpha), rel=1e-9)


@pytest.mark.parametrize("batch,classes", SHAPES)
def test_focal_gamma0_is_ce(batch, classes):
    z, y = inputs(batch, classes, seed=2)
    ce = build_loss("ce", num_classes=classes)(z, y)
    assert torch.equal(build_loss("focal", num_classes=classes, gamma=0)(z, y), ce)


@pytest.mark.parametrize("batch,classes", SHAPES)
@pytest.mark.parametrize("a", [1.5, 5.0, 15.0])
@pytest.mark.usefixtures("both_paths")
def test_dal_matches_reference_after_update(batch, classes, a):
    z, y = inputs(batch, classes, seed=3)
    confusion = torch.randint(0, 20, (classes, classes)).double()
    confusion[0] = 0  # a class absent from the epoch keeps its identity row
    loss = build_loss("dal", num_classes=classes, a=a).double()
    loss.update(confusion)
    assert loss(z, y).item() == pytest.approx(ref_dal(z.numpy(), y.numpy(), confusion.numpy(), a), rel=1e-9)


@pytest.mark.usefixtures("both_paths")
def test_dal_before_update_is_ce_and_tends_to_ce_as_a_grows():
    z, y = inputs(64, 10, seed=4)
    ce = build_loss("ce", num_classes=10)(z, y)
    assert torch.allclose(build_loss("dal", num_classes=10, a=2)(z, y), ce, rtol=1e-14, atol=0)
    confusion = torch.randint(0, 30, (10, 10))
    gaps = []
    for a in [2, 10, 100, 1e6]:
        loss = build_loss("dal", num_classes=10, a=a).double()
        loss.update(confusion)
        gaps.append(abs(loss(z, y) - ce).item())
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-5 and gaps[0] > 1e-3


@pytest.mark.usefixtures("both_paths")
def test_dal_update_from_hand_made_confusion():
    # 3 classes; class 0: 6 right, 3 predicted as 1, 1 as 2; class 1 all right; class 2 absent.
    confusion = torch.tensor([[6, 3, 1], [0, 5, 0], [0, 0, 0]])
    loss = build_loss("dal", num_classes=3, a=10)
    loss.update(confusion)
    expected = torch.tensor([[1.0, -0.03, -0.01], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(loss.soft_labels, expected)
    # The confused class is pushed down: with S row 0, the loss rises with the probability of class 1.
    z_lo, z_hi = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[2.0, 1.0, 0.0]])
    t = torch.tensor([0])
    ce = build_loss("ce", num_classes=3)
    assert loss(z_hi, t) - loss(z_lo, t) > ce(z_hi, t) - ce(z_lo, t)


@pytest.mark.usefixtures("both_paths")
def test_dal_state_dict_round_trip():
    loss = build_loss("dal", num_classes=4, a=8)
    loss.update(torch.randint(0, 9, (4, 4)))
    restored = build_loss("dal", num_classes=4, a=8)
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.soft_labels, loss.soft_labels)
    z, y = inputs(16, 4)
    assert torch.equal(restored(z.float(), y), loss(z.float(), y))


@pytest.mark.parametrize("batch,classes", SHAPES)
@pytest.mark.parametrize("beta,gamma", [(2, 3), (4, 5), (0.5, 1), (10, 10)])
@pytest.mark.usefixtures("both_paths")
def test_beta_gamma_matches_reference(batch, classes, beta, gamma):
    z, y = inputs(batch, classes, seed=5)
    loss = build_loss("beta_gamma", num_classes=classes, beta=beta, gamma=gamma)
    assert loss(z, y).item() == pytest.approx(ref_beta_gamma(z.numpy(), y.numpy(), beta, gamma), rel=1e-8)


@pytest.mark.usefixtures("both_paths")
def test_beta_gamma_special_cases_and_factor_limits():
    z, y = inputs(64, 10, seed=6)
    ce = build_loss("ce", num_classes=10)(z, y)
    assert torch.allclose(build_loss("beta_gamma", num_classes=10, beta=4, gamma=0)(z, y), ce, rtol=1e-12)
    focal = build_loss("focal", num_classes=10, gamma=3)(z, y)
    assert torch.allclose(build_loss("beta_gamma", num_classes=10, beta=1, gamma=3)(z, y), focal, rtol=1e-12)
    loss = build_loss("beta_gamma", num_classes=2, beta=4, gamma=5)
    # Per-sample factor = loss / CE: -> 1 for p_t -> 0, -> 0 for p_t -> 1.
    t = torch.tensor([0])
    hard, easy = torch.tensor([[-20.0, 20.0]], dtype=torch.float64), torch.tensor([[8.0, -8.0]], dtype=torch.float64)
    ce2 = build_loss("ce", num_classes=2)
    assert (loss(hard, t) / ce2(hard, t)).item() == pytest.approx(1.0, abs=1e-12)
    assert (loss(easy, t) / ce2(easy, t)).item() < 1e-20
    # Larger beta keeps a hard-ish sample closer to CE and still down-weights an easy one (sharper contrast).
    mid = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    f = [(build_loss("beta_gamma", num_classes=2, beta=b, gamma=5)(mid, t) / ce2(mid, t)).item() for b in (2, 4, 8)]
    assert f == sorted(f)


@pytest.mark.parametrize("batch,classes,channels", [(2, 2, 4), (16, 3, 8), (64, 10, 32)])
@pytest.mark.parametrize("lam", [0.5, 1.0, 2.0])
@pytest.mark.usefixtures("both_paths")
def test_cc_matches_reference(batch, classes, channels, lam):
    z, y = inputs(batch, classes, seed=7)
    att = torch.rand(batch, channels, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    expected = ref_focal(z.numpy(), y.numpy(), 0.0) + lam * ref_cc(att.numpy(), y.numpy())
    got = build_loss("cc", num_classes=classes, lam=lam)(z, y, attention=att)
    assert got.item() == pytest.approx(expected, rel=1e-8)


@pytest.mark.usefixtures("both_paths")
def test_cc_lambda0_is_ce_and_degenerate_batches_are_finite():
    z, y = inputs(32, 5, seed=9)
    att = torch.rand(32, 16, dtype=torch.float64)
    ce = build_loss("ce", num_classes=5)(z, y)
    assert torch.equal(build_loss("cc", num_classes=5, lam=0)(z, y, attention=att), ce)
    assert build_loss("cc", num_classes=5, **{"lambda": 1.5}).lam == 1.5
    one_class = torch.zeros(8, dtype=torch.long)
    singletons = torch.arange(5)
    for target, a in [(one_class, att[:8]), (singletons, att[:5])]:
        att_g = a.clone().requires_grad_(True)
        value = channel_correlation(att_g, target)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(att_g.grad).all()
    same = torch.tensor([0, 0, 1, 1])
    coincide = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert channel_correlation(coincide, same).item() == 0.0


@pytest.mark.parametrize(
    "name,params",
    [
        ("ce", {}),
        ("focal", {"gamma": 2.0, "alpha": [0.5, 1, 2]}),
        ("dal", {"a": 3.0}),
        ("beta_gamma", {"beta": 3, "gamma": 2}),
        ("cc", {"lam": 1.0}),
    ],
)
@pytest.mark.usefixtures("both_paths")
def test_gradcheck_float64(name, params):
    z, y = inputs(6, 3, seed=10)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    loss = build_loss(name, num_classes=3, **params).double()
    if name == "dal":
        loss.update(torch.tensor([[5, 2, 1], [1, 6, 3], [0, 2, 8]]))
    z = z.requires_grad_(True)
    if name == "cc":
        att = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda a, b: loss(a, y, attention=b), (z, att))
    else:
        assert torch.autograd.gradcheck(lambda a: loss(a, y), (z,))


@pytest.mark.parametrize(
    "name,params,field",
    [
        ("dal", {"a": 1.0}, "a=1.0"),
        ("dal", {"a": -3}, "a=-3"),
        ("focal", {"gamma": -0.1}, "gamma=-0.1"),
        ("beta_gamma", {"gamma": -1}, "gamma=-1"),
        ("beta_gamma", {"beta": 0}, "beta=0"),
        ("cc", {"lam": -0.5}, "lam=-0.5"),
        ("focal", {"alpha": [1, 2]}, "alpha"),
        ("nope", {}, "loss='nope'"),
    ],
)
def test_bad_parameters_raise_clear_errors(name, params, field):
    with pytest.raises(ValueError, match="is not allowed") as err:
        build_loss(name, num_classes=3, **params)
    assert field in str(err.value)


def test_bad_inputs_raise_clear_errors():
    loss = build_loss("ce", num_classes=3)
    with pytest.raises(ValueError, match=r"logits.shape\[1\]=4 .*num_classes=3"):
        loss(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"target=.*\[0, 5\].*\[0, 2\]"):
        loss(torch.randn(2, 3), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="num_classes=1"):
        build_loss("ce", num_classes=1)
    with pytest.raises(ValueError, match="attention"):
        build_loss("cc", num_classes=3)(torch.randn(2, 3), torch.tensor([0, 1]))


def test_fused_kernels_build_where_a_compiler_is():
    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler: the tensor-expression losses are used")
    assert fused.kernels() is not None


@pytest.mark.parametrize("value", ["0", "false"])
def test_fused_kernels_can_be_turned_off(value):
    code = "import torch; from tune_losses.losses import fused; print(fused.usable(torch.zeros(2, 3)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TUNE_LOSSES_FUSED": value},
    )
    assert out.stdout.strip() == "False", out.stderr[-2000:]


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-5)])
@pytest.mark.parametrize("batch,classes", [(1, 2), (33, 10), (128, 100)])
def test_fused_and_expression_versions_agree_in_value_and_gradient(monkeypatch, dtype, rtol, batch, classes):
    """The fused kernels in float32 and float64 against the tensor expressions in float64 (the expression in
    float32 is the less accurate of the two where p_t -> 1: its log_softmax loses digits that the fused
    log-sum-exp keeps)."""
    if fused.kernels() is None:
        pytest.skip("the fused kernels could not be built here")
    z, y = inputs(batch, classes, seed=11)
    z = 3 * z
    att = torch.rand(batch, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dal = build_loss("dal", num_classes=classes, a=4.0)
    dal.update(torch.randint(0, 20, (classes, classes)))
    losses = (
        [dal]
        + [
            build_loss("beta_gamma", num_classes=classes, beta=b, gamma=g)
            for b, g in ((4, 5), (0.5, 0.7), (2, 1), (16, 21))
        ]
        + [build_loss("cc", num_classes=classes, lam=lam) for lam in (0.5, 2.0)]
    )

    def run(loss, dt):
        x, w = z.to(dt).clone().requires_grad_(True), att.to(dt).clone().requires_grad_(True)
        value = loss(x, y, attention=w)
        value.backward()
        grad_w = w.grad if loss.needs_attention else torch.zeros(())
        return value.detach().double(), x.grad.double(), grad_w.double()

    fused_results = [run(loss, dtype) for loss in losses]
    monkeypatch.setattr(fused, "usable", lambda logits: False)
    for loss, (value, grad, grad_att) in zip(losses, fused_results):
        ref_value, ref_grad, ref_grad_att = run(loss, torch.float64)
        # a value below the dtype's smallest normal number is 0 there (beta=16, gamma=21 reaches 1e-79)
        assert torch.allclose(value, ref_value, rtol=rtol, atol=torch.finfo(dtype).tiny), loss
        assert torch.allclose(grad, ref_grad, rtol=rtol, atol=rtol / batch), loss  # gradients are O(1 / batch)
        assert torch.allclose(grad_att, ref_grad_att, rtol=rtol * 10, atol=rtol * ref_grad_att.abs().max()), loss


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_versions_hold_at_extreme_logits(monkeypatch, dtype):
    """p_t underflowing to 0 (a far-off target), p_t = 1 to the last digit, and everything between."""
    if fused.kernels() is None:
        pytest.skip("the fused kernels could not be built here")
    z = torch.tensor([[0.0, 900.0, 3.0], [0.0, 120.0, -50.0], [40.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=dtype)
    y = torch.tensor([0, 0, 0, 2])
    att = torch.rand(4, 6, dtype=dtype)
    dal = build_loss("dal", num_classes=3, a=5)
    dal.update(torch.tensor([[5, 3, 2], [1, 8, 1], [2, 2, 6]]))
    losses = (dal, build_loss("beta_gamma", num_classes=3, beta=4, gamma=2), build_loss("cc", num_classes=3))
    fused_values = [loss(z, y, attention=att) for loss in losses]
    monkeypatch.setattr(fused, "usable", lambda logits: False)
    for loss, value in zip(losses, fused_values):
        assert torch.isfinite(value)
        assert torch.allclose(value, loss(z, y, attention=att), rtol=1e-5 if dtype == torch.float32 else 1e-12)


def test_fused_versions_refuse_second_derivatives_and_bad_targets():
    if fused.kernels() is None:
        pytest.skip("the fused kernels could not be built here")
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    att = torch.rand(4, 5, dtype=torch.float64)
    for loss in (
        build_loss("dal", num_classes=3, a=5),
        build_loss("beta_gamma", num_classes=3),
        build_loss("cc", num_classes=3),
    ):
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.grad(loss(z, y, attention=att), z, create_graph=True)
        with pytest.raises(RuntimeError, match="target 3 is not a class index"):
            loss(z, torch.tensor([0, 1, 3, 0]), attention=att, validate=False)  # unchecked, yet no stray read


def test_losses_under_vmap_take_the_expression_version():
    """The vectorised repeats run the losses under torch.func.vmap, where the fused kernels do not apply."""
    z, y = inputs(16, 5, seed=12)
    zs = torch.stack([z, 2 * z, -z])
    for loss in (build_loss("dal", num_classes=5, a=5).double(), build_loss("beta_gamma", num_classes=5)):
        if hasattr(loss, "soft_labels"):
            loss.update(torch.randint(0, 9, (5, 5)))
        batched = torch.vmap(lambda x: loss.compute(x, y))(zs)  # noqa: B023 (called in this iteration)
        assert torch.allclose(batched, torch.stack([loss(x, y) for x in zs]), rtol=1e-12)


def extreme_loss(name, gamma, dtype):
    """Loss ``name`` with focusing exponent ``gamma`` where it has one (focal, beta/gamma with beta 4 and 0.5)."""
    params = {
        "focal": [{"gamma": gamma}, {"gamma": gamma, "alpha": [0.5, 1, 2]}],
        "beta_gamma": [{"beta": 4, "gamma": gamma}, {"beta": 0.5, "gamma": gamma}],
        "dal": [{"a": 5}],
        "cc": [{"lam": 1.0}],
        "ce": [{}],
    }
    assert set(params) == set(names()), "a new loss: add its parameters here"
    for p in params[name]:
        loss = build_loss(name, num_classes=3, **p).to(dtype)
        if name == "dal":
            loss.update(torch.tensor([[5, 3, 2], [1, 8, 1], [2, 2, 6]]))
        yield loss


EXTREME_LOGITS = [
    [40.0, 0.0, 0.0],
    [0.0, 900.0, 3.0],
    [0.0, 120.0, -50.0],
    [1e4, -1e4, 0.0],
    [1e4, -1e4, 0.0],
    [1.0, 1.0, 1.0],
    [-30.0, 30.0, 0.0],
]
EXTREME_TARGETS = [0, 0, 0, 0, 1, 2, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("path", ["fused", "expression", "vmap"])
@pytest.mark.parametrize("name", sorted(names()))
def test_every_loss_is_finite_with_finite_gradients_at_extreme_logits(monkeypatch, name, path, gamma, dtype):
    """p_t rounding to 1 (logits [40, 0, 0], target 0), p_t underflowing to 0, and between: the value and the
    gradients (logits and attention) are finite on the fused kernel, the tensor expression (CUDA's path) and
    the expression under vmap (the vectorised repeats)."""
    if path == "fused" and fused.kernels() is None:
        pytest.skip("the fused kernels could not be built here")
    if path == "expression":
        monkeypatch.setattr(fused, "usable", lambda logits: False)
    z0 = torch.tensor(EXTREME_LOGITS, dtype=dtype)
    y = torch.tensor(EXTREME_TARGETS)
    att0 = torch.rand(len(y), 6, dtype=dtype, generator=torch.Generator().manual_seed(0))
    for loss in extreme_loss(name, gamma, dtype):
        if path == "vmap":  # two replicas: the logits and their negation
            z = torch.stack([z0, -z0]).requires_grad_(True)
            att = torch.stack([att0, att0.flip(0)]).requires_grad_(True)
            value = torch.vmap(lambda a, b: loss.compute(a, y, b))(z, att).sum()  # noqa: B023
        else:
            z, att = z0.clone().requires_grad_(True), att0.clone().requires_grad_(True)
            value = loss(z, y, attention=att)
        value.backward()
        assert torch.isfinite(value), (loss, value)
        assert torch.isfinite(z.grad).all(), (loss, z.grad)
        assert att.grad is None or torch.isfinite(att.grad).all(), (loss, att.grad)
