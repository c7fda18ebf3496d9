"""`tune-losses sweeps` and `tune-losses status SWEEP`: the sweeps of a store and the state of one, read from MLflow
alone (any tracking URI), so another machine sees a running sweep's progress.

A sweep is a parent run tagged ``tune_losses.role=sweep`` and ``tune_losses.sweep=<name>``; its trials are runs
tagged ``tune_losses.role=trial`` whose ``mlflow.parentRunId`` is the parent. A sweep is ``finished`` once its
parent run is (tag ``status`` completed, ``ended_by`` saying why), ``interrupted`` when the driver stopped before
(tag ``status`` interrupted, or the run ended otherwise, or its driver is gone: its process, on the driver's
machine; its heartbeat over two minutes old, elsewhere: tracking/driver.py), and ``running`` while the parent run
is RUNNING and its driver runs. The number of
trials a sweep will run is the grid size times ``num_samples`` (grid and random searchers) or ``num_samples``
(Optuna), from the parent run's tag ``tune_losses.planned`` (written with the run, so it is there before the
params are; sweeps of older versions: from the params or the resolved space); budgets (``time_budget_s``,
``plateau``) can end it sooner. A sweep started with ``--warm-start EARLIER`` (tag ``tune_losses.warm_start``)
also covers the earlier sweep's trials (:func:`earlier_runs`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from datetime import datetime
from pathlib import Path

from . import record, store
from .driver import running_driver
from .record import SWEPT, swept_path

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a listing, not downloads, is shown
WARM_START_TAG = record.WARM_START
#: how many trials the sweep runs at most, a tag of the parent run from its creation on (tuning/runner.py)
PLANNED_TAG = record.PLANNED


def _value(text):
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _experiment(c):
    exp = c.get_experiment_by_name(store.EXPERIMENT)
    return exp.experiment_id if exp is not None else None


def parent_runs(c) -> list:
    """Every sweep's parent run in the store, newest first."""
    exp = _experiment(c)
    if exp is None:
        return []
    return list(
        c.search_runs(
            [exp],
            filter_string=f"tags.`{record.ROLE}` = 'sweep'",
            max_results=1000,
            order_by=["attributes.start_time DESC"],
        )
    )


def find(c, sweep: str):
    """The parent run of a sweep given by name or parent run id; ValueError naming the store when there is none."""
    parent = store.find_sweep(c, sweep)
    if parent is None:
        try:
            parent = c.get_run(sweep)
            if parent.data.tags.get(record.ROLE) != "sweep":
                parent = None
        except Exception:
            parent = None
    if parent is None:
        names = sorted({r.data.tags.get(record.SWEEP, "?") for r in parent_runs(c)})
        raise ValueError(
            f"sweep={sweep!r}: no sweep of that name or parent run id in {store.redact(c.tracking_uri)}"
            f" (sweeps there: {', '.join(names) or 'none'})"
        )
    return parent


def earlier_runs(c, parent, _seen=None) -> list:
    """The trial runs of the sweeps this one was warm-started from (tag ``tune_losses.warm_start``), recursively."""
    seen = _seen if _seen is not None else {parent.info.run_id}
    earlier = parent.data.tags.get(WARM_START_TAG)
    if not earlier:
        return []
    prior = store.find_sweep(c, earlier)
    if prior is None or prior.info.run_id in seen:
        return []
    seen.add(prior.info.run_id)
    return list(store.trial_runs(c, prior.info.run_id, prior.info.experiment_id)) + earlier_runs(c, prior, seen)


def sweep_names(c, runs) -> dict[str, str]:
    """Parent run id -> sweep name, for the parents of ``runs``."""
    out = {}
    for pid in {r.data.tags.get("mlflow.parentRunId") for r in runs} - {None}:
        try:
            out[pid] = c.get_run(pid).data.tags.get(record.SWEEP, pid)
        except Exception:
            out[pid] = pid
    return out


def _space(c, parent) -> dict | None:
    try:
        with open(c.download_artifacts(parent.info.run_id, "space/resolved_space.json")) as f:
            return json.load(f)
    except Exception:
        return None


def planned_trials(c, parent, space: dict | None = None) -> int | None:
    """How many trials the sweep runs at most: the grid's size times num_samples (grid, random), or num_samples."""
    with contextlib.suppress(KeyError, ValueError):
        return int(parent.data.tags[PLANNED_TAG])
    params = parent.data.params
    try:
        samples = int(params["num_samples"])
    except (KeyError, ValueError):
        return None
    if params.get("searcher") == "optuna":
        return samples
    if params.get("grid_points"):
        return int(params["grid_points"]) * samples
    space = space or _space(c, parent)
    if space is None:
        return None
    grid = 1
    for dom in space.get("params", {}).values():
        if isinstance(dom, dict) and dom.get("grid") is not None:
            grid *= len(dom["grid"])
    return grid * samples


def _space_arg(path: str | None) -> str | None:
    """What to give `tune-losses sweep` again: a bundled space's name, or the file's path."""
    if not path:
        return None
    return Path(path).stem if Path(path).parent.name == "search_spaces" else path


def _state(parent, trials) -> str:
    tags, status = parent.data.tags, parent.info.status
    driven = running_driver(parent)  # RUNNING, or being resumed (claimed, not yet RUNNING): tracking/driver.py
    if status == "RUNNING" or driven:  # a resumed sweep is running again, whatever an earlier driver tagged
        # stopped without a word (a kill, a lost machine): --resume continues it
        return "running" if driven else "interrupted"
    if tags.get("status") == "completed" and status == "FINISHED" and tags.get("ended_by") != "interrupted":
        return "finished"
    return "interrupted"


def _fmt_values(values: dict) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def summary(c, parent, with_activity: bool = False) -> dict:
    """The state of one sweep: name, state, why it ended, trials done / planned, best, times, running trials."""
    tags, params = parent.data.tags, parent.data.params
    metric, mode = params.get("metric", "val_acc"), params.get("mode", "max")
    trials = list(store.trial_runs(c, parent.info.run_id, parent.info.experiment_id))
    counts = {"completed": 0, "stopped early": 0, "diverged": 0, "error": 0}
    running, stopped, best = [], [], None
    for run in trials:
        t = run.data.tags
        status = t.get("status", "running")
        if status == "completed":
            counts["stopped early" if t.get("stopped_early") == "true" else "completed"] += 1
        elif status in counts:
            counts[status] += 1
        elif run.info.status == "RUNNING":
            running.append(run)
        elif status == "interrupted":  # stopped by Ctrl-C: --resume continues it
            stopped.append(run)
        value = run.data.metrics.get(metric)
        if (
            value is not None
            and math.isfinite(value)
            and status != "error"
            and (best is None or (value > best[0] if mode == "max" else value < best[0]))
        ):
            values = {swept_path(k): _value(v) for k, v in run.data.params.items() if k.startswith(SWEPT)}
            best = (value, values, run.info.run_name)
    start = parent.info.start_time / 1000 if parent.info.start_time else None
    end = parent.info.end_time / 1000 if parent.info.end_time else None
    state = _state(parent, trials)
    if state == "interrupted":  # (a finished sweep's are left over from a budget: --resume does not run them)
        running += stopped
    out = {
        "name": tags.get(record.SWEEP, parent.info.run_id),
        "run_id": parent.info.run_id,
        "experiment_id": parent.info.experiment_id,
        "state": state,
        "ended_by": tags.get("ended_by"),
        "done": sum(counts.values()),
        "planned": planned_trials(c, parent),
        "counts": counts,
        "running": [],
        "metric": metric,
        "mode": mode,
        "best": best,
        "selects": params.get("selection.metric", metric) != "none",  # protocol paper: a table, no choice
        "started": start,
        "space_file": _space_arg(tags.get("space_file")),
        "duration": ((end if state != "running" and end else time.time()) - start) if start else None,
        "warm_start": tags.get(WARM_START_TAG),
        "resume_command": tags.get("tune_losses.resume_command"),  # written by tuning/sweep.py
        "searcher": params.get("searcher"),
        "scheduler": params.get("scheduler"),
        "epochs": int(params["epochs"]) if params.get("epochs", "").isdigit() else None,
    }
    last_seen = (
        max(
            [r.info.start_time or 0 for r in trials]
            + [r.info.end_time or 0 for r in trials]
            + [parent.info.start_time or 0]
        )
        / 1000
    )
    if with_activity:
        for run in running:
            history = c.get_metric_history(run.info.run_id, metric)
            last = max(history, key=lambda m: m.step) if history else None
            if last is not None:
                last_seen = max(last_seen, last.timestamp / 1000)
            out["running"].append(
                {"trial": run.info.run_name, "epoch": last.step if last else 0, "value": last.value if last else None}
            )
    else:
        out["running"] = [{"trial": r.info.run_name} for r in running]
    out["last_activity"] = last_seen
    return out


def list_sweeps(tracking_uri: str | None = None) -> list[dict]:
    if not store.store_exists(tracking_uri or store.default_tracking_uri()):
        return []  # a read-only command never makes a store (a local one not there holds no sweep)
    c = store.client(tracking_uri, must_exist=True)
    return [summary(c, p) for p in parent_runs(c)]


def sweep_status(sweep: str, tracking_uri: str | None = None) -> dict:
    c = store.client(tracking_uri, must_exist=True)  # a store that is not there is an error, never made here
    out = summary(c, find(c, sweep), with_activity=True)
    out["tracking_uri"] = store.redact(c.tracking_uri)
    return out


def waiting_driver(sweep: str, tracking_uri: str | None, failed: Exception) -> str:
    """What ``status`` says when the store does not answer (``failed``): if a driver of this machine runs the
    sweep, that it runs, since when its trials wait for the store and until when they will (from the driver's
    health file, tracking/driver.py ``local_driver``); else what failed."""
    from .driver import local_driver

    facts = local_driver(tracking_uri or store.default_tracking_uri(), sweep)
    if facts is None:
        return str(failed)
    running = f"sweep {sweep!r} is running (driver process {facts['pid']} on this machine)"
    since, wait = facts.get("store_down_since"), float(facts.get("wait_s") or 0)
    limit = f"{wait / 60:g} min" if wait >= 60 else f"{wait:g} s"
    if since is None:
        waits = f"its driver reached the store at its last probe; its trials wait up to {limit} for it"
    else:
        at, until = (datetime.fromtimestamp(t).strftime("%H:%M:%S") for t in (since, since + wait))
        waits = f"its trials are waiting for the tracking store since {at}, until about {until} ({limit})"
    return f"{running}; {waits} (TUNE_LOSSES_STORE_WAIT_S), then they fail; {failed}"


def format_sweeps(rows: list[dict]) -> str:
    from tabulate import tabulate

    if not rows:
        return "no sweeps in this store"
    table = []
    for r in rows:
        best = r["best"] if r.get("selects", True) else None  # protocol paper: nothing chosen (see `status`)
        table.append(
            [
                r["name"],
                r["state"]
                + (
                    f" ({r['ended_by']})"
                    if r["ended_by"] not in (None, "completed") and r["state"] == "finished"
                    else ""
                ),
                f"{r['done']}/{r['planned'] if r['planned'] is not None else '?'}",
                f"{r['metric']} {best[0]:.4g}" if best else "-",
                _fmt_values(best[1]) if best else "-",
                datetime.fromtimestamp(r["started"]).strftime("%Y-%m-%d %H:%M") if r["started"] else "?",
                _clock(r["duration"]),
            ]
        )
    return tabulate(
        table,
        headers=["sweep", "status", "trials", "best", "best config", "started", "duration"],
        tablefmt="simple",
        disable_numparse=True,
    )


def format_status(s: dict) -> str:
    ended = {
        "completed": "every trial ran",
        "time_budget": "its time budget was spent",
        "plateau": "its best stopped improving (plateau)",
        "interrupted": "interrupted",
    }
    head = f"Sweep {s['name']}: {s['state']}"
    if s["state"] == "finished" and s["ended_by"]:
        head += f" ({ended.get(s['ended_by'], s['ended_by'])})"
    started = datetime.fromtimestamp(s["started"]).strftime("%Y-%m-%d %H:%M:%S") if s["started"] else "?"
    c = s["counts"]
    live = s["state"] == "running"  # the runs of trials a dead driver left RUNNING are interrupted, not running
    lines = [
        head,
        f"  started {started}, {'running for' if s['state'] == 'running' else 'ran'} {_clock(s['duration'])}; "
        f"parent run {s['run_id']} (experiment {s['experiment_id']}) in {s.get('tracking_uri', '')}",
        f"  trials: {s['done']} of {s['planned'] if s['planned'] is not None else '?'} done ({c['completed']} "
        f"completed, {c['stopped early']} stopped early, {c['diverged']} diverged, {c['error']} failed)"
        + (
            f", {len(s['running'])} running"
            if live
            else f", {len(s['running'])} interrupted"
            + ("" if s.get("scheduler") == "halving" else " (they continue on --resume)")
            if s["running"]
            else ""
        ),
    ]
    if s["best"]:
        value, values, trial = s["best"]
        label = "best" if s.get("selects", True) else "top (a table of test numbers: nothing is selected)"
        lines.append(f"  {label} {s['metric']}: {value:.4g} with {_fmt_values(values)} ({trial})")
    if s["warm_start"]:
        lines.append(f"  warm-started from sweep {s['warm_start']} (its trials are in this sweep's report)")
    for r in s["running"]:
        of = f"/{s['epochs']}" if s["epochs"] else ""
        value = f", {s['metric']} {r['value']:.4g}" if r.get("value") is not None else ""
        word = "running" if live else "interrupted"
        lines.append(f"  {word}: {r['trial']}: epoch {r.get('epoch', 0)}{of}{value}")
    if s["state"] == "running":
        idle = time.time() - s["last_activity"]
        lines.append(
            f"  last activity {_clock(idle)} ago"
            + (" (if its driver was killed, continue it with `tune-losses sweep SPACE --resume`)" if idle > 600 else "")
        )
    elif s["state"] == "interrupted" and s.get("scheduler") == "halving":  # its rungs are the driver's only
        lines.append(
            "  a halving sweep cannot be resumed: its finished trials stay in MLflow (`tune-losses report "
            f"{s['name']}` tables them); start it again with another --name"
        )
    elif s["state"] == "interrupted":
        space = s.get("space_file") or "SPACE"
        again = s.get("resume_command") or f"tune-losses sweep {space} --name {s['name']} --resume"
        lines.append(f"  continue it with `{again}`")
        if "//***@" in again:
            lines.append("  (the store's credentials are not recorded: put them in place of ***)")
    return "\n".join(lines)


def ui_url(base: str, tracking_uri: str | None = None, sweep: str | None = None) -> str:
    """The MLflow UI page to open: the experiment's runs table, or with ``sweep`` its parent run's page."""
    ml = "workflowType=machine_learning"  # MLflow 3's UI shows runs tables (not GenAI traces) with it
    uri = tracking_uri or store.default_tracking_uri()
    if uri.startswith("sqlite:///") and not sweep and not Path(uri.removeprefix("sqlite:///")).is_file():
        return f"{base}/#/experiments?{ml}"  # nothing recorded yet: the UI creates the store
    c = store.client(uri, must_exist=True)  # never made by a read-only command
    if sweep:
        parent = find(c, sweep)
        return f"{base}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?{ml}"
    exp = _experiment(c)
    return f"{base}/#/experiments/{exp}/runs?{ml}" if exp is not None else f"{base}/#/experiments?{ml}"
