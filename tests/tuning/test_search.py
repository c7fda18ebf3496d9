"""How a sweep's trials are generated: ASHA over a grid visits it in a seeded random order; repeated grids get a
sample index per repeat (each its own trial key)."""

import itertools

from tune_losses.spaces import load_space
from tune_losses.tracking.ledger import trial_key
from tune_losses.tuning.resume import parent_params
from tune_losses.tuning.search import grid_order, param_space

from helpers import write_space


def test_asha_visits_a_grid_in_a_seeded_random_order(tmp_path):
    space, _, _ = load_space(
        write_space(
            tmp_path / "g.yaml",
            params={"loss.a": {"grid": [3.0, 5.0, 8.0, 10.0, 13.0, 15.0, 20.0]}, "batch_size": {"grid": [16, 32]}},
            search={"scheduler": {"name": "asha", "max_t": 3, "grace_period": 1}},
        )
    )
    order = grid_order(space)
    product = [{"loss.a": a, "batch_size": b} for a, b in itertools.product(space.params["loss.a"].grid, [16, 32])]
    assert sorted(map(str, order)) == sorted(map(str, product)) and order != product
    assert grid_order(space) == order  # the same order on a rerun and a resume
    assert param_space(space)["params"]["grid_search"] == order
    assert parent_params(space, "sqlite:///x")["grid_order"].startswith("[[")
    other, _, _ = load_space(
        write_space(
            tmp_path / "h.yaml",
            params={"loss.a": {"grid": [3.0, 5.0, 8.0, 10.0, 13.0, 15.0, 20.0]}, "batch_size": {"grid": [16, 32]}},
            search={"scheduler": {"name": "asha", "max_t": 3, "grace_period": 1}},
            train={"seed": 1},
        )
    )
    assert grid_order(other) != order  # the order follows the seed


def test_no_reordering_without_asha_or_with_sampled_fields(tmp_path):
    fifo, _, _ = load_space(write_space(tmp_path / "f.yaml"))
    assert grid_order(fifo) is None
    assert param_space(fifo)["params"]["loss.a"] == {"grid_search": [5.0, 15.0]}
    mixed, _, _ = load_space(
        write_space(
            tmp_path / "m.yaml",
            params={"loss.a": {"grid": [5.0, 15.0]}, "optimizer.lr": {"uniform": [0.01, 0.1]}},
            search={"searcher": "random", "scheduler": {"name": "asha", "max_t": 3}},
        )
    )
    assert grid_order(mixed) is None


def test_a_repeated_grid_gives_each_repeat_its_own_trial(tmp_path):
    space, _, _ = load_space(write_space(tmp_path / "r.yaml", search={"num_samples": 3}))
    ps = param_space(space)
    assert ps["sample"] == {"grid_search": [0, 1, 2]}
    keys = {trial_key({"params": {"loss.a": a}, "sample": i}) for a in (5.0, 15.0) for i in range(3)}
    assert len(keys) == 6


def test_a_resumed_optuna_search_knows_the_finished_trials_and_suggests_the_interrupted_first(tmp_path):
    import json

    from tune_losses.tracking.ledger import TrialRecord
    from tune_losses.tuning.search import searcher as make_searcher

    space, _, _ = load_space(
        write_space(
            tmp_path / "o.yaml",
            params={"loss.a": {"uniform": [3.0, 30.0]}},
            search={"searcher": "optuna", "num_samples": 6},
        )
    )
    done = [
        TrialRecord("r1", "k1", "FINISHED", 3, {"val_acc": 0.7}, params={"swept.loss.a": json.dumps(7.5)}),
        TrialRecord("r2", "k2", "FINISHED", 3, {"val_acc": 0.8}, params={"swept.loss.a": json.dumps(21.25)}),
    ]
    todo = [TrialRecord("r3", "k3", "KILLED", 1, {}, params={"swept.loss.a": json.dumps(12.125)})]
    ps = param_space(space)
    searcher = make_searcher(space, ps, done, todo)
    assert searcher.set_search_properties("val_acc", "max", ps)
    first = searcher.suggest("trial_1")
    assert first == {"params": {"loss.a": 12.125}}  # the interrupted trial, to continue from its checkpoint
    assert trial_key(first) == trial_key({"params": {"loss.a": 12.125}})
    values = sorted(t.value for t in searcher.searcher._ot_study.trials if t.value is not None)
    assert values == [0.7, 0.8]  # the finished ones are known to TPE, not run again


def test_a_config_optuna_suggests_again_is_a_trial_of_its_own(tmp_path):
    """Over a one-point space TPE can only repeat itself: each repeat gets the next sample index (its own key, run
    and seeds); resumed, an interrupted repeat is continued, not duplicated."""
    import json

    from tune_losses.tracking.ledger import TrialRecord
    from tune_losses.tuning.search import searcher as make_searcher

    space, _, _ = load_space(
        write_space(
            tmp_path / "c.yaml",
            params={"loss.a": {"choice": [5.0]}},
            search={"searcher": "optuna", "num_samples": 3},
        )
    )
    ps = param_space(space)
    searcher = make_searcher(space, ps, [], [])
    assert searcher.set_search_properties("val_acc", "max", ps)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c.get("sample", 0) for c in configs] == [0, 1, 2]
    assert len({trial_key(c) for c in configs}) == 3
    done = [TrialRecord("r0", "k0", "FINISHED", 3, {"val_acc": 0.7}, params={"swept.loss.a": json.dumps(5.0)})]
    todo = [TrialRecord("r1", "k1", "KILLED", 1, {}, params={"swept.loss.a": json.dumps(5.0), "sample": "1"})]
    resumed = make_searcher(space, ps, done, todo)
    assert resumed.set_search_properties("val_acc", "max", ps)
    assert resumed.suggest("u0") == {"params": {"loss.a": 5.0}, "sample": 1}  # the interrupted repeat
    assert resumed.suggest("u1") == {"params": {"loss.a": 5.0}, "sample": 2}  # then a new one
