"""Protocol and selection: nothing is chosen on test data without a recorded reason, the paper protocol trains on
exactly the paper's training set, and every summary, report and `best` says which split chose what."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tune_losses.data import build_dataset
from tune_losses.spaces import SpaceError, bundled_names, load_space, parse_space
from tune_losses.training import train

from helpers import write_space

BASE = {
    "name": "p",
    "train": {"dataset": {"name": "digits"}, "model": {"name": "mlp"}, "epochs": 2},
    "params": {"loss.a": {"grid": [5.0, 15.0]}},
}


def space(**over):
    return parse_space({**BASE, **over, "train": {**BASE["train"], "loss": {"name": "dal"}, **over.get("train", {})}})


@pytest.mark.parametrize(
    "over, match",
    [
        (
            {"search": {"metric": "test_acc"}},
            r"search: metric: test_acc would choose the best config on the test split",
        ),
        ({"search": {"metric": "test_f1", "select_on_test": True}}, "needs select_on_test_reason"),
        ({"search": {"metric": "val_acc", "select_on_test": True, "select_on_test_reason": "x"}}, "test metric"),
        ({"protocol": "paper"}, "metric: val_acc is not allowed with protocol: paper"),
        (
            {"protocol": "paper", "search": {"metric": "test_acc", "scheduler": {"name": "asha"}}},
            "scheduler asha would choose trials on test_acc",
        ),
        (
            {
                "protocol": "paper",
                "search": {"metric": "test_acc", "searcher": "optuna", "scheduler": {"name": "fifo"}},
                "params": {"loss.a": {"uniform": [3, 20]}},
            },
            "searcher optuna would choose trials on test_acc",
        ),
        (
            {
                "protocol": "paper",
                "search": {"metric": "test_acc", "scheduler": {"name": "fifo"}},
                "train": {"dataset": {"name": "digits", "options": {"val_fraction": 0.2}}},
            },
            "val_fraction: 0.2 is not allowed",
        ),
        (
            {"train": {"dataset": {"name": "digits", "options": {"split": "half", "val_fraction": 0}}}},
            "metric: val_acc is not allowed with train.dataset.options.val_fraction: 0",
        ),
        (
            {
                "protocol": "paper",
                "search": {"metric": "test_acc", "scheduler": {"name": "fifo"}},
                "params": {"dataset.val_fraction": {"grid": [0.1, 0.2]}},
            },
            "dataset.val_fraction cannot be swept",
        ),
    ],
)
def test_selection_on_test_data_or_missing_validation_is_refused(over, match):
    with pytest.raises(SpaceError, match=match):
        space(**over)


def test_a_test_metric_needs_the_recorded_opt_in_and_the_paper_protocol_selects_nothing():
    opted = space(
        search={
            "metric": "test_acc",
            "select_on_test": True,
            "select_on_test_reason": "reproduces the paper's own choice",
        }
    )
    assert opted.selection_metric == "test_acc"
    paper = space(protocol="paper", search={"metric": "test_acc", "scheduler": {"name": "fifo"}})
    assert paper.selection_metric is None
    assert paper.train.dataset.options == {"val_fraction": 0, "split": "half"}
    assert space().selection_metric == "val_acc"


def test_the_cli_refuses_a_test_metric_before_anything_starts(tmp_path):
    path = write_space(tmp_path / "s.yaml", search={"metric": "test_acc"})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tune_losses.cli",
            "sweep",
            str(path),
            "--tracking-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--storage",
            str(tmp_path / "ray"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "error:" in proc.stderr and "select_on_test" in proc.stderr
    assert "search: metric: test_acc" in proc.stderr and not (tmp_path / "mlflow.db").exists()


def test_bundled_spaces_select_on_validation_data_or_on_nothing():
    for name in bundled_names():
        s = load_space(name)[0]
        assert s.selection_metric is None or s.selection_metric.startswith("val_"), name
        if s.paper_dataset:  # the paper studies: exactly the paper's training set, nothing held out
            assert s.protocol == "paper" and s.train.dataset.options["val_fraction"] == 0, name
    dal = load_space("dal_a_table2")[0].train
    assert (dal.epochs, dal.repeats, dal.optimizer.lr, dal.model.params["hidden"]) == (300, 60, 0.001, 32)
    bg = load_space("beta_gamma_grid")[0].train
    assert (bg.epochs, bg.optimizer.name, bg.optimizer.lr, bg.optimizer.weight_decay) == (70, "adam", 1e-5, 4e-4)
    # --dataset digits (the offline run) keeps the protocol: per class half / half, no validation
    offline = load_space("dal_a_table2", {"train.dataset": {"name": "digits"}, "paper_dataset": None})[0]
    assert offline.train.dataset.options == {"val_fraction": 0, "split": "half"}


def _image_folder(root, per_class=8, classes=3):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3)).astype(np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def test_the_paper_split_trains_on_exactly_the_training_half(tmp_path):
    """LabelMe's shape (classes of equal size): the paper trains on half of each class and tests on the other."""
    root = _image_folder(tmp_path / "lm")
    paper = build_dataset("image_folder", root=root, image_size=8, split="half", val_fraction=0)
    held = build_dataset("image_folder", root=root, image_size=8, split="half")
    assert torch.bincount(paper.train.y).tolist() == [4, 4, 4] and len(paper.val) == 0
    assert torch.bincount(paper.test.y).tolist() == [4, 4, 4]
    assert torch.equal(paper.test.x, held.test.x)  # the same test half; the held-out variant trains on less
    assert len(held.train) + len(held.val) == len(paper.train) and len(held.val) > 0
    assert "validation: none (val_fraction 0)" in paper.info["split"]
    d = build_dataset("digits", split="half", val_fraction=0)
    assert (len(d.train), len(d.val), len(d.test)) == (898, 0, 899)
    with pytest.raises(ValueError, match="val_fraction=0 is not allowed with split='ratios'"):
        build_dataset("digits", val_fraction=0)
    with pytest.raises(ValueError, match=r"val_fraction=1 is not allowed: val_fraction must be a number in \[0, 1\)"):
        build_dataset("digits", split="half", val_fraction=1)


def test_val_fraction_0_trains_with_no_validation_metrics(tmp_path):
    result = train(
        {
            "dataset": {"name": "digits", "options": {"split": "half", "val_fraction": 0}},
            "model": {"name": "mlp"},
            "epochs": 2,
            "repeats": 2,
        }
    )
    assert result["status"] == "completed" and 0 < result["test_acc"] <= 1
    assert not [k for k in result if k.startswith("val_")]
    # the same through a features table (the DAL head's path, with its row-space reduction)
    from tune_losses.data.features import compute_features

    path = compute_features(
        "image_folder",
        backbone="vgg16",
        random_init=True,
        image_size=32,
        cache_dir=tmp_path,
        root=str(_image_folder(tmp_path / "lm")),
        split="half",
        val_fraction=0,
    )
    cfg = {
        "dataset": {"name": "features", "options": {"path": str(path), "split": "half", "val_fraction": 0}},
        "model": {"name": "mlp"},
        "loss": {"name": "dal", "params": {"a": 10}},
        "epochs": 2,
        "repeats": 2,
        "optimizer": {"lr": 0.01},
    }
    result = train(cfg)
    assert result["status"] == "completed" and not [k for k in result if k.startswith("val_")]
    cfg["dataset"]["options"]["val_fraction"] = 0.2  # the table has no validation split: refused, not ignored
    with pytest.raises(ValueError, match="options {'val_fraction': 0.2} are not allowed"):
        train(cfg)


def test_ray_runtime_docstring_names_the_start_up_benchmark():
    from tune_losses.tuning import ray_runtime

    doc = ray_runtime.__doc__
    assert "benchmarks/startup.py" in doc and "0.3 s" not in doc
