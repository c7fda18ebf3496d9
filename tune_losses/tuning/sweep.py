"""A sweep's life, as explicit phases. ``run_sweep`` (runner.py) calls them in this order, each with its rule:

1. **options** (:meth:`SweepOptions.resolve`): the arguments resolved (space file and --set, name, store,
   storage). Reads the space file and nothing else.
2. **check** (:meth:`Sweep.check`): preflight, the driver lock; Ray starts while the data set loads and the
   store is read; a resume is compared with the sweep it continues. Writes nothing to the store or the storage;
   an error stops the Ray it started.
3. **claim** (:meth:`Sweep.claim`): a new sweep creates its parent run, a resume claims it (decided once, by
   ``options.resume``). The first write; everything written later carries the parent run's id.
4. **run** (:meth:`Sweep.run`): Ray Tune's Tuner over the trials (tuner.py). Trials write their own runs and
   checkpoints; the driver's callback writes only the scheduler's decisions.
5. **close** (:meth:`Sweep.close`, or :meth:`Sweep.abandon` on an error or Ctrl-C): trial runs left open are
   closed, the summary and best config recorded. The parent run ends exactly once (tracking/parent.py
   ``ParentRun.end``), whichever way the sweep ends.
6. **report** (:meth:`Sweep.report`): the report, from MLflow alone. A failed report never costs the sweep.

The parent run's id is the sweep's identity (tracking/parent.py): its checkpoints live under it, so no other
sweep, of this name or another, reads them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tune_losses import tracking
from tune_losses.spaces import Space, SpaceError, load_space
from tune_losses.tracking import record
from tune_losses.tracking.driver import DriverLock, claim, running_driver
from tune_losses.tracking.ledger import Ledger, TrialRecord, retrying
from tune_losses.tracking.parent import ParentRun, SweepNameTaken, checkpoint_root, legacy_checkpoint_root

from . import preflight, search, warm_driver
from .interrupt import Interrupt, SweepInterrupted
from .resume import check_resumable, parent_params, resume_command


@dataclass
class SweepResult:
    """What ``run_sweep`` (and ``tune_losses.sweep``) returns: the sweep's name and parent run, the store, the
    best config and its metric (None under the paper protocol, which selects nothing), the summary counts, Ray
    Tune's ResultGrid and the report (None without one)."""

    name: str
    parent_run_id: str
    tracking_uri: str
    best_config: dict | None
    best_metric: float | None
    summary: dict
    results: object = None  # ray.tune.ResultGrid
    report: Any = None  # tune_losses.reports.build.Report


@dataclass
class SweepOptions:
    """What the command asked for, resolved (phase "options")."""

    space: Space
    path: Path  # the space file (a Space object given in Python: a name only)
    text: str  # the space file's text, recorded on the parent run
    from_file: bool
    name: str
    address: str | None
    address_option: str  # where the address came from, for messages
    uri: str
    storage: str
    resume: bool = False
    dataset: str | None = None
    overrides: dict | None = None
    verbose: int = 1
    num_cpus: int | None = None
    make_report: bool = True
    progress: bool = False
    warm_start: str | None = None
    warm_ray: Any = None  # warm_ray.WarmRay: the local Ray of `tune-losses up` this sweep joins

    @property
    def remote_storage(self) -> bool:
        return "://" in self.storage

    @classmethod
    def resolve(cls, space_or_path, name=None, address=None, tracking_uri=None, storage=None, **kw) -> SweepOptions:
        overrides = dict(kw.pop("overrides", None) or {})
        if kw.get("dataset"):
            overrides["train.dataset"] = {"name": kw["dataset"]}
        if "train.dataset" in overrides:
            overrides["paper_dataset"] = None  # another data set: a report must not compare with the paper
        if isinstance(space_or_path, Space):
            space, path = space_or_path, Path(f"{space_or_path.name}.yaml")
            text = json.dumps(space.model_dump(mode="json"))
        else:
            space, path, text = load_space(space_or_path, overrides)
        local = storage and "://" not in storage
        option = "--address" if address else "RAY_ADDRESS"
        address = address or os.environ.get("RAY_ADDRESS") or None
        warm = _warm_ray()  # the warm Ray of `tune-losses up`, when no address (or its own) is given
        warm = warm if warm is not None and address in (None, warm.address) else None
        return cls(
            space=space,
            path=path,
            text=text,
            from_file=not isinstance(space_or_path, Space),
            name=name or space.name,
            address=warm.address if warm else address,
            address_option="tune-losses up" if warm else option,
            warm_ray=warm,
            uri=tracking_uri or tracking.default_tracking_uri(),
            storage=str(Path(storage).resolve()) if local else (storage or str(tracking.run_dir() / "ray")),
            overrides=overrides,
            **kw,
        )

    def resume_command(self) -> str:
        if not self.from_file or self.space.search.scheduler.name == "halving":
            return ""  # no file to give again; a halving sweep cannot be resumed
        o = self
        address = None if o.warm_ray else o.address  # a resume joins the warm Ray again, if one is up then
        return resume_command(o.path, o.name, o.uri, o.storage, address, o.overrides or {}, o.dataset, o.warm_start)


class Sweep:
    """One sweep's phases (module docstring); ``run_sweep`` calls them in order."""

    def __init__(self, options: SweepOptions, lock: DriverLock):
        self.options, self.lock = options, lock
        self.ray: Any = None  # ray_runtime.RayStart
        self.data: Any = None  # the data set's Splits, loaded once
        self.warm: Any = None  # warm_start.WarmStart
        self.client: Any = None
        self.found: Any = None  # the parent run of this name the store held at the check
        self._parent: ParentRun | None = None
        self.checkpoints = ""
        self.done: list[TrialRecord] = []
        self.todo: list[TrialRecord] = []
        self.interrupt = Interrupt()
        self.budget: Any = None
        self.fusion: Any = None  # tuning/fusion.py FusionPlan, once the Tuner is built

    @property
    def parent(self) -> ParentRun:
        """The sweep's parent run, from the claim on."""
        if self._parent is None:
            raise RuntimeError("the sweep has no parent run before its claim")
        return self._parent

    # --- check: nothing is written --------------------------------------------------------------------------
    def check(self) -> None:
        """Everything that can be wrong is found here, before the store or the storage is written to."""
        from .ray_runtime import RayStart

        o = self.options
        preflight.check_sweep_name(o.name)
        if not o.remote_storage:
            preflight.check_writable(Path(o.storage), "--storage")
        preflight.check_tracking(o.uri, o.resume, o.name)
        if o.warm_ray is None:  # the warm Ray was found answering; it runs on this machine, with this store
            preflight.check_ray_address(o.address, o.address_option)
            preflight.check_cluster_store(o.address, o.uri, o.address_option)
        else:
            o.warm_ray.join_env()
        if o.resume and o.space.search.scheduler.name == "halving":
            raise SpaceError(
                f"{o.path}: --resume: the sweep {o.name!r} runs under scheduler halving, which cannot be resumed "
                "(its rung decisions are the driver's only: a resume would decide the first rung again over "
                "replayed and part-trained trials); allowed: --resume of an asha or fifo sweep. Its finished "
                "trials stay in MLflow; start a new sweep with another --name"
            )
        if not o.address:  # a warm Ray's own CPUs are checked once joined (check_ray_resources)
            preflight.check_local_resources(o.space, str(o.path), o.num_cpus, _local_gpus())
        self.lock.acquire(o.storage, o.name, o.uri)  # held until run_sweep returns; the kernel drops it on death
        self.ray = RayStart(o.address, o.num_cpus, o.verbose)  # its workers import the trial code meanwhile
        try:
            self._check_while_ray_starts()
        except BaseException:
            self.ray.cancel()  # nothing was written: stop the Ray this sweep started
            raise

    def _check_while_ray_starts(self) -> None:
        from . import warm_start
        from .console import header

        o = self.options
        self.data = preflight.load_data(o.space, str(o.path))
        self.warm = warm_start.load(o.warm_start, o.space, o.uri) if o.warm_start else None
        # opening a SQLite store creates it: a new sweep opens one only once all else is known fine (below)
        self.client = tracking.client(o.uri) if o.resume or tracking.store_exists(o.uri) else None
        self.found = tracking.find_sweep(self.client, o.name) if self.client is not None else None
        self._check_name()
        if o.progress:
            print(header(o.space, o.name, o.resume, o.warm_ray is not None), flush=True)  # Ray takes seconds
            if o.warm_ray is not None:
                print(f"Ray: warm local runtime from `tune-losses up` ({o.warm_ray.describe()})", flush=True)
            if warm_driver.FORKED_FROM is not None:
                print(
                    f"driver: forked from the warm driver of `tune-losses up` (pid {warm_driver.FORKED_FROM})",
                    flush=True,
                )
            self._kernel_notice()
        self.ray.wait()  # the cluster (or the local Ray) may lack what the trials need: known before the store opens
        where = "cluster" if o.address and o.warm_ray is None else "local Ray"
        preflight.check_ray_resources(o.space, str(o.path), where)
        self.client = self.client or tracking.client(o.uri)

    def _kernel_notice(self) -> None:
        """A local sweep's first trials build the fused loss kernels if this machine has none yet: say so, as
        their own output does not reach the console (a cluster's nodes build theirs: docker/Dockerfile)."""
        from tune_losses.losses import fused

        remote = self.options.address and self.options.warm_ray is None
        notice = None if remote else fused.build_notice()
        if notice:
            print(notice, flush=True)

    def _check_name(self) -> None:
        """A new sweep needs a free name; a resume needs the sweep, undriven, with the same space."""
        o, found = self.options, self.found
        where = tracking.redact(o.uri)
        if o.resume and found is None:
            raise SpaceError(f"--resume: no sweep named {o.name!r} in the tracking store {where}")
        if o.resume:
            _refuse_if_driven(found, o.name)
            check_resumable(self.client, found, o.space, o.uri, str(o.path), self.data)
        elif found is not None:
            ended = found.info.status == "FINISHED" and found.data.tags.get(record.ENDED_BY) != "interrupted"
            raise SpaceError(
                f"--name: a sweep named {o.name!r} is already in {where}; "
                + (
                    f"it has finished (`tune-losses status {o.name}`): give this one another --name"
                    if ended
                    else "continue it with --resume, or give this one another --name"
                )
            )

    # --- claim: the first write -----------------------------------------------------------------------------
    def claim(self) -> None:
        """Create the parent run (a new sweep) or claim it (a resume), then record the space on it."""
        o = self.options
        try:
            if o.resume:
                self._claim_resumed()
            else:
                self._create()
            params = parent_params(o.space, o.uri, self.data)
            resolved = json.dumps(o.space.model_dump(mode="json"), indent=2, default=str)
            self.parent.complete(params, {o.path.name: o.text, "resolved_space.json": resolved})
            if self.warm is not None:
                self.parent.set_tags({record.WARM_START: o.warm_start or ""})
                print("\n".join(self.warm.describe()), flush=True)
        except BaseException as exc:
            self.abandon(exc)
            if self.ray is not None:
                self.ray.cancel()  # no trial ran
            raise

    def _create(self) -> None:
        o = self.options
        tags = {
            record.GIT_COMMIT: git_commit(),
            record.SPACE_FILE: str(o.path),
            record.STUDY: o.space.study or "",
            # with the run itself: `status` knows how many trials are planned even if a kill cuts what follows
            record.PLANNED: str(search.max_trials(o.space)),
            record.RESUME_COMMAND: o.resume_command(),
        }
        tags = ParentRun.creation_tags(o.name, tags)
        run_id = ParentRun.new_run(self.client, self.experiment_id, o.name, tags, uuid.uuid4().hex)
        self._parent = ParentRun(self.client, run_id, o.name)  # from here on, whatever stops the sweep ends it
        try:
            self._parent.check_alone(self.experiment_id)
        except SweepNameTaken as exc:  # another command created a sweep of this name at the same moment
            raise SpaceError(f"{o.path}: {exc}") from None
        self.checkpoints = checkpoint_root(o.storage, o.name, run_id)
        self._parent.set_tags({record.CHECKPOINTS: self.checkpoints})
        self.lock.drives(run_id, self.client, 0, self._parent.beat_tags)

    def _claim_resumed(self) -> None:
        o = self.options
        run = retrying(self.client.get_run, self.found.info.run_id)  # Ray's start took seconds: read it again
        _refuse_if_driven(run, o.name)
        claimed = claim(self.client, run, retrying)  # of two resumes that found it undriven, one goes on
        self._parent = ParentRun(self.client, run.info.run_id, o.name)  # from here on, a stop ends it again
        self._parent.resume(run, o.resume_command())
        self.lock.drives(self._parent.run_id, self.client, claimed, self._parent.beat_tags)
        self.checkpoints = self._own_checkpoints(run)
        self._read_ledger()

    def _own_checkpoints(self, run) -> str:
        """The sweep's checkpoint root: recorded on its parent, or (a kill before the tag) under its parent run
        id, as its layout tag says. A sweep of an older version (no layout tag) kept them at
        ``<storage>/<name>/checkpoints``: moved under its parent run id (one rename; remote storage keeps the
        old place, which only that sweep wrote since)."""
        o, tags = self.options, run.data.tags
        root = tags.get(record.CHECKPOINTS) or checkpoint_root(o.storage, o.name, self.parent.run_id)
        if record.CHECKPOINTS not in tags and record.LAYOUT not in tags:
            root = self._migrate(root)
        self.parent.set_tags({record.CHECKPOINTS: root})
        return root

    def _migrate(self, root: str) -> str:
        o = self.options
        legacy = legacy_checkpoint_root(o.storage, o.name)
        if o.remote_storage:
            return legacy
        if Path(legacy).is_dir() and not Path(root).exists():
            Path(root).parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(legacy, root)  # one rename: a kill leaves it either here or there
            except OSError as exc:  # another file system, a mount point
                raise SpaceError(
                    f"--resume: the sweep {o.name!r} keeps its checkpoints in {legacy} (an older layout), which "
                    f"cannot be moved to {root}: {exc.strerror or exc}; move that directory there by hand, then "
                    "resume again"
                ) from None
        return root

    def _read_ledger(self) -> None:
        """What a resume continues: finished trials are kept, the others continue from their checkpoints. A run
        with a key and no params (a kill between its creation and its params) holds no epoch: it is deleted, and
        its trial starts again."""
        ledger = Ledger(self.client, self.experiment_id, self.parent.run_id)
        records = ledger.trials()
        for orphan in [r for r in records.values() if not r.params]:
            ledger.call("delete_run", orphan.run_id)
            del records[orphan.key]
        self.done = [r for r in records.values() if r.finished]
        self.todo = [r for r in records.values() if not r.finished]
        lost = [
            r for r in self.todo if not self.options.remote_storage and not _has_checkpoint(self.checkpoints, r.key)
        ]
        print(
            f"Resuming sweep {self.options.name!r} from MLflow: {len(self.done)} finished trials kept (not trained "
            f"again), {len(self.todo) - len(lost)} continue from their checkpoints"
            + (f", {len(lost)} start again from epoch 1 (no checkpoint under {self.checkpoints})" if lost else ""),
            flush=True,
        )

    @property
    def experiment_id(self) -> str:
        return tracking.experiment_id(self.client)

    # --- run ------------------------------------------------------------------------------------------------
    def run(self):
        """Ray Tune's fit over the trials (tuner.py builds the Tuner)."""
        from .tuner import build_tuner

        tuner, self.budget = build_tuner(self)
        self.interrupt.on_exit = lambda: self.abandon(KeyboardInterrupt())
        with self.interrupt.catching():
            return tuner.fit()

    # --- close: the parent ends once ------------------------------------------------------------------------
    def close(self, results) -> SweepResult:
        from .closing import best_config, close_trial_runs, summarize

        o, parent = self.options, self.parent
        ledger = Ledger(self.client, self.experiment_id, parent.run_id)
        if self.interrupt.event.is_set():  # Ctrl-C: each trial keeps its run and its last checkpoint
            close_trial_runs(ledger, [], o.space.train.epochs, interrupted=True)
            parent.end("interrupted", self.lock.ended)
            records = ledger.trials()
            raise SweepInterrupted(o.name, sum(r.finished for r in records.values()), len(records))
        close_trial_runs(
            ledger, results, o.space.train.epochs, budget=self.budget, scheduler=o.space.search.scheduler.name
        )
        fused = self.fusion is not None and self.fusion.fused
        members = list(ledger.trials().values()) if fused else None  # a fused group's members are runs, not results
        summary = summarize(results, o.space, self.budget, members)
        summary["grid_points"] = search.grid_size(o.space)
        summary["trials_resumed_finished"] = len(self.done)
        config, value = (
            best_config(o.space, [], members) if members is not None else best_config(o.space, results, self.done)
        )
        metrics = {f"sweep.{k}": float(v) for k, v in summary.items()}
        tags: dict[str, str] = {}
        if value is not None:
            metrics[f"best_{o.space.search.metric}"] = value
            tags[record.BEST_CONFIG] = json.dumps(config)
        parent.log_result(metrics, tags)
        parent.end(self.budget.ended_by, self.lock.ended)
        return SweepResult(o.name, parent.run_id, o.uri, config, value, summary, results)

    def abandon(self, exc: BaseException) -> None:
        """End the parent run of a sweep that a Ctrl-C (``ended_by: interrupted``) or an error (``ended_by:
        error``, with its reason) stopped; never hides ``exc``. Either way it stays resumable (KILLED)."""
        if self._parent is None:
            return
        with contextlib.suppress(Exception):
            if isinstance(exc, KeyboardInterrupt):
                self.parent.end("interrupted", self.lock.ended)
                return
            self.parent.set_tags({record.REASON: f"{type(exc).__name__}: {exc}"[:5000]})
            self.parent.end("error", self.lock.ended)

    # --- report ---------------------------------------------------------------------------------------------
    def report(self, result: SweepResult) -> SweepResult:
        if not self.options.make_report:
            return result
        from tune_losses.reports.build import build_report

        try:
            out_dir = tracking.run_dir() / "reports" / self.options.name
            result.report = build_report(result.parent_run_id, tracking_uri=self.options.uri, out_dir=out_dir)
        except Exception as exc:  # a report must never cost the sweep's results
            with contextlib.suppress(Exception):
                self.parent.set_tags({record.REPORT_ERROR: str(exc)[:1000]})
        except KeyboardInterrupt:  # Ctrl-C after the sweep ended: its record is whole, only the report is not
            print(
                f"\nCtrl-C: no report built (the sweep has finished and is recorded; `tune-losses report "
                f"{self.options.name}` builds it)",
                flush=True,
            )
        return result


def _refuse_if_driven(parent, name: str) -> None:
    running = running_driver(parent)
    if running:  # two drivers would train the same trials into the same checkpoints
        raise SpaceError(
            f"--resume: the sweep {name!r} is running: {running}. Follow it with `tune-losses status {name}`; "
            "stop it (Ctrl-C) before resuming it"
        )


def _has_checkpoint(root: str, key: str) -> bool:
    from tune_losses.training.checkpoint import FILENAME

    return (Path(root) / key / FILENAME).is_file()


def _warm_ray():
    """The warm local Ray of `tune-losses up` (tuning/warm_ray.py), or None (a stale record is removed); None as
    well, with a line saying why, when its workers run other code or settings than this command has."""
    from .warm_ray import TRIAL_ENV, differences, find, fingerprint

    warm = find()
    if warm is not None and warm.fingerprint != fingerprint():
        changed = differences(warm.settings) if warm.settings else []  # an older `up` recorded one hash only
        what = ", ".join(changed) or f"the code, or one of {', '.join(TRIAL_ENV[:3])}, ..."
        print(
            "Ray: not joining the warm Ray of `tune-losses up`: its workers run the code and settings of when it "
            f"started, and this command's differ ({what}); `tune-losses down && tune-losses up` refreshes it",
            flush=True,
        )
        return None
    return warm


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"
