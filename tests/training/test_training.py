"""The training function: vectorised repeats equal solo runs, resume equals not stopping, divergence stops."""

import math

import numpy as np
import pytest
import torch

from tune_losses.losses import fused
from tune_losses.training import load_checkpoint, save_checkpoint, train
from tune_losses.training.config import TrainConfig

BASE = {
    "dataset": {"name": "digits"},
    "model": {"name": "small_cnn", "params": {"width": 8}},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "batch_size": 64,
    "epochs": 3,
}


def run(**over):
    cfg = {**BASE, **over}
    reports = []
    final = train(cfg, report=lambda m, s: reports.append((m, s)))
    return final, reports


# CC-Loss's intra/inter ratio has large gradients while the attention vectors are still alike, so rounding
# differences between a batched and a plain matmul grow over the steps: at lr 0.002 the largest weight
# difference over seeds 10-12 is 2e-5 after one epoch and 1.1e-3 after three, at 1 or 2 threads (a script run
# on the 2-CPU machine, 2026-12-02); so CC-Loss is compared after one epoch.
@pytest.mark.parametrize(
    "loss,params,model,lr,epochs",
    [
        ("dal", {"a": 5.0}, "small_cnn", 0.05, 3),
        ("cc", {"lambda": 1.0}, "small_cnn", 0.002, 1),
        ("beta_gamma", {"beta": 4, "gamma": 2}, "mlp", 0.05, 3),
    ],
)
def test_vectorised_replica_equals_the_same_seed_alone(monkeypatch, loss, params, model, lr, epochs):
    # Under vmap the losses take their tensor-expression version; a solo run on CPU would take the fused kernel
    # (losses/fused.py), whose rounding differs and grows over the epochs like that of a batched matmul. The
    # two versions are compared with each other in test_losses.py; here both runs use the same one.
    monkeypatch.setattr(fused, "usable", lambda logits: False)
    common = {
        "loss": {"name": loss, "params": params},
        "model": {"name": model, "params": {}},
        "optimizer": {"name": "sgd", "lr": lr},
        "epochs": epochs,
    }
    together, reports = run(repeats=3, seed=10, **common)
    assert together["replicas"] == "VectorReplicas"
    stacked = reports[-1][1]()["replicas"]["params"]
    for k in range(3):
        alone, solo_reports = run(repeats=1, seed=10 + k, **common)
        assert alone["replicas"] == "LoopReplicas"
        solo = solo_reports[-1][1]()["replicas"]["models"][0]
        for name, value in solo.items():
            assert torch.allclose(stacked[name][k], value, atol=1e-3, rtol=1e-3), name  # other seeds: ~1e-1
        for (m, _), (solo_m, _) in zip(reports, solo_reports):
            assert m[f"train_loss_r{k}"] == pytest.approx(solo_m["train_loss"], rel=1e-4)
    assert together["test_acc"] == pytest.approx(np.mean([together[f"test_acc_r{k}"] for k in range(3)]))
    assert together["test_acc_min"] <= together["test_acc"] <= together["test_acc_max"]


def test_loop_fallback_when_vectorising_is_off():
    final, reports = run(repeats=2, vectorize=False, loss={"name": "ce", "params": {}})
    assert final["replicas"] == "LoopReplicas" and len(reports) == 3
    assert {"test_acc_r0", "test_acc_r1", "test_acc_std"} <= set(final)


def test_report_holds_all_metrics_each_epoch_and_learns():
    final, reports = run(epochs=4, loss={"name": "dal", "params": {"a": 10.0}}, model={"name": "mlp", "params": {}})
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3, 4]
    for m, state in reports:
        assert {"train_loss", "val_acc", "test_acc", "val_f1", "test_f1", "test_nmi", "val_nmi"} <= set(m)
        assert np.asarray(m["test_confusion"]).shape[-2:] == (10, 10)  # (replicas, C, C)
        assert np.asarray(m["test_confusion"]).sum() == 359
        assert state()["epoch"] == m["epoch"]
    assert reports[-1][0]["train_loss"] < reports[0][0]["train_loss"]
    assert final["test_acc"] > 0.5
    # DAL's soft labels were rebuilt from the training confusion matrix: no longer the identity.
    soft = reports[-1][1]()["replicas"]["losses"][0]["soft_labels"]
    assert not torch.equal(soft, torch.eye(10)) and torch.equal(soft.diagonal(), torch.ones(10))


@pytest.mark.parametrize("repeats", [1, 2])
def test_resume_gives_the_same_metrics_as_not_stopping(tmp_path, repeats):
    cfg = {**BASE, "epochs": 4, "repeats": repeats, "loss": {"name": "dal", "params": {"a": 6.0}}}
    straight = []
    train(cfg, report=lambda m, s: straight.append(m))

    def stop_after_two(m, state):
        if m["epoch"] == 2:
            save_checkpoint(state(), tmp_path)
            raise KeyboardInterrupt  # the trial is killed here

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=stop_after_two)
    assert load_checkpoint(tmp_path)["epoch"] == 2
    resumed = []
    train(cfg, report=lambda m, s: resumed.append(m), resume_from=tmp_path)
    assert [m["epoch"] for m in resumed] == [3, 4]
    for a, b in zip(straight[2:], resumed):
        assert a == b


def test_diverging_run_stops_with_a_reason():
    reports = []
    result = train(
        {**BASE, "optimizer": {"name": "sgd", "lr": 1e30}, "epochs": 5}, report=lambda m, s: reports.append(m)
    )
    assert result["status"] == "diverged" and "training loss became" in result["reason"]
    assert all(math.isfinite(m["train_loss"]) for m in reports) and len(reports) < 5


def test_config_rejects_bad_values_with_the_field_named():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig.model_validate({**BASE, "batch_size": 0})
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        TrainConfig.model_validate({**BASE, "loss": {"name": "nope"}})


# Models with dropout and batch norm, registered by tests/replica_models.py (imported through `plugins`).
RANDOM_MODELS = {"plugins": ["replica_models"], "loss": {"name": "ce", "params": {}}}


def replica_state(state, k):
    """Replica k's model state from a LoopReplicas or VectorReplicas checkpoint."""
    if "models" in state:
        return state["models"][k]
    return {n: v[k] for n, v in {**state["params"], **state["buffers"]}.items()}


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize(
    "model,params",
    [("dropout_mlp", {}), ("bn_cnn", {}), ("dropout_mlp", {"hidden": 1024})],  # 1024: weights laid out anew
)
def test_each_replica_draws_from_its_own_stream_and_equals_its_seed_alone(model, params, vectorize):
    """Dropout draws from the replica's own stream, so replica k of 3 is the seed trained alone: bit for bit in
    the loop, within float rounding when vectorised (batched kernels). Before, all replicas drew from one global
    stream and replica k depended on how many trained beside it (differences ~1e-3 in the loss). With a hidden
    layer of 1024 the stacked first weight (3 x 1024 x 64) is laid out as its gradient comes, after a probe
    step that draws from copies of the streams (replicas.VectorReplicas._match_grad_layout)."""
    common = {**RANDOM_MODELS, "model": {"name": model, "params": params}, "vectorize": vectorize}
    together, reports = run(repeats=3, seed=10, **common)
    assert together["replicas"] == ("VectorReplicas" if vectorize else "LoopReplicas")
    for k in range(3):
        alone, solo_reports = run(repeats=1, seed=10 + k, **common)
        solo, mine = solo_reports[-1][1]()["replicas"]["models"][0], replica_state(reports[-1][1]()["replicas"], k)
        for name, value in solo.items():
            if vectorize:
                assert torch.allclose(mine[name], value, rtol=1e-5, atol=1e-5), name  # seen: 2e-6
            else:
                assert torch.equal(mine[name], value), name
        for (m, _), (solo_m, _) in zip(reports, solo_reports):
            if vectorize:
                assert m[f"train_loss_r{k}"] == pytest.approx(solo_m["train_loss"], rel=1e-6)
            else:
                assert m[f"train_loss_r{k}"] == solo_m["train_loss"]
                assert m[f"test_acc_r{k}"] == solo_m["test_acc"]


@pytest.mark.parametrize(
    "vectorize,model,params",
    [
        (True, "bn_cnn", {}),
        (False, "bn_cnn", {}),
        (True, "dropout_mlp", {"hidden": 1024}),  # stacked weights laid out as their gradients (replicas.py)
    ],
)
def test_resume_with_dropout_and_batch_norm_is_exact(tmp_path, vectorize, model, params):
    """Each replica's random stream is in the checkpoint: stopped after epoch 2 and resumed, the run is the
    uninterrupted one to the last bit, vectorised or looped."""
    cfg = {
        **BASE,
        **RANDOM_MODELS,
        "model": {"name": model, "params": params},
        "epochs": 4,
        "repeats": 2,
        "vectorize": vectorize,
    }
    straight = []
    train(cfg, report=lambda m, s: straight.append(m))

    def stop_after_two(m, state):
        if m["epoch"] == 2:
            save_checkpoint(state(), tmp_path)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=stop_after_two)
    torch.manual_seed(12345)  # a resumed trial starts in a fresh process: the global stream is elsewhere
    resumed = []
    final = train(cfg, report=lambda m, s: resumed.append(m), resume_from=tmp_path)
    assert final["replicas"] == ("VectorReplicas" if vectorize else "LoopReplicas")
    assert len(resumed) == 2 and resumed == straight[2:]


def test_a_trial_uses_exactly_the_gpus_ray_assigned_it(monkeypatch):
    """Faked: a GPU node (torch sees CUDA) where Ray assigned the trial the GPUs given."""
    from tune_losses.training.loop import pick_device

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert pick_device("auto", []) == cpu  # reserved gpu: 0, yet a GPU is visible: the CPU
    assert pick_device("cpu", [1]) == cpu
    assert pick_device("auto", [2]) == torch.device("cuda", 2)  # Ray left every GPU visible: its physical id
    assert pick_device("cuda", ["3"], visible="3") == torch.device("cuda", 0)  # Ray set CUDA_VISIBLE_DEVICES=3
    assert pick_device("auto", ["3", "1"], visible="1,3") == torch.device("cuda", 1)
    with pytest.raises(
        ValueError,
        match=r"device='cuda' is not allowed in a trial that Ray assigned no GPU.*"
        r"resources.gpu",
    ):
        pick_device("cuda", [])
    with pytest.raises(ValueError, match="assigned this trial GPU 5"):
        pick_device("auto", [5], visible="0,1")
    assert pick_device("auto") == torch.device("cuda")  # outside Ray (`tune-losses train`): as before
    assert pick_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == cpu and pick_device("auto", []) == cpu
    with pytest.raises(ValueError, match="torch cannot use here"):
        pick_device("auto", [0])


def test_a_trial_without_a_gpu_trains_on_the_cpu_and_says_so(monkeypatch):
    """On a GPU node a trial that reserved no GPU trains on the CPU (before: on CUDA, beside the trials that
    reserved it) and every report names the device; device: cuda there is refused before anything runs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node, as torch sees it
    reports = []
    final = train({**BASE, "epochs": 2}, report=lambda m, s: reports.append(m), gpu_ids=[])
    assert final["status"] == "completed" and final["device"] == "cpu"
    assert [m["device"] for m in reports] == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="device='cuda' is not allowed"):
        train({**BASE, "device": "cuda"}, report=lambda m, s: reports.append(m), gpu_ids=[])
    assert len(reports) == 2


def test_a_model_with_another_random_op_is_refused_vectorised_and_trains_looped():
    """A random op in forward itself (torch.randn_like) also draws from the replica's own stream in the loop."""
    noisy = {**RANDOM_MODELS, "model": {"name": "noisy_mlp", "params": {}}, "epochs": 1}
    final, _ = run(**noisy, repeats=2, seed=10, vectorize=False)
    alone, _ = run(**noisy, seed=11)
    assert final["replicas"] == "LoopReplicas" and final["train_loss_r1"] == alone["train_loss"]
    with pytest.raises(ValueError, match="vectorize=True is not allowed .*set vectorize: false"):
        run(**noisy, repeats=2)


def test_large_stacked_weights_take_their_gradients_without_a_copy():
    """vmap's backward gives a linear layer's stacked weight gradient (K, H, D) as the transpose of a contiguous
    (K, D, H); a parameter laid out otherwise makes autograd copy every gradient into its layout, each step (half
    of the DAL head's vectorised full-D step). Stacked parameters of at least RELAYOUT_MIN elements are laid out
    like their gradients, so the gradient autograd hands over already has the parameter's strides."""
    import replica_models  # noqa: F401  (registers dropout_mlp; tests/ is on the path, as for `plugins`)

    from tune_losses.data import build_dataset
    from tune_losses.losses import build_loss
    from tune_losses.models import build_model
    from tune_losses.training.config import OptimizerConfig
    from tune_losses.training.replicas import RELAYOUT_MIN, VectorReplicas

    splits = build_dataset("digits")
    reps = VectorReplicas(
        lambda: build_model("dropout_mlp", num_classes=10, hidden=1024),
        lambda: build_loss("ce", num_classes=10),
        [0, 1],
        OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
        10,
        torch.device("cpu"),
    )
    x, y = splits.train.batch(torch.arange(64).reshape(2, 32))
    reps.step(x, y)
    incoming = {}
    for name, p in reps.params.items():
        p.register_hook(lambda g, name=name: incoming.__setitem__(name, g.stride()))
    reps.step(x, y)
    large = [n for n, p in reps.params.items() if p.numel() >= RELAYOUT_MIN]
    assert large == ["1.weight"]
    for name in large:
        assert incoming[name] == reps.params[name].stride(), name
