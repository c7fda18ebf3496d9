"""A trial's run name (tracking/callback.py trial_name), what the MLflow UI, the live view and status show."""

import pytest

from tune_losses.tracking.callback import trial_name


@pytest.mark.parametrize(
    "loss, values, name",
    [
        ("dal", {"loss.a": 15.0, "batch_size": 32}, "dal a=15 bs=32"),
        ("cc", {"loss.lambda": 0.123456, "optimizer.lr": 0.001}, "cc lambda=0.1235 lr=0.001"),
        # a joint path names each part with its own value (it read "gamma=[2, 3]": beta's value under gamma's name)
        ("beta_gamma", {"loss.beta,loss.gamma": [2, 3]}, "beta_gamma beta=2 gamma=3"),
        ("beta_gamma", {"loss.beta,loss.gamma": [4.0, 10.5]}, "beta_gamma beta=4 gamma=10.5"),
    ],
)
def test_a_run_is_named_by_its_swept_values(loss, values, name):
    assert trial_name(loss, values) == name
