"""Data sets: the bundled ones, torchvision layouts and image folders written here, the feature cache."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from tune_losses.data import build_dataset, names
from tune_losses.data.features import compute_features, load_features
from tune_losses.data.torchvision_sets import DEBIAN_FASHION_MNIST
from tune_losses.training import train


def write_idx(path, array, opener=open):
    array = np.asarray(array, dtype=np.uint8)
    magic = 2049 if array.ndim == 1 else 2051
    with opener(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes())


def fake_mnist_arrays(n, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    x = rng.integers(0, 40, (n, 28, 28))
    for i, c in enumerate(y):  # a class-dependent bright bar so the classes are learnable
        x[i, 2 * c : 2 * c + 3, :] = 250
    return x, y


def test_registry_lists_all_data_sets():
    assert {
        "digits",
        "mnist_5k",
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "stanford_cars",
        "caltech101",
        "image_folder",
        "features",
    } <= set(names())


def test_digits_splits_are_stratified_and_seeded():
    a, b = build_dataset("digits", seed=3), build_dataset("digits", seed=3)
    assert torch.equal(a.train.y, b.train.y) and len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.num_classes == 10 and a.input_shape == (1, 8, 8)
    assert not torch.equal(a.train.y, build_dataset("digits", seed=4).train.y)
    half = build_dataset("digits", split="half", seed=0)
    assert abs(len(half.test) - 1797 / 2) < 10


def test_mnist_5k_ships_offline():
    s = build_dataset("mnist_5k", max_per_class=20)
    assert s.input_shape == (1, 28, 28) and len(s.train) == 200 and s.train.x.dtype == torch.uint8


def test_mnist_loads_torchvision_raw_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    x, y = fake_mnist_arrays(60, 0)
    xt, yt = fake_mnist_arrays(30, 1)
    write_idx(raw / "train-images-idx3-ubyte", x)
    write_idx(raw / "train-labels-idx1-ubyte", y)
    write_idx(raw / "t10k-images-idx3-ubyte", xt)
    write_idx(raw / "t10k-labels-idx1-ubyte", yt)
    s = build_dataset("mnist", root=tmp_path)
    assert len(s.train) + len(s.val) == 60 and len(s.test) == 30
    assert torch.equal(s.test.x[:, 0], torch.as_tensor(xt, dtype=torch.uint8))


def test_fashion_mnist_found_as_gz_without_download(tmp_path):
    src = tmp_path / "fashion-mnist"
    src.mkdir()
    x, y = fake_mnist_arrays(40, 2)
    for stem, arr in [
        ("train-images-idx3-ubyte", x),
        ("train-labels-idx1-ubyte", y),
        ("t10k-images-idx3-ubyte", x[:20]),
        ("t10k-labels-idx1-ubyte", y[:20]),
    ]:
        write_idx(src / f"{stem}.gz", arr, opener=gzip.open)
    s = build_dataset("fashion_mnist", root=tmp_path)
    assert (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    assert len(s.test) == 20 and s.class_names[0] == "T-shirt/top"


def test_missing_files_give_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"mnist.*train-images-idx3-ubyte.*MNIST.raw.*download=True"):
        build_dataset("mnist", root=tmp_path)
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        build_dataset("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="caltech101"):
        build_dataset("caltech101", root=tmp_path)
    with pytest.raises(ValueError, match="dataset='nope' is not allowed"):
        build_dataset("nope")


def test_image_folder_half_split(tmp_path):
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        d = tmp_path / f"class{c}"
        d.mkdir()
        for i in range(8):
            img = np.clip(np.array(colour) + rng.integers(-30, 30, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    s = build_dataset("image_folder", root=tmp_path, image_size=16, split="half")
    assert s.class_names == ["class0", "class1", "class2"] and s.input_shape == (3, 16, 16)
    assert len(s.test) == 12 and torch.bincount(s.test.y).tolist() == [4, 4, 4]
    assert s.train.x[0].float().mean() > 0


@pytest.mark.slow  # VGG16 features of 450 images (at most 20 per class and split; all 1797 took 24-32 s)
def test_feature_cache_refuses_random_init_unless_asked(tmp_path):
    with pytest.raises(ValueError, match="--random-init"):
        compute_features("digits", backbone="vgg16", image_size=32, cache_dir=tmp_path, max_per_class=20)
    kw = {"backbone": "vgg16", "random_init": True, "image_size": 32, "cache_dir": tmp_path, "max_per_class": 20}
    path = compute_features("digits", **kw)
    assert path.suffix == ".parquet"
    assert compute_features("digits", **kw) == path
    s, images = load_features(path), build_dataset("digits", max_per_class=20)
    assert s.input_shape == (512,) and s.info["weights"] == "random-init"
    assert [len(s.train), len(s.val), len(s.test)] == [len(images.train), len(images.val), len(images.test)]
    result = train(
        {
            "dataset": {"name": "features", "options": {"path": str(path)}},
            "model": {"name": "mlp"},
            "loss": {"name": "dal", "params": {"a": 10}},
            "epochs": 2,
            "optimizer": {"lr": 0.01},
        }
    )
    assert result["status"] == "completed"


@pytest.mark.slow  # trains on the real data (pytest --durations: ~5 s on an idle 2-CPU machine)
@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_end_to_end_from_debian_package(tmp_path):
    cfg = {
        "dataset": {"name": "fashion_mnist", "root": str(tmp_path), "options": {"max_per_class": 60}},
        "model": {"name": "small_cnn"},
        "loss": {"name": "beta_gamma", "params": {"beta": 4, "gamma": 10}},
        "optimizer": {"name": "adam", "lr": 0.003},
        "epochs": 3,
        "batch_size": 32,
    }
    result = train(cfg)
    assert result["status"] == "completed" and result["test_acc"] > 0.3 and result["test_nmi"] > 0.1


def test_caltech101_loads_torchvision_layout_with_the_half_split(tmp_path):
    rng = np.random.default_rng(1)
    base = tmp_path / "caltech101" / "101_ObjectCategories"
    for c, name in enumerate(["accordion", "airplanes", "BACKGROUND_Google"]):
        d = base / name
        d.mkdir(parents=True)
        for i in range(1, 7):
            img = rng.integers(0, 255, (30 + c, 40, 3)).astype(np.uint8)
            Image.fromarray(img).save(d / f"image_{i:04d}.jpg")
    s = build_dataset("caltech101", root=tmp_path, image_size=24)
    assert s.class_names == ["accordion", "airplanes"]  # torchvision drops the background class
    assert s.input_shape == (3, 24, 24) and len(s.test) == 6 and len(s.train) + len(s.val) == 6
