"""Each epoch's validation and test metrics: per replica from its confusion matrix, then per config (its
replicas' mean, spread and own values), the form a trial reports."""

from __future__ import annotations

import numpy as np

from .metrics import confusion_matrix, confusion_metrics, summarize

SUMMARY_METRICS = ("val_acc", "test_acc", "val_f1", "test_f1", "test_nmi")


def replica_metrics(replicas, splits, num_classes: int) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Every replica's val/test metrics (``{"val_acc": (K,), ...}``) and test confusion matrices (K, C, C). An
    empty split (no validation: val_fraction 0) has no metrics."""
    per: dict[str, np.ndarray] = {}
    test_confusions = None
    for name in ("val", "test"):
        split = getattr(splits, name)
        if len(split) == 0:
            continue
        preds = replicas.predict(split)  # (K, N)
        confusions = confusion_matrix(split.y.expand_as(preds), preds, num_classes).numpy()  # (K, C, C)
        for metric, values in confusion_metrics(confusions).items():
            per[f"{name}_{metric}"] = np.asarray(values)
        if name == "test":
            test_confusions = confusions
    return per, test_confusions


def member_metrics(per: dict[str, np.ndarray], test_confusions, replicas: range) -> tuple[dict, np.ndarray | None]:
    """One config's metrics from its ``replicas`` (indices into ``per``): the mean (the trial's metric) and, with
    more than one replica, std / min / max and each replica's value; and its replicas' test confusions (K, C, C)."""
    out = {}
    for key, all_values in per.items():
        values = all_values[replicas.start : replicas.stop].tolist()
        out[key] = float(np.mean(values))
        if len(replicas) > 1 and key in SUMMARY_METRICS:
            for stat, v in summarize(values).items():
                if stat != "mean":
                    out[f"{key}_{stat}"] = v
            for i, v in enumerate(values):
                out[f"{key}_r{i}"] = v
    # every replica's test confusion (K, C, C): reports give per-class recall over replicas
    confusion = test_confusions[replicas.start : replicas.stop] if test_confusions is not None else None
    return out, confusion


def evaluate(replicas, splits, num_classes: int) -> tuple[dict, np.ndarray | None]:
    """All replicas as one config: their val/test metrics (mean, spread, own values) and replica 0's test
    confusion."""
    per, confusions = replica_metrics(replicas, splits, num_classes)
    return member_metrics(per, confusions, range(replicas.k))
