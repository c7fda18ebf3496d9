"""`tune-losses best SWEEP`: the best trial by the sweep's metric (mean over repeats), exported as a config that
`tune-losses train` runs as a full training."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .collect import sweep_runs, trial_table


def best_trial(sweep: str, tracking_uri: str | None = None) -> dict:
    client, parent, runs, space = sweep_runs(sweep, tracking_uri)
    metric, mode = space["search"]["metric"], space["search"]["mode"]
    df = trial_table(runs, list(space["params"]))
    done = df[df["status"] == "completed"]
    if done.empty:
        raise ValueError(f"sweep={sweep!r}: no completed trial to choose from")
    means = done.groupby("run_id")[metric].mean()
    run_id = means.idxmax() if mode == "max" else means.idxmin()
    with open(client.download_artifacts(run_id, "config.json")) as f:
        config = json.load(f)
    run = client.get_run(run_id)
    return {"sweep": parent.data.tags.get("tune_losses.sweep", sweep), "sweep_run_id": parent.info.run_id,
            "trial_run_id": run_id, "trial": run.info.run_name, "metric": metric, "value": float(means[run_id]),
            "train": config}


def export(best: dict, path) -> Path:
    path = Path(path)
    header = (f"# Best trial of sweep {best['sweep']}: {best['trial']} ({best['metric']} = {best['value']:.4f},\n"
              f"# mean over repeats). Run it with: tune-losses train {path.name} [--set epochs=300]\n")
    body = {"from_sweep": best["sweep_run_id"], "from_trial": best["trial_run_id"], "train": best["train"]}
    path.write_text(header + yaml.safe_dump(body, sort_keys=False))
    return path
