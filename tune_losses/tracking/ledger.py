"""MLflow as the ledger of a sweep: one parent run, one child run per trial, found again by a stable key.

A trial's key is derived from its config (the swept values and, for repeated grids, its sample index), so the
same trial gets the same key in a resumed sweep whatever Ray Tune's own state holds. Every write is idempotent:

- a run is never created twice: ``find_or_create`` searches for the key first, creates the run with the key as a
  tag in the same call, and if a retry (ours or MLflow's HTTP layer) made two, keeps the oldest and deletes the
  rest;
- metrics of an epoch go in one ``log_batch`` with the epoch as step; an epoch already in the ledger is not logged
  again (``last_step``), and MLflow drops a repeated identical row;
- tags, params of the same value and ``set_terminated`` can be repeated.

Calls are retried only when the failure is transient (the server or database unreachable, locked or overloaded),
with tenacity, on top of MLflow's own HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES); a refused call (bad value,
missing run) raises at once. ``TUNE_LOSSES_STORE_WAIT_S`` bounds the time one call may be retried (30 minutes:
:func:`retry_seconds`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from tune_losses.atomic import replacing

from . import record, store
from .outcome import SUPERSEDED

log = logging.getLogger(__name__)

KEY_TAG = "tune_losses.trial_key"
#: error codes of an MlflowException worth a retry (MLflow's HTTP client reports an unreachable server as
#: INTERNAL_ERROR, as a server does an error of its own; the messages below tell the permanent ones apart)
RETRYABLE = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "INTERNAL_ERROR", "DEADLINE_EXCEEDED", "ABORTED"}
#: what a store says when it is only busy, whatever its error code
BUSY_MESSAGES = ("QueuePool limit", "database is locked", "too many connections", "Too many connections")
#: what a store says when trying again cannot help
PERMANENT_MESSAGES = (
    "no such table",
    "unable to open database file",
    "readonly database",
    "no such column",
    "UNIQUE constraint",
    "already exists",
    "does not exist",
)
#: result keys that Ray Tune adds and that are not the trial's metrics
RAY_KEYS = {
    "epoch",
    "training_iteration",
    "time_this_iter_s",
    "time_total_s",
    "timestamp",
    "pid",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    "replayed",
}


def trial_key(config: dict) -> str:
    """A stable key for a trial: a hash of its swept values (and sample index, when a grid is repeated)."""
    ident = {"params": config.get("params", {}), "sample": config.get("sample")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def as_trial(config: dict) -> dict:
    """A Ray trial's config as what it trains: a group of one member (the baseline's: tuning/fusion.py
    ``baseline_groups``) is that member's trial, run, recorded, named and checkpointed as the unfused trial is."""
    group = config.get("group")
    return group[0] if isinstance(group, list) and len(group) == 1 else config


def transient(exc: BaseException | None) -> bool:
    """Whether a failed tracking call may succeed when tried again: the store unreachable, locked, busy or
    overloaded. A refused request (a bad value, a missing run) or a broken store (no such table, an unopenable
    file) is not."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if any(m in text for m in PERMANENT_MESSAGES):
            return False
        if any(m in text for m in BUSY_MESSAGES):
            return True
        if isinstance(
            exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)
        ):
            return True
        if isinstance(exc, sqlalchemy.exc.OperationalError):
            return any(m in text.lower() for m in ("connect", "timeout", "timed out", "server closed", "terminat"))
        if isinstance(exc, MlflowException):
            return exc.error_code in RETRYABLE
        exc = exc.__cause__ or exc.__context__
    return False


def bound_http_retries() -> None:
    """MLflow's HTTP client retries a failed request itself (7 times, backing off up to minutes, 120 s timeout per
    try); under the ledger's own retries that would make one call block for many minutes. Unless set by the user:
    3 tries of at most 30 s, so ``TUNE_LOSSES_MLFLOW_RETRY_S`` bounds a call (plus one request in flight)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


#: how long a write waits for a store that is down before it fails (seconds; ``TUNE_LOSSES_STORE_WAIT_S``)
STORE_WAIT_S = 1800.0


def retry_seconds() -> float:
    """How long one tracking call may be retried: ``TUNE_LOSSES_STORE_WAIT_S`` (or its older name
    ``TUNE_LOSSES_MLFLOW_RETRY_S``), by default :data:`STORE_WAIT_S`: trials and the driver wait that long for a
    store that is down (a restarted server, a database failover) before a write fails the trial."""
    given = os.environ.get("TUNE_LOSSES_STORE_WAIT_S") or os.environ.get("TUNE_LOSSES_MLFLOW_RETRY_S")
    try:
        return float(given) if given else STORE_WAIT_S
    except ValueError:
        raise ValueError(
            f"TUNE_LOSSES_STORE_WAIT_S={given!r}: allowed: a number of seconds (default {STORE_WAIT_S:g})"
        ) from None


class StoreHealth:
    """Whether this process's last tracking call reached the store, and since when it has not: the live view
    shows "waiting for the tracking store since ..." from it."""

    def __init__(self) -> None:
        self.failing_since: float | None = None
        self.last_error = ""
        # told at each change (the live view): a driver blocked in a retried call would only see it afterwards
        self.listeners: list = []

    def failed(self, exc: BaseException | None) -> None:
        self.last_error = str(exc)[:200]
        if self.failing_since is None:
            self.failing_since = time.time()
            self._tell()

    def reached(self) -> None:
        if self.failing_since is not None:
            self.failing_since = None
            self._tell()

    def _tell(self) -> None:
        for listener in list(self.listeners):
            with contextlib.suppress(Exception):  # a display must never fail a tracking call
                listener()


#: this process's view of the store
STORE = StoreHealth()


def retrying(fn, *args, seconds: float | None = None, **kwargs):
    """``fn(*args, **kwargs)``, tried again on transient failures until ``seconds`` have passed."""
    seconds = retry_seconds() if seconds is None else seconds

    def warn(state):
        STORE.failed(state.outcome.exception())
        log.warning("MLflow call %s failed (%s); retrying", getattr(fn, "__name__", fn), state.outcome.exception())

    for attempt in Retrying(
        retry=retry_if_exception(transient),
        stop=stop_after_delay(seconds),
        wait=wait_exponential(multiplier=0.5, max=5),
        before_sleep=warn,
        reraise=True,
    ):
        with attempt:
            value = fn(*args, **kwargs)
            STORE.reached()
            return value
    raise AssertionError("unreachable")


class Superseded(RuntimeError):
    """Another attempt of this trial owns its run now (:meth:`Ledger.check_owner`)."""


@dataclass
class TrialRecord:
    """What the ledger holds of one trial when it (re)starts."""

    run_id: str
    key: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED
    last_step: int = 0  # the last epoch whose metrics are recorded
    metrics: dict = field(default_factory=dict)  # each metric's last value
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    end_time: int | None = None  # when the run ended (ms), for a trial that has

    @property
    def finished(self) -> bool:
        """Trained to its end (completed, stopped by the scheduler or diverged): never trained again."""
        return self.status == "FINISHED"


class Ledger:
    """The tracking calls of one sweep, each idempotent and retried (see the module docstring)."""

    def __init__(self, tracking_uri_or_client, experiment_id: str, parent_run_id: str, retry_s: float | None = None):
        bound_http_retries()
        start = time.perf_counter()
        given = tracking_uri_or_client
        self.client = store.client(given) if isinstance(given, str) else given
        self.experiment_id, self.parent_run_id = experiment_id, parent_run_id
        self.retry_s = retry_s
        self._artifact_dirs: dict[str, Path | None] = {}  # run id -> its local artifact directory (write_artifact)
        # time spent opening the store and in this ledger's calls (a trial logs it: tuning/trial.py)
        self.seconds = time.perf_counter() - start

    def call(self, name: str, *args, **kwargs):
        start = time.perf_counter()
        try:
            return retrying(getattr(self.client, name), *args, seconds=self.retry_s, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    # --- reading ----------------------------------------------------------------------------------------------
    def _runs(self, extra: str = "") -> list:
        filt = f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'" + (f" and {extra}" if extra else "")
        runs, token = [], None
        while True:
            page = self.call(
                "search_runs", [self.experiment_id], filter_string=filt, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _canonical(self, runs: list):
        """The oldest run of a key; any later duplicate (a create retried after it had reached the store) is
        deleted, so every reader sees one run per trial."""
        runs = sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        for dup in runs[1:]:
            log.warning(
                "deleting duplicate run %s of trial key %s (kept %s)",
                dup.info.run_id,
                runs[0].data.tags.get(KEY_TAG),
                runs[0].info.run_id,
            )
            self.call("delete_run", dup.info.run_id)
        return runs[0]

    def trials(self) -> dict[str, TrialRecord]:
        """Every trial the ledger holds, by key."""
        by_key: dict[str, list] = {}
        for run in self._runs(f"tags.`{KEY_TAG}` != ''"):
            by_key.setdefault(run.data.tags[KEY_TAG], []).append(run)
        return {k: self._record(self._canonical(v)) for k, v in by_key.items()}

    def _record(self, run) -> TrialRecord:
        return TrialRecord(
            run.info.run_id,
            run.data.tags.get(KEY_TAG, ""),
            run.info.status,
            last_step=int(run.data.metrics.get("epoch", 0) or 0),
            metrics=dict(run.data.metrics),
            tags=dict(run.data.tags),
            params=dict(run.data.params),
            end_time=run.info.end_time,
        )

    # --- a trial's run ----------------------------------------------------------------------------------------
    def find_or_create(self, key: str, name: str, tags: dict) -> TrialRecord:
        """The trial's run: found by its key, else created with the key as a tag (one call, so a run never
        exists without its key)."""
        tags = {**tags, KEY_TAG: key, "mlflow.parentRunId": self.parent_run_id, "mlflow.runName": name}

        def attempt():
            found = self._runs(f"tags.`{KEY_TAG}` = '{key}'")
            if not found:
                # a transient failure here retries the whole attempt: a create that reached the store is found
                start = time.perf_counter()
                try:
                    self.client.create_run(self.experiment_id, run_name=name, tags=tags)
                finally:
                    self.seconds += time.perf_counter() - start
                found = self._runs(f"tags.`{KEY_TAG}` = '{key}'")
            return found

        found = retrying(attempt, seconds=self.retry_s)
        return self._record(self._canonical(found))

    def log_params(self, run_id: str, params: dict) -> None:
        items = [
            Param(k, v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v))
            for k, v in params.items()
        ]
        for i in range(0, len(items), 100):
            self.call("log_batch", run_id, params=items[i : i + 100])

    def log_epoch(self, run_id: str, result: dict, step: int) -> None:
        """One epoch's numeric results as metrics at ``step``; the ``epoch`` metric, which marks the epoch as
        recorded, goes in the last batch (MLflow takes at most 1000 metrics per call)."""
        ts = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), ts, step)
            for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in RAY_KEYS
        ]
        metrics.append(Metric("epoch", float(step), ts, step))
        for i in range(0, len(metrics), 1000):
            self.call("log_batch", run_id, metrics=metrics[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict, metrics: dict | None = None, step: int = 0) -> None:
        """Tags, and ``metrics`` (at ``step``) in the same call."""
        ts = int(time.time() * 1000)
        self.call(
            "log_batch",
            run_id,
            metrics=[Metric(k, float(v), ts, step) for k, v in (metrics or {}).items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()],
        )

    # --- who owns a trial's run -------------------------------------------------------------------------------
    def take_run(self, run_id: str, tags: dict) -> str:
        """This attempt takes the run (with ``tags``): a new token in the tag ``tune_losses.attempt_token``.
        Any earlier attempt still alive finds another token at its next :meth:`check_owner`."""
        token = uuid.uuid4().hex
        self.set_tags(run_id, {**tags, record.ATTEMPT_TOKEN: token})
        return token

    def check_owner(self, run_id: str, token: str) -> None:
        """:class:`Superseded` unless the run still holds ``token`` (checked before each epoch's writes: an
        attempt another replaced stops before it logs or checkpoints again)."""
        held = self.call("get_run", run_id).data.tags.get(record.ATTEMPT_TOKEN)
        if held != token:
            raise Superseded(f"run {run_id}: {SUPERSEDED} (token {held}); this attempt stops without writing")

    def delete_tag(self, run_id: str, key: str) -> None:
        """Remove a tag; one already gone is no error (a retried delete whose first try reached the store)."""
        from mlflow.exceptions import MlflowException

        try:
            self.call("delete_tag", run_id, key)
        except MlflowException as exc:
            if key in self.call("get_run", run_id).data.tags:
                raise
            log.debug("tag %s of run %s was already gone: %s", key, run_id, exc)

    def log_dict(self, run_id: str, value, path: str) -> None:
        self.call("log_dict", run_id, value, path)

    def write_artifact(self, run_id: str, name: str, write) -> None:
        """The artifact ``name`` of the run, replaced whole by the file that ``write(path)`` makes: in a local
        artifact store, written beside the run's artifacts and renamed over the old one (a kill leaves the old
        or the new, never a torn file); elsewhere uploaded as one object (object stores write an object whole)."""
        start, counted = time.perf_counter(), self.seconds  # the calls inside count themselves: not twice
        try:
            target = self._local_artifacts(run_id)
            if target is None:
                with tempfile.TemporaryDirectory() as tmp:
                    write(Path(tmp) / name)
                    self.call("log_artifact", run_id, str(Path(tmp) / name))
                return
            target.mkdir(parents=True, exist_ok=True)
            with replacing(target / name, staging_dir=target.parent) as staged:  # outside the listed artifacts
                write(staged)
        finally:
            self.seconds = counted + time.perf_counter() - start

    def _local_artifacts(self, run_id: str) -> Path | None:
        """The run's artifact directory when the store keeps artifacts in a local directory, else None."""
        if run_id not in self._artifact_dirs:
            uri = self.call("get_run", run_id).info.artifact_uri
            parsed = urllib.parse.urlparse(uri)
            local = parsed.scheme in ("", "file")
            self._artifact_dirs[run_id] = Path(urllib.request.url2pathname(parsed.path)) if local else None
        return self._artifact_dirs[run_id]

    def set_status(self, run_id: str, status: str) -> None:
        if status == "RUNNING":
            self.call("update_run", run_id, status="RUNNING")
        else:
            self.call("set_terminated", run_id, status=status)

    def running(self) -> list[str]:
        """Run ids of the trials still marked RUNNING."""
        return [r.info.run_id for r in self._runs("attributes.status = 'RUNNING'")]


def audit(client, parent_run_id: str, experiment_id: str, epochs: int) -> list[str]:
    """What breaks the ledger's promise for one sweep: a trial with two runs, a run left RUNNING, an epoch logged
    twice or missing, a completed trial short of its epochs. Empty when the sweep's record is whole."""
    ledger = Ledger(client, experiment_id, parent_run_id, retry_s=0)
    problems: list[str] = []
    keys: dict[str | None, str] = {}
    for run in ledger._runs():
        name = run.data.tags.get("mlflow.runName", run.info.run_id)
        key = run.data.tags.get(KEY_TAG)
        if key in keys:
            problems.append(f"{name}: a second run for trial key {key} ({keys[key]})")
        keys[key] = run.info.run_id
        if run.info.status != "FINISHED":
            problems.append(f"{name}: {run.info.status}, not FINISHED")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        if len(steps) != len(set(steps)):
            problems.append(f"{name}: epochs logged more than once: {sorted(steps)}")
        if sorted(set(steps)) != list(range(1, len(set(steps)) + 1)):
            problems.append(f"{name}: epochs missing: {sorted(steps)}")
        early = run.data.tags.get("stopped_early") == "true"
        if early and run.data.tags.get("stopped_at_epoch") != str(len(set(steps))):
            problems.append(
                f"{name}: stopped early at epoch {run.data.tags.get('stopped_at_epoch')} with "
                f"{len(set(steps))} epochs logged"
            )
        if not early and run.data.tags.get("status") == "completed" and len(set(steps)) != epochs:
            problems.append(f"{name}: completed with {len(set(steps))} of {epochs} epochs")
    return problems
