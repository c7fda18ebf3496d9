"""How a sweep's trials are generated: ASHA over a grid visits it in a seeded random order; repeated grids get a
sample index per repeat (each its own trial key)."""

import itertools

from tune_losses.spaces import load_space
from tune_losses.tracking.ledger import trial_key
from tune_losses.tuning.runner import _parent_params, grid_order, param_space

from helpers import write_space


def test_asha_visits_a_grid_in_a_seeded_random_order(tmp_path):
    space, _, _ = load_space(write_space(tmp_path / "g.yaml", params={
        "loss.a": {"grid": [3.0, 5.0, 8.0, 10.0, 13.0, 15.0, 20.0]}, "batch_size": {"grid": [16, 32]}},
        search={"scheduler": {"name": "asha", "max_t": 3, "grace_period": 1}}))
    order = grid_order(space)
    product = [{"loss.a": a, "batch_size": b} for a, b in itertools.product(space.params["loss.a"].grid, [16, 32])]
    assert sorted(map(str, order)) == sorted(map(str, product)) and order != product
    assert grid_order(space) == order  # the same order on a rerun and a resume
    assert param_space(space)["params"]["grid_search"] == order
    assert _parent_params(space, "sqlite:///x")["grid_order"].startswith("[[")
    other, _, _ = load_space(write_space(tmp_path / "h.yaml", params={
        "loss.a": {"grid": [3.0, 5.0, 8.0, 10.0, 13.0, 15.0, 20.0]}, "batch_size": {"grid": [16, 32]}},
        search={"scheduler": {"name": "asha", "max_t": 3, "grace_period": 1}}, train={"seed": 1}))
    assert grid_order(other) != order  # the order follows the seed


def test_no_reordering_without_asha_or_with_sampled_fields(tmp_path):
    fifo, _, _ = load_space(write_space(tmp_path / "f.yaml"))
    assert grid_order(fifo) is None
    assert param_space(fifo)["params"]["loss.a"] == {"grid_search": [5.0, 15.0]}
    mixed, _, _ = load_space(write_space(tmp_path / "m.yaml", params={
        "loss.a": {"grid": [5.0, 15.0]}, "optimizer.lr": {"uniform": [0.01, 0.1]}},
        search={"searcher": "random", "scheduler": {"name": "asha", "max_t": 3}}))
    assert grid_order(mixed) is None


def test_a_repeated_grid_gives_each_repeat_its_own_trial(tmp_path):
    space, _, _ = load_space(write_space(tmp_path / "r.yaml", search={"num_samples": 3}))
    ps = param_space(space)
    assert ps["sample"] == {"grid_search": [0, 1, 2]}
    keys = {trial_key({"params": {"loss.a": a}, "sample": i}) for a in (5.0, 15.0) for i in range(3)}
    assert len(keys) == 6
