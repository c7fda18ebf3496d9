"""Figures (matplotlib, PNG): a trial's confusion matrix and learning curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_png(confusion, path) -> None:
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("test confusion matrix")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_png(history: list[dict], path, keys=("train_loss", "val_acc", "test_acc")) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [h.get("train_loss") for h in history], marker="o")
    axes[0].set_title("training loss")
    for key in keys[1:]:
        axes[1].plot(epochs, [h.get(key) for h in history], marker="o", label=key)
    axes[1].set_title("accuracy")
    axes[1].legend()
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
