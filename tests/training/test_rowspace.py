"""The exact row-space reduction of the DAL head: same training as on the full-dimension features."""

import numpy as np
import pytest
import torch

from tune_losses.data.features import write_features
from tune_losses.training import train
from tune_losses.training.config import TrainConfig
from tune_losses.training.rowspace import applies


@pytest.fixture
def wide_table(tmp_path):
    """A features table shaped like the DAL paper's (few rows, many ReLU'd values): 120 rows x 4096."""
    rng = np.random.default_rng(0)
    y = np.arange(120) % 4
    x = np.maximum(0, 0.3 * rng.normal(size=(4, 4096))[y] + rng.normal(size=(120, 4096))).astype(np.float32)
    arrays = {"train": (x[:60], y[:60]), "val": (x[60:80], y[60:80]), "test": (x[80:], y[80:])}
    meta = {
        "dataset": "synthetic",
        "backbone": "none",
        "weights": "none",
        "num_classes": 4,
        "class_names": ["a", "b", "c", "d"],
    }
    return write_features(tmp_path / "wide.parquet", arrays, meta)


def config(path, **over):
    return {
        "dataset": {"name": "features", "options": {"path": str(path)}},
        "model": {"name": "mlp"},
        "loss": {"name": "dal", "params": {"a": 5.0}},
        "optimizer": {"name": "sgd", "lr": 0.005},
        "batch_size": 16,
        "epochs": 30,
        "repeats": 3,
        **over,
    }


def test_reduction_trains_exactly_like_the_full_features(wide_table):
    reduced, full = [], []
    a = train(config(wide_table), report=lambda m, s: reduced.append(m), return_model=True)
    b = train(config(wide_table, rowspace=False), report=lambda m, s: full.append(m), return_model=True)
    for m, n in zip(reduced, full):
        for k in range(3):
            assert m[f"train_loss_r{k}"] == pytest.approx(n[f"train_loss_r{k}"], rel=1e-4)
        assert m["test_acc"] == pytest.approx(n["test_acc"], abs=0.02)
    # The exported model is back in the 4096-dim input space and gives the full run's logits.
    x = torch.as_tensor(np.asarray(a["input_example"]))
    assert a["model"][1].in_features == 4096
    assert torch.allclose(a["model"](x), b["model"](x), atol=1e-3)


def test_reduction_only_where_it_is_exact_and_pays(wide_table):
    from tune_losses.data import build_dataset

    splits = build_dataset("features", path=str(wide_table))
    assert applies(TrainConfig.model_validate(config(wide_table)), splits)
    for over in (
        {"optimizer": {"name": "adam", "lr": 0.01}},
        {"optimizer": {"name": "sgd", "weight_decay": 1e-4}},
        {"epochs": 1, "repeats": 1},
    ):
        assert not applies(TrainConfig.model_validate(config(wide_table, **over)), splits)


def test_a_reduced_run_resumes_exactly(wide_table, tmp_path):
    from tune_losses.training import save_checkpoint

    cfg = config(wide_table, epochs=12)
    straight = []
    train(cfg, report=lambda m, s: straight.append(m))

    def stop_at_five(m, state):
        if m["epoch"] == 5:
            save_checkpoint(state(), tmp_path / "ckpt")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=stop_at_five)
    resumed = []
    train(cfg, report=lambda m, s: resumed.append(m), resume_from=tmp_path / "ckpt")
    assert resumed == straight[5:]


@pytest.mark.parametrize("change,vectorize", [("rotated", True), ("one more dimension", False)])
def test_a_run_resumed_with_another_basis_continues_the_same_training(
    wide_table, tmp_path, monkeypatch, change, vectorize
):
    """Another node can compute another basis of the same row space (rotated within it, or with one more column
    at the rank cut-off): the reduced weights of the checkpoint then mean something else there. The checkpoint
    also holds the first layer as combinations of the data rows, so the resumed run continues the same training
    (to float rounding: the new basis rounds differently) and exports the same model."""
    from tune_losses.training import rowspace, save_checkpoint

    cfg = config(wide_table, epochs=12, vectorize=vectorize)
    straight = []
    full = train(cfg, report=lambda m, s: straight.append(m), return_model=True)

    def stop_at_five(m, state):
        if m["epoch"] == 5:
            save_checkpoint(state(), tmp_path / "ckpt")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, report=stop_at_five)

    original = rowspace.row_coordinates

    def another_basis(x):
        m, g = original(x)  # Q = X^T M, G = X Q
        rotation = torch.linalg.qr(
            torch.randn(m.shape[1], m.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        )[0]
        m, g = m @ rotation, g @ rotation
        if change == "one more dimension":  # a column the rows do not reach (zero coordinates)
            zero = torch.zeros(m.shape[0], 1, dtype=torch.float64)
            m, g = torch.cat([m, zero], dim=1), torch.cat([g, zero], dim=1)
        return m, g

    monkeypatch.setattr(rowspace, "row_coordinates", another_basis)
    resumed = []
    final = train(cfg, report=lambda m, s: resumed.append(m), resume_from=tmp_path / "ckpt", return_model=True)
    assert [m["epoch"] for m in resumed] == list(range(6, 13))
    for m, n in zip(resumed, straight[5:]):
        for k in range(3):
            assert m[f"train_loss_r{k}"] == pytest.approx(n[f"train_loss_r{k}"], rel=1e-5)
        assert m["test_acc"] == pytest.approx(n["test_acc"], abs=0.02)
    x = torch.as_tensor(np.asarray(full["input_example"]))
    assert torch.allclose(final["model"](x), full["model"](x), atol=1e-4)


def test_coordinates_and_reduced_weights_are_those_of_the_basis(wide_table):
    """Training takes the rows' coordinates G and the reduced weights (W X^T) M without forming the basis Q;
    both are what Q gives (x Q, W Q), Q is orthonormal, and an untrained reduced model expands back to itself."""
    from tune_losses.data import build_dataset
    from tune_losses.models import build_model
    from tune_losses.training.rowspace import RowSpace

    splits = build_dataset("features", path=str(wide_table))
    rs = RowSpace(splits)
    assert rs._basis is None  # nothing on the training path needs Q
    reduced = rs.reduce(splits)
    q = rs.basis
    assert torch.allclose(q.T @ q, torch.eye(rs.rank), atol=1e-5)
    for mine, source in zip((reduced.train, reduced.val, reduced.test), (splits.train, splits.val, splits.test)):
        assert torch.allclose(mine.x, source.x @ q, atol=1e-4)
    copies = rs.reduce(type(splits)(*(type(s)(s.x.clone(), s.y) for s in (splits.train, splits.val, splits.test)), 4))
    assert torch.allclose(copies.train.x, reduced.train.x, atol=1e-4)  # other tensors: x Q
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=4, in_features=4096)
    small = rs.reduce_model(model)
    assert torch.allclose(small[1].weight, model[1].weight @ q, atol=1e-5)
    torch.manual_seed(0)
    again = rs.expand_model(small, build_model("mlp", num_classes=4, in_features=4096))
    assert torch.allclose(again[1].weight, model[1].weight, atol=1e-6)
