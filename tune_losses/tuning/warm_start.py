"""`tune-losses sweep SPACE --warm-start EARLIER`: start Optuna from an earlier sweep's results, read from MLflow.

Every finished trial of the earlier sweep (and of the sweeps it was itself warm-started from) becomes a point with
its result: its swept values (params ``swept.<path>``, JSON) and the last value of this space's metric. Ray Tune's
``OptunaSearch(points_to_evaluate=..., evaluated_rewards=...)`` adds them to the Optuna study as completed trials,
so TPE starts from them instead of re-running them. A trial stopped early by ASHA counts with its last value, as
Ray's OptunaSearch counts the new sweep's own stopped trials.

A point must lie in the new space, else it is skipped with the reason: each path the new space sweeps takes the
earlier trial's swept value, or, when the earlier sweep did not sweep it, the value its config had; that value must
lie in the path's domain (a choice's values, a range's bounds, a quniform's steps, a randint's integers). A path the
earlier sweep swept but the new space does not must have the value the new space fixes. Trials that diverged,
failed or have no value of the metric are skipped too. Fixed settings that differ between the two sweeps (e.g.
``epochs``) are listed as notes: their results are used, but were measured under those settings.

Only the optuna searcher takes a warm start: a grid or random search does not learn from results, and Ray's
grid cannot leave out points already run, so ``--warm-start`` with them is refused before anything starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tune_losses.spaces import Domain, Space, SpaceError, param_target, trial_config
from tune_losses.tracking.record import SWEPT, swept_param, swept_path


@dataclass
class WarmStart:
    sweep: str
    points: list[dict] = field(default_factory=list)  # flattened as OptunaSearch takes them: {"params/loss.a": 15.0}
    rewards: list[float] = field(default_factory=list)
    used: list[str] = field(default_factory=list)  # the earlier trials' names, one per point
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (trial, why)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        lines = [
            f"Warm start from sweep {self.sweep!r}: {len(self.points)} earlier trial(s) given to Optuna with "
            f"their results, {len(self.skipped)} skipped"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return lines


def check_searcher(space: Space, source: str = "--warm-start") -> None:
    if space.search.searcher != "optuna":
        raise SpaceError(
            f"{source}: search.searcher is {space.search.searcher!r}; a warm start needs searcher "
            "optuna (a grid or random search does not learn from earlier results: run the new points "
            "as their own sweep, or use searcher: optuna with choice/range domains)"
        )


def _parse(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return yaml.safe_load(text)


def _get(tree: dict, keys: tuple[str, ...]):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def in_domain(value, dom: Domain):
    """(value as the domain holds it, None) when ``value`` lies in ``dom``, else (None, why)."""
    kind = dom.kind
    if kind in ("value", "grid", "choice"):
        allowed = [dom.value] if kind == "value" else list(getattr(dom, kind))
        for a in allowed:
            if _same(value, a):
                return a, None
        return None, f"{value!r} is not one of {allowed}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None, f"{value!r} is not a number ({kind} {list(getattr(dom, kind))})"
    lo, hi = getattr(dom, kind)[:2]
    if kind == "randint":
        if value != int(value) or not lo <= value < hi:
            return None, f"{value!r} is not an integer in [{lo}, {hi})"
        return int(value), None
    if not lo <= value <= hi:
        return None, f"{value!r} is outside [{lo}, {hi}]"
    if kind == "quniform" and dom.quniform is not None:
        k = (value - lo) / dom.quniform[2]
        if abs(k - round(k)) > 1e-8:
            return None, f"{value!r} is not on quniform's steps of {dom.quniform[2]} from {lo}"
    return float(value), None


def _trial_value(params: dict, path: str):
    """The value an earlier trial had at ``path`` (a joint path: the list of its parts' values)."""
    if swept_param(path) in params:
        return _parse(params[swept_param(path)])
    parts = [_parse(params.get(".".join(param_target(p)))) for p in path.split(",")]
    return parts if "," in path else parts[0]


def from_runs(name: str, runs: list, earlier_space: dict | None, space: Space) -> WarmStart:
    """The warm start of ``space`` from the trial ``runs`` of the earlier sweep ``name``."""
    ws = WarmStart(name)
    metric = space.search.metric
    fixed = trial_config(space, {})
    new_parts = {part for p in space.params for part in p.split(",")}
    for run in runs:
        trial, tags, params = run.info.run_name, run.data.tags, run.data.params
        status = tags.get("status", "running")
        if status != "completed":
            ws.skipped.append((trial, f"status {status}"))
            continue
        value = run.data.metrics.get(metric)
        if value is None or not math.isfinite(value):
            ws.skipped.append((trial, f"no finite {metric}"))
            continue
        point, why = {}, None
        for path, dom in space.params.items():
            v = _trial_value(params, path)
            if v is None or (isinstance(v, list) and None in v):
                why = f"{path}: the earlier trial has no value for it"
                break
            v, why = in_domain(v, dom)
            if why:
                why = f"{path} = {why}"
                break
            if dom.kind != "value":  # a fixed value is no parameter of the Optuna study
                point[f"params/{path}"] = v
        if why is None:
            for key in params:
                if not key.startswith(SWEPT):
                    continue
                path = swept_path(key)
                for part, v in zip(path.split(","), _parse(params[key]) if "," in path else [_parse(params[key])]):
                    if part not in new_parts and not _same(v, _get(fixed, param_target(part))):
                        why = f"{part} = {v!r} was swept; this space fixes it at {_get(fixed, param_target(part))!r}"
                        break
                if why:
                    break
        if why:
            ws.skipped.append((trial, why))
            continue
        ws.points.append(point)
        ws.rewards.append(float(value))
        ws.used.append(trial)
    if earlier_space is not None:
        from tune_losses.tracking.callback import flatten

        swept = {
            ".".join(param_target(part))
            for p in list(space.params) + list(earlier_space.get("params", {}))
            for part in p.split(",")
        }
        before, now = flatten(earlier_space.get("train", {})), flatten(space.train.model_dump(mode="json"))
        for key in sorted(set(before) | set(now)):
            if key not in swept and not key.startswith("plugins") and not _same(before.get(key), now.get(key)):
                ws.notes.append(
                    f"{key} was {before.get(key)!r} in sweep {name!r}, is {now.get(key)!r} here: its "
                    "results are used as they are"
                )
        if earlier_space.get("search", {}).get("metric") not in (None, metric):
            ws.notes.append(
                f"sweep {name!r} searched on {earlier_space['search']['metric']}; its trials' {metric} is used"
            )
    return ws


def load(earlier: str, space: Space, tracking_uri: str | None = None) -> WarmStart:
    """Read sweep ``earlier`` from MLflow and make ``space``'s warm start; SpaceError when it cannot be."""
    from tune_losses import tracking
    from tune_losses.tracking import sweeps

    check_searcher(space)
    uri = tracking_uri or tracking.default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise SpaceError(
            f"--warm-start: no sweep named {earlier!r}: the tracking store "
            f"{uri.removeprefix('sqlite:///')} does not exist"
        )
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, earlier)
    if parent is None:
        raise SpaceError(
            f"--warm-start: no sweep named {earlier!r} in the tracking store {tracking.redact(c.tracking_uri)}"
        )
    runs = list(tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id))
    runs += sweeps.earlier_runs(c, parent)
    ws = from_runs(earlier, runs, sweeps._space(c, parent), space)
    if not ws.points:
        raise SpaceError(
            f"--warm-start: none of the {len(runs)} trial(s) of sweep {earlier!r} fits this space "
            "(" + "; ".join(f"{n}: {w}" for n, w in ws.skipped[:5]) + ")"
        )
    return ws
