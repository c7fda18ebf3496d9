"""`tune-losses best SWEEP`: the best trial by the metric the sweep selects on (mean over repeats), exported as a
config that `tune-losses train` runs as a full training. A sweep that selects nothing (protocol paper, no
validation split) has no best trial; one that selected on the test split (search.select_on_test) says so."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
import yaml

from .collect import sweep_runs, trial_table
from .protocol import chosen_on, split_of, statement


def ranked(df: pd.DataFrame, metric: str, mode: str) -> pd.Series:
    """The completed trials' mean (over replicas) of ``metric`` by run id, best first."""
    done = df[df["status"] == "completed"]
    return done.groupby("run_id")[metric].mean().dropna().sort_values(ascending=mode == "min")


def best_trial(sweep: str, tracking_uri: str | None = None) -> dict:
    client, parent, runs, space = sweep_runs(sweep, tracking_uri)
    name = parent.data.tags.get("tune_losses.sweep", sweep)
    metric, mode = chosen_on(space), space["search"]["mode"]
    protocol = [line.removeprefix("- ") for line in statement(space, parent.data.params)]
    if metric is None:
        raise ValueError(
            f"sweep={name!r} selects no config: it ran protocol {space.get('protocol')!r} with no "
            "validation split (its tables are test numbers per value). Allowed: a sweep of a space "
            "with protocol: standard and a validation metric (e.g. --set protocol=standard --set "
            "search.metric=val_acc)"
        )
    table = trial_table(client, runs, list(space["params"]))
    means = ranked(table[table["baseline"] == ""], metric, mode)  # the baseline trial is a reference, not a choice
    if means.empty:
        raise ValueError(f"sweep={name!r}: no completed trial to choose from")
    run_id = means.index[0]
    with open(client.download_artifacts(run_id, "config.json")) as f:
        config = json.load(f)
    run = client.get_run(run_id)
    return {
        "sweep": name,
        "sweep_run_id": parent.info.run_id,
        "trial_run_id": run_id,
        "trial": run.info.run_name,
        "metric": metric,
        "split": split_of(metric),
        "value": float(means[run_id]),
        "protocol": protocol,
        "train": config,
    }


def export(best: dict, path) -> Path:
    path = Path(path)
    header = (
        f"# Best trial of sweep {best['sweep']}: {best['trial']} ({best['metric']} = {best['value']:.4f},\n"
        f"# mean over repeats, {best['split']} split). Run it with: tune-losses train {shlex.quote(str(path))} "
        "[--set epochs=300]\n" + "".join(f"# {line}\n" for line in best["protocol"])
    )
    body = {"from_sweep": best["sweep_run_id"], "from_trial": best["trial_run_id"], "train": best["train"]}
    path.write_text(header + yaml.safe_dump(body, sort_keys=False))
    return path
