"""The torchvision sets of the papers: MNIST, Fashion-MNIST, CIFAR-10/100, Stanford Cars, Caltech101.

Real loaders: with the files in ``root`` (or ``download=True`` and the internet) they load; without, a clear
error says which files are missing and where they go. Fashion-MNIST is also found, with no download, in
Debian's ``dataset-fashion-mnist`` package (/usr/share/datasets/fashion-mnist/*.gz), unpacked once into
``root/FashionMNIST/raw/`` where torchvision's loader expects it.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np

from tune_losses.atomic import replacing

from .registry import register
from .splits import make_splits

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def default_root() -> Path:
    """TUNE_LOSSES_DATA, read when used (a warm driver imported this module before the command's environment)."""
    return Path(os.environ.get("TUNE_LOSSES_DATA", Path.home() / ".cache" / "tune_losses" / "data"))


def _root(root) -> Path:
    return Path(root) if root else default_root()


def _missing(name: str, cls, root: Path, files: list[str]) -> ValueError:
    return ValueError(
        f"dataset={name!r}: the files are not in root={str(root)!r}. Expected "
        f"{', '.join(files)} under {root / cls.__name__ / 'raw'} (or another layout that "
        f"torchvision.datasets.{cls.__name__} reads). Put them there, or pass download=True "
        "(--download) on a machine with the internet."
    )


def _stage_fashion_mnist(root: Path) -> None:
    """Unpack Debian's Fashion-MNIST .gz files into root/FashionMNIST/raw if that holds none yet."""
    raw = root / "FashionMNIST" / "raw"
    sources = [root / "fashion-mnist", DEBIAN_FASHION_MNIST]
    for src in sources:
        gz = sorted(src.glob("*-ubyte.gz")) if src.is_dir() else []
        if len(gz) == 4:
            raw.mkdir(parents=True, exist_ok=True)
            for f in gz:
                target = raw / f.name[:-3]
                if not target.exists():
                    with gzip.open(f) as fin, replacing(target) as staged, open(staged, "wb") as fout:
                        shutil.copyfileobj(fin, fout)
            return


def _mnist_like(name, cls_name, root, download, seed, **options):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root = _root(root)
    if name == "fashion_mnist" and not download:
        _stage_fashion_mnist(root)
    try:
        train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
    except RuntimeError:
        raise _missing(name, cls, root, [Path(u).stem for u, _ in cls.resources]) from None
    x, xt = train.data[:, None].numpy(), test.data[:, None].numpy()
    return make_splits(
        x,
        train.targets.numpy(),
        test=(xt, test.targets.numpy()),
        seed=seed,
        class_names=list(train.classes),
        info={"root": str(root)},
        **options,
    )


@register("mnist")
def mnist(root=None, download=False, seed=0, **options):
    return _mnist_like("mnist", "MNIST", root, download, seed, **options)


@register("fashion_mnist")
def fashion_mnist(root=None, download=False, seed=0, **options):
    return _mnist_like("fashion_mnist", "FashionMNIST", root, download, seed, **options)


def _cifar(name, cls_name, root, download, seed, **options):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    root = _root(root)
    try:
        train, test = cls(root, train=True, download=download), cls(root, train=False, download=download)
    except RuntimeError:
        raise ValueError(
            f"dataset={name!r}: {cls.base_folder}/ (from {cls.filename}) is not in "
            f"root={str(root)!r}. Extract the archive there, or pass download=True (--download) "
            "on a machine with the internet."
        ) from None
    to_chw = lambda a: np.ascontiguousarray(a.transpose(0, 3, 1, 2))  # noqa: E731
    return make_splits(
        to_chw(train.data),
        train.targets,
        test=(to_chw(test.data), test.targets),
        seed=seed,
        class_names=list(train.classes),
        info={"root": str(root)},
        **options,
    )


@register("cifar10")
def cifar10(root=None, download=False, seed=0, **options):
    return _cifar("cifar10", "CIFAR10", root, download, seed, **options)


@register("cifar100")
def cifar100(root=None, download=False, seed=0, **options):
    return _cifar("cifar100", "CIFAR100", root, download, seed, **options)


def images_to_array(dataset, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize every (PIL image, label) of a dataset to image_size x image_size RGB uint8 (N, 3, H, W)."""
    xs, ys = [], []
    for img, label in dataset:
        img = img.convert("RGB").resize((image_size, image_size))
        xs.append(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
        ys.append(int(label))
    return np.stack(xs), np.asarray(ys)


@register("stanford_cars")
def stanford_cars(root=None, download=False, seed=0, image_size: int = 224, **options):
    import torchvision.datasets as tvd

    root = _root(root)
    try:
        train = tvd.StanfordCars(root, split="train", download=download)
        test = tvd.StanfordCars(root, split="test", download=download)
    except RuntimeError:
        raise ValueError(
            f"dataset='stanford_cars': stanford_cars/ (devkit, cars_train, cars_test, "
            f"cars_test_annos_withlabels.mat) is not in root={str(root)!r}; torchvision no longer "
            "downloads it, so place the files there by hand."
        ) from None
    x, y = images_to_array(train, image_size)
    xt, yt = images_to_array(test, image_size)
    return make_splits(
        x,
        y,
        test=(xt, yt),
        seed=seed,
        class_names=list(train.classes),
        info={"root": str(root), "image_size": image_size},
        **options,
    )


@register("caltech101")
def caltech101(root=None, download=False, seed=0, image_size: int = 224, split: str = "half", **options):
    import torchvision.datasets as tvd

    root = _root(root)
    try:
        data = tvd.Caltech101(root, target_type="category", download=download)
    except RuntimeError:
        raise ValueError(
            f"dataset='caltech101': caltech101/101_ObjectCategories/ is not in "
            f"root={str(root)!r}. Extract it there, or pass download=True (--download) on a "
            "machine with the internet."
        ) from None
    x, y = images_to_array(data, image_size)
    return make_splits(
        x,
        y,
        seed=seed,
        split=split,
        class_names=list(data.categories),
        info={"root": str(root), "image_size": image_size},
        **options,
    )
