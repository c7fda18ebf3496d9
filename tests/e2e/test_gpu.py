"""The CUDA paths: losses, models, vectorised repeats, checkpoints and `train` on a GPU. Skipped without one
(CI has none); run on a lent GPU with `pytest tests/e2e/test_gpu.py`."""

import pytest
import torch

from tune_losses.losses import build_loss
from tune_losses.models import build_model
from tune_losses.training import load_checkpoint, save_checkpoint, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

LOSSES = [
    ("ce", {}),
    ("focal", {"gamma": 2.0}),
    ("dal", {"a": 8.0}),
    ("beta_gamma", {"beta": 4.0, "gamma": 3.0}),
    ("cc", {"lam": 1.0}),
]
BASE = {
    "dataset": {"name": "digits"},
    "model": {"name": "small_cnn", "params": {"width": 8}},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "batch_size": 64,
    "epochs": 3,
}


@pytest.mark.parametrize("name,params", LOSSES)
def test_loss_and_gradient_on_cuda_equal_cpu(name, params):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=g, dtype=torch.float64)
    target = torch.randint(0, 10, (64,), generator=g)
    attention = torch.rand(64, 32, generator=g, dtype=torch.float64)
    confusion = torch.randint(0, 30, (10, 10), generator=g)
    values, grads = [], []
    for device in ("cpu", "cuda"):
        loss = build_loss(name, num_classes=10, **params).to(device)
        if name == "dal":
            loss.update(confusion.to(device))
        x = logits.to(device).requires_grad_()
        out = loss(x, target.to(device), attention=attention.to(device))
        out.backward()
        values.append(out.item())
        grads.append(x.grad.cpu())
    assert values[0] == pytest.approx(values[1], rel=1e-10)
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "googlenet"])
def test_backbones_with_cam_run_on_cuda(name):
    model = build_model(name, num_classes=5, cam=True).cuda().eval()
    with torch.no_grad():
        logits, attention = model(torch.randn(2, 3, 64, 64, device="cuda"))
    assert logits.shape == (2, 5) and logits.is_cuda and attention.shape[0] == 2


def test_train_picks_the_gpu_and_learns():
    reports = []
    final = train({**BASE, "loss": {"name": "dal", "params": {"a": 10.0}}}, report=lambda m, s: reports.append((m, s)))
    assert final["status"] == "completed" and final["test_acc"] > 0.5
    assert any(t.is_cuda for t in reports[-1][1]()["replicas"]["models"][0].values())  # it did train on the GPU
    final_cpu = train({**BASE, "device": "cpu", "loss": {"name": "dal", "params": {"a": 10.0}}})
    assert abs(final["test_acc"] - final_cpu["test_acc"]) < 0.1  # same seed and split; kernels differ


def test_cuda_checkpoint_resumes_on_cpu_and_on_cuda(tmp_path):
    cfg = {**BASE, "loss": {"name": "dal", "params": {"a": 10.0}}, "epochs": 2}

    def report(metrics, state):
        if metrics["epoch"] == 1:
            save_checkpoint(state(), tmp_path)  # from the GPU run, as a trial saves it

    train(cfg, report=report)
    state = load_checkpoint(tmp_path)  # map_location cpu, weights_only
    assert state["epoch"] == 1
    for device in ("cpu", "cuda"):
        resumed = train({**cfg, "device": device}, resume_from=tmp_path)
        assert resumed["epoch"] == 2 and resumed["status"] == "completed"


def test_vectorised_repeats_on_cuda_equal_solo_seeds():
    common = {
        **BASE,
        "loss": {"name": "beta_gamma", "params": {"beta": 4, "gamma": 2}},
        "model": {"name": "mlp", "params": {}},
    }
    together = train({**common, "repeats": 3, "seed": 10})
    assert together["replicas"] == "VectorReplicas"
    for k in range(3):
        alone = train({**common, "repeats": 1, "seed": 10 + k})
        assert together[f"test_acc_r{k}"] == pytest.approx(alone["test_acc"], abs=0.02)
