"""A group of configs that differ only in loss parameters, trained as one vectorised model (training/group.py):
per config and per seed what each config trained alone gives, DAL's update on each replica's own confusion,
divergence of one member, and a group's checkpoint restoring every member exactly."""

import pytest
import torch

from tune_losses.losses import build_loss
from tune_losses.losses.base import param_value
from tune_losses.training import save_checkpoint, train
from tune_losses.training.config import fusible_params
from tune_losses.training.group import group_configs, train_group

BASE = {
    "dataset": {"name": "digits"},
    "optimizer": {"name": "sgd", "lr": 0.05},
    "batch_size": 64,
    "repeats": 2,
    "seed": 10,
}


def config(loss, params, model="mlp", **over):
    return {
        **BASE,
        "model": {"name": model, "params": {"width": 8} if model == "small_cnn" else {}},
        "loss": {"name": loss, "params": params},
        **over,
    }


def alone(cfg):
    reports = []
    final = train(cfg, report=lambda m, s: reports.append((m, s)))
    return final, reports


def fused(cfgs, **kwargs):
    reports = []
    finals = train_group(cfgs, report=lambda per, s: reports.append((per, s)), **kwargs)
    return finals, reports


def assert_same_record(mine: dict, solo: dict, rel: float) -> None:
    """One epoch's metrics of a member against the config alone: the same keys, the same accuracies and
    confusion (the same predictions), losses and the other floats to ``rel``."""
    assert set(mine) == set(solo)
    assert mine["test_confusion"] == solo["test_confusion"]
    for key, value in solo.items():
        if isinstance(value, float):
            assert mine[key] == pytest.approx(value, rel=rel, abs=1e-9), key
        elif key != "test_confusion":
            assert mine[key] == value, key


def member_params(state: dict, replicas: range) -> dict:
    return {n: v[replicas.start : replicas.stop] for n, v in state["replicas"]["params"].items()}


def check_group_equals_alone(cfgs, rel, weight_tol):
    finals, reports = fused(cfgs)
    assert all(f["replicas"] == "VectorReplicas" and f["status"] == "completed" for f in finals)
    group_state = reports[-1][1]()
    r = cfgs[0]["repeats"]
    for m, cfg in enumerate(cfgs):
        solo_final, solo_reports = alone(cfg)
        assert len(solo_reports) == len(reports)
        for (per, _), (solo, _) in zip(reports, solo_reports):
            assert_same_record(per[m], solo, rel)
        assert_same_record(finals[m], solo_final, rel)
        solo_state = solo_reports[-1][1]()["replicas"]
        for name, value in member_params(group_state, range(m * r, (m + 1) * r)).items():
            assert torch.allclose(value, solo_state["params"][name], rtol=weight_tol, atol=weight_tol), name
        for i in range(r):
            assert group_state["replicas"]["losses"][m * r + i].keys() == solo_state["losses"][i].keys()
            for key, value in solo_state["losses"][i].items():  # DAL's soft labels: each replica's own
                assert torch.equal(group_state["replicas"]["losses"][m * r + i][key], value), key
    return finals, reports, group_state


def test_param_value_tells_a_per_replica_parameter_from_a_shared_one():
    """losses/base.py relies on functorch's private is_batchedtensor: a shared value is a float, a stacked one
    stays a tensor under vmap."""
    loss = build_loss("beta_gamma", num_classes=3, beta=2.0, gamma=0.7)
    assert param_value(loss.gamma) == 0.7 and isinstance(param_value(loss.gamma), float)
    seen = []
    torch.vmap(lambda g: seen.append(param_value(g)) or g)(torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert torch.is_tensor(seen[0])
    assert "beta" not in loss.state_dict() and "gamma" not in loss.state_dict()  # checkpoints keep their form


def test_dal_group_equals_each_a_alone_per_seed_with_its_own_soft_labels():
    """DAL's `a` on the MLP head: each member's per-epoch records, weights and soft labels (rebuilt from each
    replica's own training confusion) are those of its `a` trained alone with the same seeds (the third member
    trains seeds 12 and 13, as the second sample of a repeated grid point would)."""
    cfgs = [config("dal", {"a": a}, epochs=3, seed=seed) for a, seed in ((3.0, 10), (10.0, 10), (20.0, 12))]
    finals, reports, state = check_group_equals_alone(cfgs, rel=1e-5, weight_tol=1e-5)
    soft = [state["replicas"]["losses"][i]["soft_labels"] for i in (0, 2, 4)]  # the first seed of each a
    for s, a in zip(soft, (3.0, 10.0, 20.0)):  # S = -R / a off the diagonal: rows of R are rates (sum <= 1)
        rates = -(s - torch.diag(s.diagonal())) * a
        assert (rates >= 0).all() and (rates.sum(dim=1) <= 1 + 1e-6).all() and rates.sum() > 0
    assert not torch.equal(soft[0], soft[1])
    assert [len(per) for per, _ in reports] == [3, 3, 3]


def test_beta_gamma_group_equals_each_pair_alone_including_gamma_zero():
    """beta/gamma pairs on the small CNN; gamma = 0 is cross-entropy's shortcut alone and the fused kernel's
    general path in the group: equal to rounding."""
    cfgs = [
        config("beta_gamma", p, model="small_cnn", epochs=2) for p in ({"beta": 2, "gamma": 3}, {"beta": 4, "gamma": 0})
    ]
    check_group_equals_alone(cfgs, rel=1e-4, weight_tol=1e-4)


def test_cc_group_equals_each_lambda_alone():
    """CC-Loss's lambda on the small CNN with CAM, one epoch at lr 0.002 (tests/training/test_training.py: CC-Loss's
    rounding differences grow fastest)."""
    opt = {"name": "sgd", "lr": 0.002}
    cfgs = [config("cc", {"lambda": lam}, model="small_cnn", epochs=1, optimizer=opt) for lam in (0.0, 0.5, 2.0)]
    check_group_equals_alone(cfgs, rel=1e-4, weight_tol=1e-4)


def test_a_group_checkpoint_restores_every_member_exactly(tmp_path):
    cfgs = [config("dal", {"a": a}, epochs=4) for a in (5.0, 15.0)]
    _, straight = fused(cfgs)

    def stop_after_two(per, state):
        if per[0]["epoch"] == 2:
            save_checkpoint(state(), tmp_path)
            raise KeyboardInterrupt  # the trial is killed here

    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs, report=stop_after_two)
    torch.manual_seed(12345)  # a resumed trial starts in a fresh process
    finals, resumed = fused(cfgs, resume_from=tmp_path)
    assert [per[0]["epoch"] for per, _ in resumed] == [3, 4]
    assert [per for per, _ in resumed] == [per for per, _ in straight[2:]]
    with pytest.raises(ValueError, match=r"checkpoint=.* is not allowed: it holds the group"):
        train_group(list(reversed(cfgs)), resume_from=tmp_path)


def test_a_diverging_member_stops_with_its_reason_and_the_others_go_on(tmp_path):
    """CC-Loss at lambda 1e12 diverges in its first epoch; the member at lambda 0.5 trains on, equal to itself
    alone, and a resume keeps the diverged member stopped."""
    cfgs = [config("cc", {"lambda": lam}, model="small_cnn", epochs=3) for lam in (1e12, 0.5)]
    finals, reports = fused(cfgs)
    assert finals[0]["status"] == "diverged" and "training loss became" in finals[0]["reason"]
    assert finals[0]["epoch"] == 1 and finals[1]["status"] == "completed"
    assert reports[0][0][0] == finals[0]  # reported in the epoch it diverged, with the others' metrics
    assert len(reports) == 3 and all(per[0] is None for per, _ in reports[1:])
    solo_final, solo_reports = alone(cfgs[1])
    for (per, _), (solo, _) in zip(reports, solo_reports):
        assert_same_record(per[1], solo, rel=1e-4)
    solo_diverged = alone(cfgs[0])[0]
    assert solo_diverged["status"] == "diverged" and solo_diverged["epoch"] == 1

    def save_at_the_end(per, state):
        if per[1]["epoch"] == 3:
            save_checkpoint(state(), tmp_path)

    train_group(cfgs, report=save_at_the_end)
    again, more = fused(cfgs, resume_from=tmp_path)  # nothing left to train; the diverged member stays so
    assert again[0] == finals[0] and again[1]["status"] == "completed" and more == []


def test_a_group_is_configs_that_differ_only_in_their_losss_replica_params():
    assert fusible_params("dal") == ("a",) and fusible_params("ce") == ()
    assert set(fusible_params("beta_gamma")) == {"beta", "gamma"} and "lambda" in fusible_params("cc")
    dal = config("dal", {"a": 5.0})
    assert len(group_configs([dal, config("dal", {"a": 8.0})])) == 2
    assert len(group_configs([dal, config("dal", {"a": 8.0}, seed=14)])) == 2  # a repeated grid point's sample
    with pytest.raises(ValueError, match=r"configs\[1\]\.optimizer\.lr is not allowed to differ .* \['a'\]"):
        group_configs([dal, config("dal", {"a": 8.0}, optimizer={"name": "sgd", "lr": 0.1})])
    with pytest.raises(ValueError, match=r"configs\[1\]\.loss\.name is not allowed"):
        group_configs([dal, config("ce", {})])
    with pytest.raises(ValueError, match=r"configs\[1\]\.loss\.params\.alpha is not allowed"):
        group_configs([config("focal", {"gamma": 1.0}), config("focal", {"gamma": 2.0, "alpha": [1.0] * 10})])
    with pytest.raises(ValueError, match=r"configs=\[\] is not allowed"):
        group_configs([])


def test_a_group_of_looped_replicas_equals_each_config_alone_bit_for_bit():
    """vectorize: false trains the group's replicas one after the other, each with its own loss: exactly alone."""
    cfgs = [config("beta_gamma", {"beta": b, "gamma": 2.0}, epochs=2, vectorize=False) for b in (0.5, 4.0)]
    finals, reports = fused(cfgs)
    assert [f["replicas"] for f in finals] == ["LoopReplicas"] * 2
    for m, cfg in enumerate(cfgs):
        solo_final, solo_reports = alone(cfg)
        assert [per[m] for per, _ in reports] == [solo for solo, _ in solo_reports]
        assert finals[m] == solo_final
