"""Which trials of a sweep train fused: the grid points that differ only in loss parameters (DAL's ``a``,
beta/gamma, CC-Loss's ``lambda``), and the samples of a repeated grid, as one vectorised model per group
(training/group.py: each config's per-seed results are those of its trial alone, to rounding). Decided from the
validated space alone, before anything starts (no Ray; the loss registry is the one the validation loaded).

A sweep is fused when ``search.fuse`` is auto, the searcher is grid (every config known up front), the scheduler
is fifo (ASHA and halving stop configs one by one; a plateau stop counts finished trials one by one), every swept
field is a loss parameter that the loss lists in ``replica_params`` with a grid (or fixed) domain, replicas are
vectorised, and there are more trials than run at once. The trials are then split into as many groups as run at
once (``search.max_concurrent``, and how many trials of ``resources`` the CPUs / GPUs given hold), so Ray still
spreads the groups over CPUs, GPUs and nodes; a baseline trial (``baseline: ce``) is a group of its own.
Otherwise the sweep runs a trial per config, and ``reason`` says why in one line for the sweep's header.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass

from tune_losses.spaces import Space
from tune_losses.training.config import fusible_params

from .baseline import BASELINE_KEY


@dataclass(frozen=True)
class FusionPlan:
    """``groups``: each group's trials as Ray Tune configs (``{"params": {...}}``, with ``"sample"`` when the grid
    is repeated), every trial in one group; empty when not fused. ``reason``: one line saying why the sweep is not
    fused (None when it is)."""

    groups: list[list[dict]]
    reason: str | None = None

    @property
    def fused(self) -> bool:
        return self.reason is None


def concurrency(space: Space, cpus: float | None = None, gpus: float | None = None) -> int:
    """How many trials run at once: ``search.max_concurrent``, and no more than the CPUs and GPUs given (a
    machine's, a cluster's; None: not limited) hold trials of ``resources``."""
    slots = [space.search.max_concurrent]
    if cpus is not None:
        slots.append(math.floor(cpus / space.resources.cpu + 1e-9))
    if gpus is not None and space.resources.gpu > 0:
        slots.append(math.floor(gpus / space.resources.gpu + 1e-9))
    return max(1, min(slots))


def trials(space: Space) -> list[dict]:
    """Every trial of a grid space, as Ray Tune's configs: the grid's points in the order of ``params`` (fixed
    values included), each ``num_samples`` times with its ``sample`` index when repeated."""
    paths = list(space.params)
    values = [list(d.grid or []) if d.kind == "grid" else [d.value] for d in space.params.values()]
    points = [dict(zip(paths, combo)) for combo in itertools.product(*values)]
    samples = space.search.num_samples
    if samples == 1:
        return [{"params": p} for p in points]
    return [{"params": p, "sample": s} for p in points for s in range(samples)]


def not_fused(space: Space) -> str | None:
    """Why the space's trials cannot train fused, in one line; None when they can."""
    s = space.search
    if s.fuse == "off":
        return "search.fuse: off"
    if s.searcher != "grid":
        return f"searcher {s.searcher} suggests configs one by one (fused trials need searcher grid)"
    if s.scheduler.name != "fifo":
        return f"scheduler {s.scheduler.name} stops configs one by one (fused trials need scheduler fifo)"
    if s.plateau is not None:
        return "a plateau stop counts finished trials one by one (fused trials need no search.plateau)"
    if not space.train.vectorize:
        return "train.vectorize: false trains replicas one by one (nothing to fuse)"
    loss, allowed = space.train.loss.name, fusible_params(space.train.loss.name)
    for path, domain in space.params.items():
        if domain.kind not in ("grid", "value"):
            return f"params.{path} is a {domain.kind} domain (fused trials need grid or fixed values)"
        for part in path.split(","):
            head, _, name = part.partition(".")
            if head != "loss" or name not in allowed:
                return (
                    f"params.{path} sweeps {part}, not a parameter of loss {loss} that replicas may differ in "
                    f"{list(allowed)}"
                )
    return None


def plan_fusion(space: Space, cpus: float | None = None, gpus: float | None = None) -> FusionPlan:
    """The sweep's fused groups, or why it runs a trial per config (see the module's docstring). ``cpus`` and
    ``gpus``: what the sweep's Ray has (None: only ``search.max_concurrent`` limits how many run at once)."""
    reason = not_fused(space)
    if reason is not None:
        return FusionPlan([], reason)
    todo = trials(space)
    n = min(concurrency(space, cpus, gpus), len(todo))
    if n == len(todo):
        return FusionPlan([], f"{len(todo)} trial{'s' * (n > 1)}, all running at once (nothing to fuse)")
    bounds = [(i * len(todo)) // n for i in range(n + 1)]  # sizes differing by at most one
    # the baseline first: the reference of every gain starts at once, and no time budget cuts it before the grid
    return FusionPlan(baseline_groups(space) + [todo[bounds[i] : bounds[i + 1]] for i in range(n)])


def baseline_groups(space: Space) -> list[list[dict]]:
    """The baseline's trials (tuning/baseline.py; one per sample), each a group of one: it trains another loss, so
    it shares no model with the swept configs; tracking/ledger.py ``as_trial`` makes it the unfused trial it is."""
    if not space.baseline:
        return []
    point = {"params": {BASELINE_KEY: space.baseline}}
    samples = space.search.num_samples
    return [[point]] if samples == 1 else [[{**point, "sample": s}] for s in range(samples)]


def group_key(keys: list[str]) -> str:
    """A fused group's checkpoint key, from its members' trial keys (tuning/fused_trial.py; the live view reads
    a lost group's checkpoint by it)."""
    return "group-" + hashlib.sha256(",".join(sorted(keys)).encode()).hexdigest()[:16]
