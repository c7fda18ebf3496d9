"""A baseline loss trained in the same sweep (the space's ``baseline: ce`` or ``focal``), as one more grid point.

The baseline is a point of the grid whose ``params`` hold only ``{"baseline": NAME}``: its trial key
(tracking/ledger.py ``trial_key``, a hash of params and sample) differs from every swept point's, a repeated grid
(``search.num_samples``) gives it one trial per ``sample`` with that sample's seeds, and the trial trains the
space's fixed config with only the loss replaced (``baseline_config``), so data, model, schedule and seeds are the
swept trials'. Reports (reports/replication.py) find it by the run's ``tune_losses.baseline`` tag and pair its
replicas with each value's by (sample, replica), i.e. by seed.

Where the runner calls this (pure functions, no Ray): ``runner.param_space``: ``points = grid_points(space,
grid_order(space))``; when not None, ``ps["params"] = tune.grid_search(points)``. ``trial.run_trial``: after
``cfg = trial_config(...)``, ``cfg = baseline_config(cfg, config["params"].get(BASELINE_KEY))`` and, for a baseline,
the tag ``{BASELINE_TAG: name}``.
"""

from __future__ import annotations

import itertools

from tune_losses.spaces import Space
from tune_losses.tracking import record

BASELINE_KEY = "baseline"  # the key in a trial's params that makes it the baseline trial
BASELINE_TAG = record.BASELINE  # the run tag reports look for (value: the baseline loss's name)
# each baseline's loss config; focal with the gamma of its paper's comparison (DAL's Table I, LabelMe: gamma 5)
LOSSES: dict[str, dict[str, float]] = {"ce": {}, "focal": {"gamma": 5.0}}  # name -> the loss's params


def grid_points(space: Space, order: list[dict] | None = None) -> list[dict] | None:
    """The grid's points (``order`` when the runner already ordered them, e.g. ASHA's shuffled grid) with the
    baseline point last; None when the space has no baseline (the runner's param_space is then unchanged)."""
    if not space.baseline:
        return None
    if order is None:
        paths = list(space.params)
        grids = [list(d.grid) if d.grid is not None else [d.value] for d in space.params.values()]
        order = [dict(zip(paths, combo)) for combo in itertools.product(*grids)]
    return [*order, {BASELINE_KEY: space.baseline}]


def baseline_config(cfg: dict, baseline: str | None) -> dict:
    """The trial's train config, with the baseline's loss in place of the space's when ``baseline`` is set."""
    if baseline is None:
        return cfg
    if baseline not in LOSSES:
        raise ValueError(f"baseline: {baseline!r} is not allowed; allowed: {sorted(LOSSES)}")
    return {**cfg, "loss": {**cfg["loss"], "name": baseline, "params": dict(LOSSES[baseline])}}
