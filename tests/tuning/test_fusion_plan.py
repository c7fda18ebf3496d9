"""The fusion planner (tuning/fusion.py): which sweeps train fused groups, the groups, and why not otherwise."""

import pytest

from tune_losses.spaces import SpaceError, load_space, parse_space, trial_config
from tune_losses.training.group import group_configs
from tune_losses.tuning.fusion import concurrency, plan_fusion

TRAIN = {
    "dataset": {"name": "digits"},
    "model": {"name": "mlp"},
    "loss": {"name": "dal", "params": {"a": 10.0}},
    "epochs": 2,
    "repeats": 2,
}


def space(params=None, search=None, train=None, resources=None):
    data = {
        "name": "plan",
        "train": {**TRAIN, **(train or {})},
        "params": params if params is not None else {"loss.a": {"grid": [3.0, 5.0, 8.0, 10.0, 15.0]}},
        "search": {"searcher": "grid", "scheduler": {"name": "fifo"}, "max_concurrent": 2, **(search or {})},
    }
    if resources:
        data["resources"] = resources
    return parse_space(data, "plan.yaml")


def configs(sp, group):
    """What the trials of a group train: the trial's config, each sample on its own seeds (tuning/trial.py)."""
    out = []
    for trial in group:
        cfg = trial_config(sp, trial["params"])
        cfg["seed"] += trial.get("sample", 0) * cfg["repeats"]
        out.append(cfg)
    return out


def test_the_dal_table_grid_splits_into_as_many_groups_as_run_at_once():
    sp = load_space("dal_a_table2")[0]
    plan = plan_fusion(sp)
    assert plan.fused and plan.reason is None
    assert [[t["params"]["loss.a"] for t in g] for g in plan.groups] == [
        [5.0, 8.0, 10.0, 11.0],
        [13.0, 15.0, 16.0, 20.0],
    ]
    assert len(plan_fusion(sp, cpus=1).groups) == 1  # one CPU: one trial at a time, the whole grid one group
    assert len(plan_fusion(sp, cpus=16).groups) == 2  # max_concurrent still limits
    for group in plan.groups:
        assert len(group_configs(configs(sp, group))) == 4  # the training side takes each group as it is


def test_joint_paths_and_lambda_grids_fuse_and_samples_join_their_groups():
    bg = load_space("beta_gamma_grid")[0]
    plan = plan_fusion(bg)  # max_concurrent 1: the eight pairs as one group
    assert plan.fused and [len(g) for g in plan.groups] == [8]
    assert plan.groups[0][0] == {"params": {"loss.beta,loss.gamma": [2, 3]}}
    assert len(group_configs(configs(bg, plan.groups[0]))) == 8
    assert [len(g) for g in plan_fusion(load_space("cc_lambda")[0]).groups] == [5]
    repeated = space(params={"loss.a": {"grid": [3.0, 5.0]}}, search={"num_samples": 3})
    plan = plan_fusion(repeated)
    assert [[(t["params"]["loss.a"], t["sample"]) for t in g] for g in plan.groups] == [
        [(3.0, 0), (3.0, 1), (3.0, 2)],
        [(5.0, 0), (5.0, 1), (5.0, 2)],
    ]
    cfgs = group_configs(configs(repeated, plan.groups[0]))
    assert [c.seed for c in cfgs] == [0, 2, 4]  # each sample its own seeds, as its trial alone


@pytest.mark.parametrize(
    "kwargs,reason",
    [
        ({"search": {"fuse": "off"}}, "search.fuse: off"),
        ({"search": {"scheduler": {"name": "asha"}}}, "scheduler asha stops configs one by one"),
        ({"search": {"scheduler": {"name": "halving"}}}, "scheduler halving stops configs one by one"),
        ({"search": {"plateau": {"patience": 2}}}, "a plateau stop counts finished trials one by one"),
        ({"search": {"searcher": "random"}}, "searcher random suggests configs one by one"),
        ({"train": {"vectorize": False}}, "train.vectorize: false"),
        (
            {"params": {"loss.a": {"grid": [3.0, 5.0, 8.0]}, "batch_size": {"grid": [16, 32]}}},
            "params.batch_size sweeps batch_size, not a parameter of loss dal",
        ),
        ({"params": {"optimizer.lr": {"grid": [0.01, 0.1, 0.2]}}}, "params.optimizer.lr sweeps optimizer.lr"),
        ({"params": {"loss.a": {"choice": [3.0, 5.0, 8.0]}}}, "params.loss.a is a choice domain"),
        ({"params": {"loss.a": {"grid": [3.0, 5.0]}}}, "2 trials, all running at once (nothing to fuse)"),
        (
            {
                "train": {"loss": {"name": "focal", "params": {}}},
                "params": {"loss.alpha": {"grid": [[1.0, 1.0], [2.0, 1.0], [1.0, 2.0]]}},  # checked at 2 classes
            },
            "params.loss.alpha sweeps loss.alpha, not a parameter of loss focal that replicas may differ in ['gamma']",
        ),
    ],
)
def test_a_sweep_that_cannot_fuse_runs_as_today_and_says_why(kwargs, reason):
    plan = plan_fusion(space(**kwargs))
    assert not plan.fused and plan.groups == []
    assert reason in plan.reason and "\n" not in plan.reason


def test_how_many_run_at_once_counts_cpus_and_gpus():
    sp = space(search={"max_concurrent": 8}, resources={"cpu": 1, "gpu": 0.25})
    assert concurrency(sp) == 8
    assert concurrency(sp, cpus=2) == 2
    assert concurrency(sp, cpus=16, gpus=1) == 4  # four trials of a quarter GPU
    assert [len(g) for g in plan_fusion(sp, cpus=16, gpus=1).groups] == [1, 1, 1, 2]
    assert [len(g) for g in plan_fusion(sp, cpus=3).groups] == [1, 2, 2]


def test_search_fuse_takes_auto_or_off_only():
    assert space().search.fuse == "auto"
    with pytest.raises(SpaceError, match=r"plan.yaml: invalid search space\n  search.fuse: .*'auto' or 'off'"):
        space(search={"fuse": "always"})


def test_a_baseline_trains_as_a_group_of_its_own_beside_the_fused_grid():
    """`baseline: ce` trains another loss: it cannot share the swept configs' model, so it is one more group (one
    per sample), with the config its unfused trial would have, and runs as that trial (as_trial); the swept grid
    still fuses."""
    from tune_losses.tuning.baseline import baseline_config

    sp = parse_space(
        {
            "name": "plan",
            "train": TRAIN,
            "baseline": "ce",
            "params": {"loss.a": {"grid": [3.0, 5.0, 8.0]}},
            "search": {"searcher": "grid", "scheduler": {"name": "fifo"}, "max_concurrent": 1, "num_samples": 2},
        },
        "plan.yaml",
    )
    plan = plan_fusion(sp)
    assert plan.fused and [len(g) for g in plan.groups] == [1, 1, 6]  # the reference first: no budget cuts it
    assert plan.groups[:2] == [
        [{"params": {"baseline": "ce"}, "sample": 0}],
        [{"params": {"baseline": "ce"}, "sample": 1}],
    ]
    from tune_losses.tracking.ledger import as_trial

    assert as_trial({"group": plan.groups[0]}) == plan.groups[0][0]  # run, named, recorded as the unfused trial
    assert as_trial({"group": plan.groups[2]}) == {"group": plan.groups[2]}
    cfg = baseline_config(trial_config(sp, {}), "ce")
    assert [c.loss.name for c in group_configs([cfg])] == ["ce"]  # the training side takes the baseline alone
