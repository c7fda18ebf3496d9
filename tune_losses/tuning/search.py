"""What trials a sweep runs and in what order: Ray Tune's param_space, the scheduler and the search algorithm."""

from __future__ import annotations

import itertools
import json
import random

from tune_losses.spaces import Space
from tune_losses.tracking import record
from tune_losses.tracking.ledger import TrialRecord

from .baseline import grid_points
from .domains import grid_size, to_tune


def max_trials(space: Space) -> int:
    """How many trials the sweep runs at most: optuna's num_samples, else every grid point num_samples times."""
    s = space.search
    return s.num_samples if s.searcher == "optuna" else (grid_size(space) + bool(space.baseline)) * s.num_samples


def scheduler(space: Space):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = space.search.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    if s.name == "halving":
        from .halving import SuccessiveHalving

        rf, max_t = s.reduction_factor, s.max_t or space.train.epochs
        return SuccessiveHalving(max_trials(space), max_t, s.grace_period, rf, space.search.max_concurrent)
    return ASHAScheduler(
        time_attr="epoch",
        max_t=s.max_t or space.train.epochs,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def param_space(space: Space, groups: list[list[dict]] | None = None) -> dict:
    """Ray Tune's param_space. A grid or random search repeated ``num_samples`` times gets a ``sample`` index per
    repeat, so every trial has its own key in the ledger (the same config twice is two trials). ``groups``: the
    fused groups of tuning/fusion.py, one Ray trial each (its members' configs under ``group``)."""
    from ray import tune

    if groups:
        return {"group": tune.grid_search(groups)}
    ps: dict = {"params": {p: to_tune(d) for p, d in space.params.items()}}
    order = grid_order(space)
    if order is not None:
        ps["params"] = tune.grid_search(order)
    points = grid_points(space, order)  # the baseline trial, when the space has one (tuning/baseline.py)
    if points is not None:
        ps["params"] = tune.grid_search(points)
    if space.search.searcher != "optuna" and space.search.num_samples > 1:
        ps["sample"] = tune.grid_search(list(range(space.search.num_samples)))
    return ps


def grid_order(space: Space) -> list[dict] | None:
    """The order in which ASHA visits a space whose every swept field is a grid: a random permutation of the grid's
    points, seeded by ``train.seed`` (so a rerun and a resume visit it the same way; recorded on the parent run as
    ``grid_order``). Asynchronous successive halving promotes a trial that beats those seen before it at a rung:
    a paper's grid listed in ascending order, with quality rising along it, would have every trial beat its
    predecessors and none stopped. None when the space is not such a grid or the scheduler is not ASHA."""
    s = space.search
    if (
        s.scheduler.name != "asha"
        or s.searcher != "grid"
        or not space.params
        or any(d.kind != "grid" for d in space.params.values())
    ):
        return None
    paths = list(space.params)
    grids = [list(space.params[p].grid or []) for p in paths]
    points = [dict(zip(paths, combo)) for combo in itertools.product(*grids)]
    random.Random(space.train.seed).shuffle(points)
    return points


def searcher(space: Space, ps: dict, done: list[TrialRecord], todo: list[TrialRecord], warm=None):
    """The search algorithm. Grid and random search are seeded (Ray's BasicVariantGenerator with random_state), so
    a resumed sweep generates the same trials with the same keys: the ledger's finished ones return at once.
    Optuna's suggestions depend on results, so a resumed Optuna sweep gets a study that already holds the finished
    trials (their recorded metric) and suggests the interrupted ones first, to continue from their checkpoints.
    ``warm`` (--warm-start, tuning/warm_start.py): an earlier sweep's trials, told to the study with their results."""
    seed = space.train.seed
    if space.search.searcher != "optuna":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        # given a searcher, Ray Tune ignores max_concurrent_trials: the generator holds the limit itself
        # successive halving needs every trial made at once (it halves among all): the scheduler holds the limit
        limit = 0 if space.search.scheduler.name == "halving" else space.search.max_concurrent
        return BasicVariantGenerator(random_state=seed, max_concurrent=limit)
    from ray.tune.search.optuna import OptunaSearch

    from .distinct import DistinctTrials

    swept = list(space.params)
    if not done and not todo and warm is None:
        return DistinctTrials(OptunaSearch(seed=seed), swept)
    import optuna

    dists = OptunaSearch.convert_search_space(ps)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        storage=storage, study_name=space.name, direction="maximize" if space.search.mode == "max" else "minimize"
    )

    for point_, reward in zip(warm.points if warm else [], warm.rewards if warm else []):
        study.add_trial(optuna.trial.create_trial(params=point_, distributions=dists, value=reward))
    for trial in done:
        value, point_ = trial.metrics.get(space.search.metric), swept_point(space, trial)
        if value is not None and point_ is not None:
            study.add_trial(optuna.trial.create_trial(params=point_, distributions=dists, value=value))
    for trial in todo:
        point_ = swept_point(space, trial)
        if point_ is not None:  # a run killed before its params were logged holds no point to continue
            study.enqueue_trial(point_)
    return DistinctTrials(OptunaSearch(seed=seed, storage=storage, study_name=space.name), swept, done + todo)


def swept_point(space: Space, trial: TrialRecord) -> dict | None:
    """A recorded trial's swept values, as Optuna's search space names them; None when its run holds none (the
    trial was killed between creating its run and logging its params)."""
    try:
        return {f"params/{p}": json.loads(trial.params[record.swept_param(p)]) for p in space.params}
    except (KeyError, ValueError):
        return None
