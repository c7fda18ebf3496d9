"""Figures (matplotlib, PNG): a trial's confusion matrix and learning curves."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_png(confusion, path) -> None:
    """A (C, C) matrix, or one per replica (K, C, C), drawn summed over replicas."""
    cm = np.asarray(confusion)
    cm = cm.sum(axis=0) if cm.ndim == 3 else cm
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


def boxplot_png(df, param: str, metric: str, path, title: str) -> None:
    values = sorted(df[param].dropna().unique())
    data = [df[df[param] == v][metric].dropna().to_numpy() for v in values]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot(data, tick_labels=[f"{v:g}" if isinstance(v, float) else str(v) for v in values])
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def errorbar_png(table, param: str, path, title: str, ylabel: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(table[param], table["mean"], yerr=table["std"], marker="o", capsize=4)
    ax.set_xlabel(param)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def heatmap_png(pivot, path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    im = ax.imshow(pivot.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(pivot.shape[1]), [f"{c:g}" for c in pivot.columns])
    ax.set_yticks(range(pivot.shape[0]), [f"{r:g}" for r in pivot.index])
    ax.set_xlabel(pivot.columns.name)
    ax.set_ylabel(pivot.index.name)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def slice_png(df, params, metric: str, path) -> None:
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.2), squeeze=False)
    for ax, p in zip(axes[0], params):
        ax.scatter(df[p], df[metric], s=14)
        ax.set_xlabel(p)
        ax.set_ylabel(metric)
    fig.suptitle(f"{metric} against each parameter")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_compare_png(curves: dict, path, key: str = "val_acc") -> None:
    """curves: label -> DataFrame indexed by epoch."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, frame in curves.items():
        ax.plot(frame.index, frame[key], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.set_title("learning curves of the best and worst configs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def class_gain_png(gain, path, title: str) -> None:
    """Per-class recall gain (percent points, with CI) of the best config over the baseline, as bars."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(gain) + 1.5), 3.2))
    err = np.vstack([gain["gain_%"] - gain["gain_ci_low_%"], gain["gain_ci_high_%"] - gain["gain_%"]])
    colors = ["tab:green" if g >= 0 else "tab:red" for g in gain["gain_%"]]
    ax.bar(gain["class"].astype(str), gain["gain_%"], yerr=np.nan_to_num(err), color=colors, capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("class")
    ax.set_ylabel("recall gain (points)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
