"""Per-epoch metrics: accuracy, macro-F1 and NMI (the beta/gamma paper's metrics), confusion matrices.

The metrics of K replicas come from their K confusion matrices at once (:func:`confusion_metrics`), in float64:
the values of scikit-learn's ``accuracy_score``, ``f1_score(average="macro", zero_division=0)`` and
``normalized_mutual_info_score`` (arithmetic mean) on the labels behind each matrix, which
tests/training/test_metrics.py checks against scikit-learn itself: one scikit-learn call per replica, metric and
split (each checking its inputs anew) was the largest cost of an epoch of the paper protocol's 60 replicas
(benchmarks/paper_protocol.py)."""

import numpy as np
import torch


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, rows = true class, columns = predicted class (batched over leading replica dims)."""
    flat = y_true * num_classes + y_pred
    if flat.dim() == 1:
        return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)
    offsets = torch.arange(flat.shape[0], device=flat.device)[:, None] * num_classes**2
    counts = torch.bincount((flat + offsets).reshape(-1), minlength=flat.shape[0] * num_classes**2)
    return counts.reshape(flat.shape[0], num_classes, num_classes)


def confusion_metrics(confusion) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and NMI (K,) of K confusion matrices (K, C, C), rows = true, columns = predicted.

    acc = trace / n. F1 of class c = 2 TP_c / (row_c + col_c), 0 where that is 0/0, averaged over the classes
    that occur as truth or prediction (scikit-learn's labels). NMI = I(true; pred) / ((H(true) + H(pred)) / 2)
    from the joint distribution P = confusion / n, with 1 when both labellings have a single value and 0 when
    I is 0 (scikit-learn's limit cases)."""
    cm = np.asarray(confusion, dtype=np.float64)
    n = cm.sum(axis=(1, 2))
    tp, rows, cols = np.diagonal(cm, axis1=1, axis2=2), cm.sum(axis=2), cm.sum(axis=1)
    present = (rows + cols) > 0
    f1_class = np.divide(2 * tp, rows + cols, out=np.zeros_like(tp), where=present)
    p, pt, pp = cm / n[:, None, None], rows / n[:, None], cols / n[:, None]

    def plogq(a, q):  # sum of a * log(q) over the entries where a > 0
        return np.where(a > 0, a * np.log(np.where(a > 0, q, 1.0)), 0.0)

    outer = pt[:, :, None] * pp[:, None, :]
    mi = plogq(p, p / np.where(outer > 0, outer, 1.0)).sum(axis=(1, 2))
    mi = np.where(mi < np.finfo(np.float64).eps * 10, 0.0, mi)  # float noise of an exact 0 (independent labels)
    h_true, h_pred = -plogq(pt, pt).sum(axis=1), -plogq(pp, pp).sum(axis=1)
    single = ((rows > 0).sum(axis=1) == 1) & ((cols > 0).sum(axis=1) == 1)
    nmi = np.divide(mi, (h_true + h_pred) / 2, out=np.zeros_like(mi), where=mi > 0)
    return {
        "acc": tp.sum(axis=1) / n,
        "f1": f1_class.sum(axis=1) / present.sum(axis=1),
        "nmi": np.where(single, 1.0, nmi),
    }


def summarize(values) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
    }
