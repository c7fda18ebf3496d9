"""The replicas' metrics from their confusion matrices equal scikit-learn's on the labels behind them."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, normalized_mutual_info_score

from tune_losses.training.metrics import confusion_matrix, confusion_metrics


def cases():
    rng = np.random.default_rng(0)
    yield "random", rng.integers(0, 8, (6, 300)), rng.integers(0, 8, (6, 300))
    truth = rng.integers(0, 5, 200)
    yield "perfect", np.stack([truth, truth]), np.stack([truth, (truth + 1) % 5])  # NMI 1 both (a relabelling)
    yield "one class predicted", np.stack([truth]), np.zeros((1, 200), dtype=int)  # I = 0, F1 of absent classes
    yield "one class both", np.zeros((2, 50), dtype=int), np.zeros((2, 50), dtype=int)  # scikit-learn's limit: 1
    yield "classes never seen", rng.integers(0, 3, (3, 40)), rng.integers(0, 3, (3, 40))  # of 8: 5 absent
    half = np.repeat([0, 1], 50)
    yield "independent", np.stack([half]), np.stack([np.tile([0, 1], 50)])  # I exactly 0
    yield "mostly right", np.stack([truth]), np.stack([np.where(rng.random(200) < 0.9, truth, 7)])


@pytest.mark.parametrize("name,truth,pred", list(cases()), ids=[c[0] for c in cases()])
def test_confusion_metrics_equal_scikit_learn(name, truth, pred):
    cm = confusion_matrix(torch.as_tensor(truth), torch.as_tensor(pred), 8).numpy()
    got = confusion_metrics(cm)
    for k, (t, p) in enumerate(zip(truth, pred)):
        assert got["acc"][k] == pytest.approx(accuracy_score(t, p), abs=1e-12)
        assert got["f1"][k] == pytest.approx(f1_score(t, p, average="macro", zero_division=0), abs=1e-12)
        assert got["nmi"][k] == pytest.approx(normalized_mutual_info_score(t, p), abs=1e-12)
