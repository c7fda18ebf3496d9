"""What a resume needs: the space a sweep recorded on its parent run, the check that a resumed sweep is the same
sweep, and the command that continues it.

A sweep records its resolved space (``space/resolved_space.json``), a hash of it (``space_sha256``) and its
search settings as params. ``--resume`` compares the space it is given with the recorded one, field by field:
the domains and grid values, the searcher, the scheduler, the metric and the fixed training config must be the
same; only the fields of :data:`MAY_CHANGE` may differ (they change neither which trials run nor what they
train). Any other difference is an error naming the field, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path

import yaml

from tune_losses import tracking
from tune_losses.spaces import Space, SpaceError
from tune_losses.tracking import record

from .search import grid_order

log = logging.getLogger(__name__)

#: fields of a space that a resume may change: labels, what a trial may use, how often a failure is retried
MAY_CHANGE = ("name", "description", "resources.", "search.max_failures")


def cli_command() -> list[str]:
    """How to call this CLI again, from any directory: `tune-losses` when this process is that command and the
    shell's PATH finds this very one, else its absolute path (a virtual environment that is not activated);
    from Python (`run_sweep`, `python -m tune_losses.cli`), this interpreter with ``-m tune_losses.cli``."""
    import shutil

    me = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if me is None or me.name != "tune-losses" or not shutil.which(str(me)):
        return [sys.executable, "-m", "tune_losses.cli"]
    found = shutil.which("tune-losses")
    if found and Path(found).resolve() == me.resolve():
        return ["tune-losses"]
    return [str(me.resolve())]


def resume_command(
    path: Path,
    name: str,
    uri: str,
    storage: str,
    address: str | None,
    overrides: dict,
    dataset: str | None,
    warm_start: str | None = None,
) -> str:
    """`tune-losses sweep ... --resume` with what this sweep was started with: the space, name, store (its
    password shown as ***: put it back, or set MLFLOW_TRACKING_URI), storage, address, --warm-start and every
    --set (a resume refuses another space). "" when it cannot be written (status then prints a generic one)."""
    from tune_losses.spaces import BUNDLED

    try:
        bundled = path.resolve().parent == BUNDLED.resolve()
        parts = [*cli_command(), "sweep", path.stem if bundled else str(path.resolve()), "--name", name]
        parts += ["--tracking-uri", tracking.redact(uri), "--storage", storage]
        if address:
            parts += ["--address", address]
        if dataset:
            parts += ["--dataset", dataset]
        if warm_start:
            parts += ["--warm-start", warm_start]
        for key, value in overrides.items():
            if key == "paper_dataset" or (dataset and key == "train.dataset"):
                continue  # what --dataset sets
            # YAML as --set reads it (1e-05 must not come back as a string, as JSON's spelling would)
            text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
            parts += ["--set", f"{key}={text.removesuffix('...').strip()}"]
        return shlex.join(parts + ["--resume"])
    except Exception as exc:  # a value YAML cannot write: the sweep runs without the tag
        log.warning("no resume command recorded for the sweep %r: %s", name, exc)
        return ""


def flat_space(space: Space | dict) -> dict:
    """The space as ``{dotted.path: value}``, JSON-normalised, less what a resume may change."""
    doc = space.model_dump(mode="json") if isinstance(space, Space) else space
    flat = _flatten(json.loads(json.dumps(doc, default=str)))
    return {k: v for k, v in flat.items() if not k.startswith(MAY_CHANGE)}


def _flatten(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}{key}."))
    return out


def space_sha256(space: Space) -> str:
    return hashlib.sha256(json.dumps(flat_space(space), sort_keys=True).encode()).hexdigest()[:16]


def parent_params(space: Space, uri: str, data=None) -> dict[str, str]:
    """The params a sweep records on its parent run: its search, data, model, loss and budget, the protocol, the
    split sizes (with ``data``) and the hashes a resume compares."""
    s = space.search
    params: dict[str, object] = {
        "searcher": s.searcher,
        "scheduler": s.scheduler.name,
        "num_samples": s.num_samples,
        "metric": s.metric,
        "mode": s.mode,
        "max_concurrent": s.max_concurrent,
        "swept": ",".join(space.params),
        "loss": space.train.loss.name,
        "dataset": space.train.dataset.name,
        "model": space.train.model.name,
        "repeats": space.train.repeats,
        "epochs": space.train.epochs,
        "tracking_uri": tracking.redact(uri),
        "search_seed": space.train.seed,
    }
    if s.scheduler.name in ("asha", "halving"):
        name = s.scheduler.name
        params.update(
            {
                f"{name}.max_t": s.scheduler.max_t or space.train.epochs,
                f"{name}.grace_period": s.scheduler.grace_period,
                f"{name}.reduction_factor": s.scheduler.reduction_factor,
            }
        )
    from tune_losses.data.splits import describe
    from tune_losses.reports.protocol import parent_params

    sizes = describe(data) if data is not None else None
    params.update(parent_params(space.model_dump(mode="json"), sizes))  # protocol, selection, split sizes
    train = json.dumps(space.train.model_dump(mode="json"), sort_keys=True, default=str)
    params[record.TRAIN_SHA] = hashlib.sha256(train.encode()).hexdigest()[:16]  # --resume refuses another config
    order = grid_order(space)
    if order is not None:
        params[record.GRID_ORDER] = json.dumps([list(p.values()) for p in order])[:6000]
    params[record.SPACE_SHA] = space_sha256(space)
    return {k: str(v) for k, v in params.items()}


def check_resumable(client, parent, space: Space, uri: str, source: str, data=None) -> None:
    """A resumed sweep must be the sweep it continues (module docstring): SpaceError naming every field that
    differs, before anything is written."""
    recorded = parent.data.params
    now = parent_params(space, uri, data)
    ignored = ("tracking_uri", record.TRAIN_SHA, record.SPACE_SHA)
    changed = [
        f"{k}: {recorded[k]} in the sweep, {v} now"
        for k, v in now.items()
        if k in recorded and recorded[k] != v and k not in ignored
    ]
    hashes = [k for k in (record.SPACE_SHA, record.TRAIN_SHA) if recorded.get(k) not in (None, now[k])]
    if not changed and (hashes or record.SPACE_SHA not in recorded):
        # which fields differ, from the recorded space; a sweep without the artifact: the hash alone
        # a sweep of a version before space_sha256: fields added to the schema since are not changes
        fields = space_changes(client, parent, space, shared_only=record.SPACE_SHA not in recorded)
        changed = fields if fields is not None else [f"the space (its hash {hashes[0]})"] if hashes else []
    if changed:
        raise SpaceError(
            f"{source}: --resume: this space differs from the one the sweep {parent.info.run_name!r} "
            "ran with:\n  " + "\n  ".join(changed) + "\nresume with the same space and --set options (only "
            f"{', '.join(MAY_CHANGE)} may change), or start a new sweep with another --name"
        )


def space_changes(client, parent, space: Space, shared_only: bool = False) -> list[str] | None:
    """The fields in which ``space`` differs from the sweep's recorded space (its space/resolved_space.json
    artifact), or None when the sweep has none (a kill before it was written, or a sweep of an older version).
    ``shared_only``: compare only the fields both have (a space recorded by an older schema)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # an error message follows, no bar
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(parent.info.run_id, "space/resolved_space.json", tmp)
            before = flat_space(json.loads(Path(path).read_text()))
    except Exception:
        return None
    now = flat_space(space)
    fields = set(before) & set(now) if shared_only else set(before) | set(now)
    return [
        f"{k}: {json.dumps(before.get(k))} in the sweep, {json.dumps(now.get(k))} now"
        for k in sorted(fields)
        if before.get(k) != now.get(k)
    ]
