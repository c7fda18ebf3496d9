"""`tune-losses sweep`: a Ray Tune Tuner over `train`, ASHA and Optuna, every trial recorded in MLflow."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import Metric, Param, RunTag

from tune_losses import tracking
from tune_losses.spaces import Space, SpaceError, load_space
from tune_losses.tracking.callback import LedgerCallback
from tune_losses.tracking.driver import DRIVER_TAG, DriverLock, claim, driver_tag, running_driver
from tune_losses.tracking.ledger import Ledger, TrialRecord, retrying
from tune_losses.tracking.sweeps import PLANNED_TAG
from tune_losses.training.checkpoint import FILENAME

from . import preflight
from .baseline import BASELINE_KEY, grid_points
from .domains import grid_size, to_tune

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    best_config: dict | None
    best_metric: float | None
    summary: dict = field(default_factory=dict)
    results: object = None  # ray.tune.ResultGrid
    report: Any = None  # tune_losses.reports.build.Report


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def max_trials(space: Space) -> int:
    """How many trials the sweep runs at most: optuna's num_samples, else every grid point num_samples times."""
    s = space.search
    return s.num_samples if s.searcher == "optuna" else (grid_size(space) + bool(space.baseline)) * s.num_samples


def _scheduler(space: Space):
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


def param_space(space: Space) -> dict:
    """Ray Tune's param_space. A grid or random search repeated ``num_samples`` times gets a ``sample`` index per
    repeat, so every trial has its own key in the ledger (the same config twice is two trials)."""
    from ray import tune

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


def _searcher(space: Space, ps: dict, done: list[TrialRecord], todo: list[TrialRecord], warm=None):
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

    def point(record: TrialRecord) -> dict:
        return {f"params/{p}": json.loads(record.params[f"swept.{p}"]) for p in space.params}

    for point_, reward in zip(warm.points if warm else [], warm.rewards if warm else []):
        study.add_trial(optuna.trial.create_trial(params=point_, distributions=dists, value=reward))
    for record in done:
        value = record.metrics.get(space.search.metric)
        if value is not None:
            study.add_trial(optuna.trial.create_trial(params=point(record), distributions=dists, value=value))
    for record in todo:
        study.enqueue_trial(point(record))
    return DistinctTrials(OptunaSearch(seed=seed, storage=storage, study_name=space.name), swept, done + todo)


def _create_parent(client, exp_id: str, name: str, tags: dict) -> str:
    """The parent run, created once even when a create is retried after it reached the store (found again by a
    tag unique to this invocation)."""
    attempt = uuid.uuid4().hex
    tags = {**tags, "tune_losses.attempt": attempt}

    def once():
        filt = f"tags.`tune_losses.attempt` = '{attempt}'"
        found = client.search_runs([exp_id], filter_string=filt)
        if not found:
            client.create_run(exp_id, run_name=name, tags=tags)
            found = client.search_runs([exp_id], filter_string=filt)
        return found

    found = sorted(retrying(once), key=lambda r: (r.info.start_time or 0, r.info.run_id))
    for dup in found[1:]:
        retrying(client.delete_run, dup.info.run_id)
    return found[0].info.run_id


def _cli() -> list[str]:
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


#: the command that continues the sweep, a tag of its parent run (`tune-losses status` prints it)
RESUME_TAG = "tune_losses.resume_command"


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
        parts = [*_cli(), "sweep", path.stem if bundled else str(path.resolve()), "--name", name]
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


def _one_parent_per_name(client, exp_id: str, name: str, parent_id: str, path: Path) -> None:
    """Two commands that start a sweep of the same name at the same moment both found no parent and both created
    one (on one machine the driver lock stops the second before that; this is for drivers on two machines): a
    command that sees a parent besides its own deletes its own and stops, before any trial, checkpoint or param
    is written. No clock is compared: each looks after it created, so they cannot both see only their own; at
    worst both stop."""
    filt = f"tags.`tune_losses.sweep` = '{name}' and tags.`tune_losses.role` = 'sweep'"
    others = [r for r in retrying(client.search_runs, [exp_id], filter_string=filt) if r.info.run_id != parent_id]
    if others:
        retrying(client.delete_run, parent_id)
        raise SpaceError(
            f"{path}: a sweep named {name!r} was started at the same moment by another command (parent run "
            f"{others[0].info.run_id}); follow it with `tune-losses status {name}`, or give this one another --name"
        )


def _parent_params(space: Space, uri: str, data=None) -> dict:
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
    params["train_sha256"] = hashlib.sha256(train.encode()).hexdigest()[:16]  # --resume refuses another config
    order = grid_order(space)
    if order is not None:
        params["grid_order"] = json.dumps([list(p.values()) for p in order])[:6000]
    return {k: str(v) for k, v in params.items()}


def check_resumable(parent, space: Space, uri: str, source: str, data=None) -> None:
    """A resumed sweep must be the sweep it continues: the same search, data, model, loss and budget."""
    recorded = parent.data.params
    changed = [
        f"{k}: {recorded[k]} in the sweep, {v} now"
        for k, v in _parent_params(space, uri, data).items()
        if k in recorded and recorded[k] != v and k not in ("tracking_uri", "train_sha256")
    ]
    if not changed and recorded.get("train_sha256") not in (None, _parent_params(space, uri)["train_sha256"]):
        changed = _train_changes(parent, space, uri) or ["train: the training config (its hash train_sha256)"]
    if changed:
        raise SpaceError(
            f"{source}: --resume: this space differs from the one the sweep {parent.info.run_name!r} "
            "ran with:\n  " + "\n  ".join(changed) + "\nresume with the same space and --set "
            "options, or start a new sweep with another --name"
        )


def _train_changes(parent, space: Space, uri: str) -> list[str]:
    """Which fields of `train` differ from the sweep's (its space/resolved_space.json artifact)."""
    from tune_losses.tracking.callback import flatten

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = tracking.client(uri).download_artifacts(parent.info.run_id, "space/resolved_space.json", tmp)
            before = flatten({"train": json.loads(Path(path).read_text())["train"]})
    except Exception:  # no artifact (an older sweep, a kill before it was written): the hash says enough
        return []
    now = flatten({"train": json.loads(json.dumps(space.train.model_dump(mode="json"), default=str))})
    return [
        f"{k}: {before.get(k)} in the sweep, {now.get(k)} now"
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k)
    ]


def _start_parent(
    client,
    exp_id: str,
    space: Space,
    path: Path,
    text: str,
    name: str,
    uri: str,
    parent_id: str | None = None,
    data=None,
    resume_cmd: str = "",
) -> str:
    """Create the parent run (or, resuming, complete one whose creation a kill cut short): params and the space
    file; every write may be repeated. ``resume_cmd``: what continues the sweep (:func:`resume_command`)."""
    resuming = parent_id is not None
    if parent_id is None:
        tags = {
            "tune_losses.sweep": name,
            "tune_losses.role": "sweep",
            "mlflow.runName": name,
            "git_commit": git_commit(),
            "space_file": str(path),
            "study": space.study or "",
            "status": "running",
            # with the run itself: a reader (`status`) sees how many trials are planned before the params are
            # logged, and after a kill between the two writes
            PLANNED_TAG: str(max_trials(space)),
            "heartbeat": f"{time.time():.0f}",  # the first beat (tracking/driver.py Heartbeat beats from here)
            DRIVER_TAG: driver_tag(),
            RESUME_TAG: resume_cmd,
        }
        parent_id = _create_parent(client, exp_id, name, tags)
        _one_parent_per_name(client, exp_id, name, parent_id, path)
    # resuming: only what a cut-short creation left out (a param MLflow holds is never rewritten: the same store
    # reached by another URI spelling would otherwise be refused as a changed `tracking_uri`)
    recorded = client.get_run(parent_id).data.params if resuming else {}
    params = [Param(k, v) for k, v in _parent_params(space, uri, data).items() if k not in recorded]
    if params:
        retrying(client.log_batch, parent_id, params=params)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / path.name).write_text(text)
        (Path(tmp) / "resolved_space.json").write_text(json.dumps(space.model_dump(), indent=2, default=str))
        retrying(client.log_artifact, parent_id, str(Path(tmp) / path.name), "space")
        retrying(client.log_artifact, parent_id, str(Path(tmp) / "resolved_space.json"), "space")
    return parent_id


def summarize(results, space: Space) -> dict:
    """How the trials ended, by the rule their MLflow tags follow (tracking/callback.py ``_on_end``: the trial's
    own status, else error / completed; stopped early when completed before the last epoch), counted by the
    function the report counts those tags with (reports/protocol.py), and the epochs run."""
    from tune_losses.reports.protocol import count_trials

    rows, epochs_run = [], 0
    for r in results:
        m = r.metrics or {}
        epoch = int(m.get("epoch", 0) or 0)
        epochs_run += epoch
        status = m.get("trial_status") or ("error" if r.error is not None else "completed")
        rows.append((status, status == "completed" and epoch < space.train.epochs))
    n = len(results)
    return {**count_trials(rows), "epochs_run": epochs_run, "epochs_full_budget": n * space.train.epochs}


class Flag:
    """A threading.Event that Ray Tune can pickle with the run config it saves (a copy starts unset)."""

    def __init__(self):
        self._event = threading.Event()

    def set(self):
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._event = threading.Event()


class Interrupt:
    """Ctrl-C during a sweep. The first stops the sweep through Ray Tune's Stopper API (trials end after their
    current step; each keeps its run and its last checkpoint) and the parent run is tagged ``interrupted``; a
    second exits at once. Ray Tune's own SIGINT handler is turned off (TUNE_DISABLE_SIGINT_HANDLER) so that this
    one sees the first Ctrl-C: Ray Tune would otherwise end the run as if every trial had completed."""

    def __init__(self):
        self.event = Flag()
        self.budget: Any = None  # tuning/budgets.py Budget, told of the interrupt

    def stopper(self, other=None):
        """A Stopper that ends the sweep after a Ctrl-C (combined with ``other``, the space's budgets, if any)."""
        from ray.tune.stopper import CombinedStopper, Stopper

        event = self.event

        class StopOnInterrupt(Stopper):
            def __call__(self, trial_id, result):
                return False

            def stop_all(self):
                return event.is_set()

        return StopOnInterrupt() if other is None else CombinedStopper(StopOnInterrupt(), other)

    def callback(self):
        """A Ray Tune callback that takes SIGUSR1 (a common pre-emption signal) back from Ray Tune, which installs its
        own handler for it whatever TUNE_DISABLE_SIGINT_HANDLER says, once the run has started."""
        from ray.tune import Callback

        handle = self._handle

        class TakeSignals(Callback):
            def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
                if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGUSR1, handle)

        return TakeSignals()

    def _handle(self, sig, frame):
        if self.budget is not None:
            self.budget.interrupted = True  # the live view and the parent's ended_by say so
        if self.event.is_set():
            print(
                "\nInterrupted again: exiting now. Finished trials and checkpoints are kept; resume with --resume.",
                file=sys.stderr,
                flush=True,
            )
            os._exit(130)
        self.event.set()
        print(
            "\nInterrupted: stopping the trials (each keeps its last checkpoint); Ctrl-C again to exit at once.",
            file=sys.stderr,
            flush=True,
        )

    @contextlib.contextmanager
    def catching(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        previous = signal.signal(signal.SIGINT, self._handle)
        usr1 = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        try:
            yield self
        finally:
            if not self.event.is_set():  # after a Ctrl-C the next one still exits at once, until the process ends
                signal.signal(signal.SIGINT, previous)
            if usr1 is not None:
                signal.signal(signal.SIGUSR1, usr1)
            if previous_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env


def _finish_runs(ledger: Ledger, results, epochs: int) -> None:
    """After Ray Tune has ended: a trial run still RUNNING lost its last write (the store was unreachable when the
    trial or the driver ended it); close it from what Ray Tune knows."""
    running = set(ledger.running())
    for r in results:
        m = r.metrics or {}
        run_id = m.get("mlflow_run_id")
        if run_id not in running:
            continue
        epoch = int(m.get("epoch", 0) or 0)
        if r.error is None:
            status = m.get("trial_status") or "completed"
            early = status == "completed" and epoch < epochs
            tags = {"status": status, "stopped_early": str(early).lower()}
            if early:
                tags["stopped_at_epoch"] = str(epoch)
            ledger.set_tags(run_id, tags)
            ledger.set_status(run_id, "FINISHED")
        else:
            ledger.set_tags(run_id, {"status": "error", "reason": str(r.error)[:5000]})
            ledger.set_status(run_id, "FAILED")
        running.discard(run_id)
    for run_id in running:  # Ray Tune never heard of it in this run: it stays resumable
        ledger.set_tags(run_id, {"status": "interrupted"})
        ledger.set_status(run_id, "KILLED")


def _best(space: Space, results, done: list[TrialRecord]) -> tuple[dict | None, float | None]:
    """The best config and its metric (last value) among this run's trials and, for a resumed Optuna sweep, the
    finished trials the study was told about (Ray Tune did not run them again)."""
    metric, sign = space.search.metric, 1.0 if space.search.mode == "max" else -1.0
    found: list[tuple[float, dict]] = []
    candidates = [((r.metrics or {}).get(metric), (r.config or {}).get("params", {})) for r in results]
    candidates = [(value, params) for value, params in candidates if BASELINE_KEY not in params]  # not a choice
    candidates += [
        (r.metrics.get(metric), {p: json.loads(r.params[f"swept.{p}"]) for p in space.params})
        for r in done
        if all(f"swept.{p}" in r.params for p in space.params)
    ]
    for value, config in candidates:
        if isinstance(value, (int, float)) and math.isfinite(value):
            found.append((float(value), config))
    if not found:
        return None, None
    value, config = max(found, key=lambda vc: sign * vc[0])
    return config, value


def run_sweep(
    space_or_path,
    name: str | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
    resume: bool = False,
    dataset: str | None = None,
    overrides: dict | None = None,
    verbose: int = 1,
    num_cpus: int | None = None,
    make_report: bool = True,
    progress: bool = False,
    warm_start: str | None = None,
) -> SweepResult:
    """Validate the space, start (or join) Ray, run the Tuner, record everything in MLflow, return a summary.

    MLflow is the sweep's ledger (tracking/ledger.py): every trial is one child run of the parent, found by a key
    derived from its config. ``resume`` continues the sweep of that name from the ledger alone, whatever Ray
    Tune's own state files hold (torn by a kill, or gone with the storage directory): finished trials are not
    trained again, interrupted ones continue from their checkpoints (or from epoch 1 when the checkpoint is
    gone) in their own runs, and the rest start. ``progress``: show the live view (tuning/progress.py);
    ``warm_start``: an earlier sweep whose trials Optuna starts from (tuning/warm_start.py). One process drives
    a sweep at a time (tracking/driver.py): a second is refused before anything starts.
    """
    with DriverLock() as lock:
        return _run_sweep(
            lock,
            space_or_path,
            name,
            address,
            tracking_uri,
            storage,
            resume,
            dataset,
            overrides,
            verbose,
            num_cpus,
            make_report,
            progress,
            warm_start,
        )


def _run_sweep(
    lock: DriverLock,
    space_or_path,
    name: str | None,
    address: str | None,
    tracking_uri: str | None,
    storage: str | None,
    resume: bool,
    dataset: str | None,
    overrides: dict | None,
    verbose: int,
    num_cpus: int | None,
    make_report: bool,
    progress: bool,
    warm_start: str | None,
) -> SweepResult:
    from . import warm_start as warm_starts
    from .console import header, quiet

    quiet(verbose)
    overrides = dict(overrides or {})
    if dataset:
        overrides["train.dataset"] = {"name": dataset}
    if "train.dataset" in overrides:
        overrides["paper_dataset"] = None  # another data set: a report must not compare with the paper
    if isinstance(space_or_path, Space):
        space, path, text = space_or_path, Path(f"{space_or_path.name}.yaml"), json.dumps(space_or_path.model_dump())
    else:
        space, path, text = load_space(space_or_path, overrides)
    name = name or space.name
    address_option = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    uri = tracking_uri or tracking.default_tracking_uri()
    storage_path = (
        str(Path(storage).resolve())
        if storage and "://" not in storage
        else (storage or str(tracking.run_dir() / "ray"))
    )
    remote_storage = "://" in storage_path
    # Everything that can be wrong is found here, before Ray starts or MLflow is written to.
    preflight.check_sweep_name(name)
    if not remote_storage:
        preflight.check_writable(Path(storage_path), "--storage")
    preflight.check_tracking(uri, resume, name)
    preflight.check_ray_address(address, address_option)
    if resume and space.search.scheduler.name == "halving":  # its rung decisions live in the driver only
        raise SpaceError(
            f"{path}: --resume: the sweep {name!r} runs under scheduler halving, which cannot be resumed (its rung "
            "decisions are not recorded: a resume would decide the first rung again over replayed and part-trained "
            "trials); allowed: --resume of an asha or fifo sweep. Its finished trials stay in MLflow; start a new "
            "sweep with another --name"
        )
    if not address:
        preflight.check_local_resources(space, str(path), num_cpus, _local_gpus())
    lock.acquire(storage_path, name, uri)  # held until run_sweep returns; the kernel drops it if this process dies
    from .workers import RayStart, run_trial

    # Ray starts (its workers importing the trial code) while the driver loads the data and opens the store
    ray_start = RayStart(address, num_cpus, verbose)
    try:
        data = preflight.load_data(space, str(path))
        warm = warm_starts.load(warm_start, space, uri) if warm_start else None
        # opening a SQLite store creates it: a new sweep opens it only once all else is known to be fine (below)
        client = tracking.client(uri) if resume or tracking.store_exists(uri) else None
        parent = tracking.find_sweep(client, name) if client is not None else None
        if resume and parent is None:
            raise SpaceError(f"--resume: no sweep named {name!r} in the tracking store {tracking.redact(uri)}")
        if resume:
            running = running_driver(parent)
            if running:  # two drivers would train the same trials into the same checkpoints
                raise SpaceError(
                    f"--resume: the sweep {name!r} is running: {running}. Follow it with `tune-losses status "
                    f"{name}`; stop it (Ctrl-C) before resuming it"
                )
            check_resumable(parent, space, uri, str(path), data)
        if not resume and parent is not None:
            ended = parent.info.status == "FINISHED" and parent.data.tags.get("ended_by") not in (None, "interrupted")
            raise SpaceError(
                f"--name: a sweep named {name!r} is already in {tracking.redact(uri)}; "
                + (
                    f"it has finished (`tune-losses status {name}`): give this one another --name"
                    if ended
                    else "continue it with --resume, or give this one another --name"
                )
            )
        if progress:
            print(header(space, name, resume), flush=True)  # Ray takes seconds to start
        if address:  # a cluster may lack what the trials need: known before the store is opened
            ray_start.wait()
            preflight.check_ray_resources(space, str(path), "cluster")
        # opening a SQLite store creates it: only once all else is known fine (a local Ray's resources were
        # checked before it started), while a local Ray starts
        client = client or tracking.client(uri)
        if not address:
            ray_start.wait()
            preflight.check_ray_resources(space, str(path), "local Ray")
    except BaseException:
        ray_start.cancel()  # no run was written: stop the Ray this sweep started
        raise

    from ray import tune

    exp_id = tracking.experiment_id(client)
    try:
        again = (
            ""  # a Space object has no file to give the command again
            if isinstance(space_or_path, Space)
            else resume_command(path, name, uri, storage_path, address, overrides, dataset, warm_start)
        )
        claimed = 0
        if resume and parent is not None:
            parent = retrying(client.get_run, parent.info.run_id)  # Ray's start took seconds: read it again
            running = running_driver(parent)
            if running:
                raise SpaceError(
                    f"--resume: the sweep {name!r} is running: {running}. Follow it with `tune-losses status {name}`"
                )
            claimed = claim(client, parent, retrying)  # of two resumes that found it undriven, one goes on
        parent_id = _start_parent(
            client,
            exp_id,
            space,
            path,
            text,
            name,
            uri,
            parent.info.run_id if resume and parent else None,
            data,
            again,
        )
    except BaseException:  # e.g. another command took the name meanwhile: no trial ran; stop this sweep's Ray
        ray_start.cancel()
        raise
    lock.drives(parent_id, client, claimed)  # and beats on it until it has ended
    ledger = Ledger(uri, exp_id, parent_id)
    checkpoints = f"{storage_path.rstrip('/')}/{name}/checkpoints"
    done: list[TrialRecord] = []
    todo: list[TrialRecord] = []
    if warm is not None:
        retrying(client.set_tag, parent_id, "tune_losses.warm_start", warm_start)
        print("\n".join(warm.describe()), flush=True)
    from .budgets import Budget
    from .progress import SweepProgress

    budget = Budget(space.search)
    extra = [budget] + ([SweepProgress(space, budget, bar=None if verbose == 0 else False)] if progress else [])
    if resume and parent is not None:
        records = ledger.trials()
        done = [r for r in records.values() if r.finished]
        todo = [r for r in records.values() if not r.finished]
        lost = [r for r in todo if not remote_storage and not (Path(checkpoints) / r.key / FILENAME).is_file()]
        print(
            f"Resuming sweep {name!r} from MLflow: {len(done)} finished trials kept (not trained again), "
            f"{len(todo) - len(lost)} continue from their checkpoints"
            + (f", {len(lost)} start again from epoch 1 (no checkpoint under {checkpoints})" if lost else ""),
            flush=True,
        )
        resumes = int(parent.data.tags.get("resumes", "0")) + 1
        tags = [
            RunTag("status", "running"),
            RunTag("resumes", str(resumes)),
            RunTag("heartbeat", f"{time.time():.0f}"),
            RunTag(DRIVER_TAG, driver_tag()),
            RunTag(RESUME_TAG, again),
        ]
        retrying(client.log_batch, parent_id, tags=tags)  # a fresh heartbeat before RUNNING: never read as stale
        retrying(client.update_run, parent_id, status="RUNNING")
    space_json = space.model_dump(mode="json")
    sweep = {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent_id, "checkpoints": checkpoints}
    interrupt = Interrupt()
    callback = LedgerCallback(ledger, space.train.epochs, interrupt.event)
    callback.budget, callback.scheduler = budget, space.search.scheduler.name
    interrupt.budget = budget
    # the splits go once into Ray's object store; trials on every node read them from there
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, space_json=space_json, sweep=sweep, data=data),
        {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
    )
    ps = param_space(space)
    s = space.search
    num_samples = 1 if s.searcher != "optuna" else max(s.num_samples - len(done), 0)
    tuner = tune.Tuner(
        trainable,
        param_space=ps,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            scheduler=_scheduler(space),
            search_alg=_searcher(space, ps, done, todo, warm),
            num_samples=num_samples,
            # grid and random: the generator holds the limit (_searcher); Ray Tune warns if given it as well
            max_concurrent_trials=s.max_concurrent if s.searcher == "optuna" else None,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[callback, interrupt.callback(), *extra],
            verbose=verbose,
            stop=interrupt.stopper(budget.stopper),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
        ),
    )
    try:
        with interrupt.catching():
            results = tuner.fit()
    except BaseException:
        with contextlib.suppress(Exception):  # never hides what stopped the sweep
            tags = [RunTag("status", "interrupted"), RunTag("ended_by", "interrupted")]
            retrying(client.log_batch, parent_id, tags=tags)
            lock.ended()  # no beat (nor takeover check) once the driver is leaving
            retrying(client.set_terminated, parent_id, "KILLED")  # not RUNNING: the sweep has no driver now
        raise
    if interrupt.event.is_set():  # Ctrl-C: Ray Tune stopped the trials; each keeps its run and its last checkpoint
        for run_id in ledger.running():
            ledger.set_tags(run_id, {"status": "interrupted"})
            ledger.set_status(run_id, "KILLED")
        retrying(client.log_batch, parent_id, tags=[RunTag("status", "interrupted"), RunTag("ended_by", "interrupted")])
        lock.ended()
        retrying(client.set_terminated, parent_id, "KILLED")
        records = ledger.trials()
        raise SweepInterrupted(name, sum(r.finished for r in records.values()), len(records))
    _finish_runs(ledger, results, space.train.epochs)
    summary = summarize(results, space)
    summary["grid_points"] = grid_size(space)
    summary["trials_resumed_finished"] = len(done)
    best_config = best_metric = None
    if space.selection_metric is not None:  # protocol paper without select_on_test chooses nothing (spaces.py)
        best_config, best_metric = _best(space, results, done)
    metrics = [Metric(f"sweep.{k}", float(v), int(time.time() * 1000), 0) for k, v in summary.items()]
    tags = [
        RunTag("status", "interrupted" if budget.ended_by == "interrupted" else "completed"),
        RunTag("ended_by", budget.ended_by),
    ]
    if best_metric is not None:
        metrics.append(Metric(f"best_{space.search.metric}", float(best_metric), int(time.time() * 1000), 0))
        tags.append(RunTag("best_config", json.dumps(best_config)))
    retrying(client.log_batch, parent_id, metrics=metrics, tags=tags)  # one round trip to the store
    lock.ended()
    retrying(client.set_terminated, parent_id, "FINISHED")
    report = None
    if make_report:
        from tune_losses.reports.build import build_report

        try:
            report = build_report(parent_id, tracking_uri=uri, out_dir=tracking.run_dir() / "reports" / name)
        except Exception as exc:  # a report must never cost the sweep's results
            client.set_tag(parent_id, "report_error", str(exc)[:1000])
        except KeyboardInterrupt:  # Ctrl-C after the sweep ended: its record is whole, only the report is not
            print(
                f"\nCtrl-C: no report built (the sweep has finished and is recorded; `tune-losses report {name}` "
                "builds it)",
                flush=True,
            )
    out = SweepResult(name, parent_id, uri, best_config, best_metric, summary, results)
    out.report = report
    return out


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C; its parent run is tagged `interrupted` and `--resume` continues it."""

    def __init__(self, name: str, finished: int, total: int):
        super().__init__(
            f"sweep {name!r} interrupted before any trial started"
            if total == 0
            else f"sweep {name!r} interrupted: {finished} of the {total} trials started had finished; the others "
            "continue from their last checkpoint (or from epoch 1 if they had not finished one)"
        )
        self.name = name


def print_summary(result: SweepResult, metric: str) -> None:
    """What the sweep ran and chose, from what MLflow holds (the trial runs' tags, the parent run's params): the
    same facts and sentences as its report."""
    from tune_losses.reports.collect import sweep_runs
    from tune_losses.reports.protocol import count_trials, describe_trials, statement, trial_outcomes

    s = result.summary
    _, parent, runs, space = sweep_runs(result.parent_run_id, result.tracking_uri)
    print(f"\nSweep {result.name!r}: {describe_trials(count_trials(trial_outcomes(runs)))}")
    print(
        f"Epochs run: {s['epochs_run']} of a full budget of {s['epochs_full_budget']} "
        f"({100 * s['epochs_run'] / max(s['epochs_full_budget'], 1):.0f}%)"
    )
    print("\n".join(line.removeprefix("- ") for line in statement(space, parent.data.params)))
    if result.best_config is not None:
        print(f"Best {metric}: {result.best_metric:.4f} with {result.best_config}")
    print(
        f"MLflow: {tracking.redact(result.tracking_uri)}, parent run {result.parent_run_id} "
        f"(browse with `tune-losses ui`)"
    )
    if result.report is not None:
        print(f"Report: {result.report.directory / 'report.md'} (also in the parent run's report/ artifacts)")
