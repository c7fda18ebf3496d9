"""Per-epoch metrics: accuracy, macro-F1 and NMI (the beta/gamma paper's metrics), confusion matrices.

F1 and NMI are scikit-learn's, in float64 (scikit-learn is a dependency anyway: the digits data set). torchmetrics
computes the same two in float32 and is not a dependency."""

import numpy as np
import torch
from sklearn.metrics import f1_score, normalized_mutual_info_score


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, rows = true class, columns = predicted class (batched over leading replica dims)."""
    flat = y_true * num_classes + y_pred
    if flat.dim() == 1:
        return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)
    offsets = torch.arange(flat.shape[0], device=flat.device)[:, None] * num_classes**2
    counts = torch.bincount((flat + offsets).reshape(-1), minlength=flat.shape[0] * num_classes**2)
    return counts.reshape(flat.shape[0], num_classes, num_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {
        "acc": float(np.mean(y_true == y_pred)),
        "f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
    }


def summarize(values) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "min": float(a.min()),
        "max": float(a.max()),
    }
