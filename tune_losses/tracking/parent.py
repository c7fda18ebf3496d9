"""A sweep's parent run: its identity, and every write of its life, from creation (or resume) to its end.

The parent run's id is the sweep's identity: its checkpoints live under ``<storage>/<sweep>/<parent run id>/``
(the tag ``tune_losses.checkpoints`` says where), so a new sweep of the same name never reads what an older one
wrote, and a resume reads only its own. :class:`ParentRun` is the only writer of the parent's tags:

* ``new_run`` with ``creation_tags``: the run, created once even when a create is retried after it reached the
  store (found again by a nonce), with what a reader needs at once (planned trials, a first heartbeat, the
  driver, the layout of its files); ``check_alone``: a command that then sees a second parent of the name
  deletes its own and stops (two drivers on two machines);
* ``resume``: the tags of a resumed sweep (a fresh heartbeat before it is RUNNING again);
* ``end``: the status, ``ended_by`` and the run's MLflow status, whichever way the sweep ends (completed, a
  budget, Ctrl-C, an error): once it has succeeded, never again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag

from . import record
from .driver import driver_tag
from .ledger import retrying

#: the parent run's MLflow status for a sweep that ran to an end (anything else: KILLED, resumable)
END_STATUS = {"completed": "FINISHED", "time_budget": "FINISHED", "plateau": "FINISHED"}


class SweepNameTaken(ValueError):
    """Another command created a sweep of this name at the same moment."""


def checkpoint_root(storage: str, name: str, parent_run_id: str) -> str:
    """Where a sweep's checkpoints live: under its own parent run id, out of reach of any other sweep."""
    return f"{storage.rstrip('/')}/{name}/{parent_run_id}/checkpoints"


def legacy_checkpoint_root(storage: str, name: str) -> str:
    """Where sweeps made before the parent run id was part of the path kept theirs (migrated on resume)."""
    return f"{storage.rstrip('/')}/{name}/checkpoints"


class ParentRun:
    """The parent run of one sweep (see the module docstring)."""

    def __init__(self, client, run_id: str, name: str):
        self.client, self.run_id, self.name = client, run_id, name
        self.ended: str | None = None
        self._started = time.time()
        self._before = 0.0  # seconds the sweep ran under earlier drivers

    # --- creation ---------------------------------------------------------------------------------------------
    @staticmethod
    def creation_tags(name: str, tags: dict) -> dict:
        """``tags`` plus what every parent run is created with: a reader (``status``, a resume) needs them even
        if a kill cuts what follows the creation."""
        return {
            **tags,
            record.SWEEP: name,
            record.ROLE: "sweep",
            "mlflow.runName": name,
            record.STATUS: "running",
            record.HEARTBEAT: f"{time.time():.0f}",  # the first beat (driver.Heartbeat beats from here)
            record.DRIVER: driver_tag(),
            record.LAYOUT: record.LAYOUT_VERSION,  # its checkpoints live under its own id, from the start
        }

    @staticmethod
    def new_run(client, experiment_id: str, name: str, tags: dict, nonce: str) -> str:
        """A run with ``tags``, made once even when a create is retried after it reached the store (it is found
        again by ``nonce``, held in the tag ``tune_losses.attempt``)."""
        tags = {**tags, record.CREATION: nonce}

        def once():
            filt = f"tags.`{record.CREATION}` = '{nonce}'"
            found = client.search_runs([experiment_id], filter_string=filt)
            if not found:
                client.create_run(experiment_id, run_name=name, tags=tags)
                found = client.search_runs([experiment_id], filter_string=filt)
            return found

        found = sorted(retrying(once), key=lambda r: (r.info.start_time or 0, r.info.run_id))
        for dup in found[1:]:
            retrying(client.delete_run, dup.info.run_id)
        return found[0].info.run_id

    def check_alone(self, experiment_id: str) -> None:
        """Two commands on two machines that start a sweep of the same name at once both found no parent and both
        created one: each looks after creating, so they cannot both see only their own (at worst both stop). No
        trial, checkpoint or param has been written yet."""
        filt = f"tags.`{record.SWEEP}` = '{self.name}' and tags.`{record.ROLE}` = 'sweep'"
        found = retrying(self.client.search_runs, [experiment_id], filter_string=filt)
        others = [r for r in found if r.info.run_id != self.run_id]
        if others:
            retrying(self.client.delete_run, self.run_id)
            self.ended = "deleted"  # nothing to end any more
            raise SweepNameTaken(
                f"a sweep named {self.name!r} was started at the same moment by another command (parent run "
                f"{others[0].info.run_id}); follow it with `tune-losses status {self.name}`, or give this one "
                "another --name"
            )

    def complete(self, params: dict[str, str], artifacts: dict[str, str]) -> None:
        """The params and the space's artifacts (``space/<file name>`` -> text): what a creation cut short by a
        kill left out. A param MLflow holds is never written again (the same store reached by another spelling
        of its URI must not read as a change)."""
        import tempfile

        recorded = retrying(self.client.get_run, self.run_id).data.params
        todo = [Param(k, v) for k, v in params.items() if k not in recorded]
        for i in range(0, len(todo), 100):
            retrying(self.client.log_batch, self.run_id, params=todo[i : i + 100])
        with tempfile.TemporaryDirectory() as tmp:
            for file_name, text in artifacts.items():
                (Path(tmp) / file_name).write_text(text)
                retrying(self.client.log_artifact, self.run_id, str(Path(tmp) / file_name), "space")

    # --- resuming ---------------------------------------------------------------------------------------------
    def resume(self, run, resume_command: str) -> None:
        """Mark the parent ``run`` (as read just before the claim) running again under this driver."""
        tags = run.data.tags
        self._before = _float(tags.get(record.SECONDS_RUN))
        resumes = int(tags.get(record.RESUMES, "0") or 0) + 1
        self.set_tags(
            {
                record.STATUS: "running",
                record.RESUMES: str(resumes),
                record.HEARTBEAT: f"{time.time():.0f}",  # a fresh beat before RUNNING: never read as stale
                record.DRIVER: driver_tag(),
                record.RESUME_COMMAND: resume_command,
            }
        )
        retrying(self.client.update_run, self.run_id, status="RUNNING")

    # --- life -------------------------------------------------------------------------------------------------
    def seconds_run(self) -> float:
        """The sweep's running time: under earlier drivers and under this one (budgets count it all)."""
        return self._before + time.time() - self._started

    def beat_tags(self) -> dict[str, str]:
        """What each heartbeat writes: the time, and the sweep's running time so far."""
        return {record.HEARTBEAT: f"{time.time():.0f}", record.SECONDS_RUN: f"{self.seconds_run():.1f}"}

    def set_tags(self, tags: dict[str, str]) -> None:
        retrying(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_result(self, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """The sweep's summary metrics and tags, in one round trip."""
        ts = int(time.time() * 1000)
        retrying(
            self.client.log_batch,
            self.run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )

    def end(self, ended_by: str, on_end=None) -> None:
        """End the parent run: tags ``status`` and ``ended_by`` and the running time, then the MLflow status
        (FINISHED when the sweep ran to an end; KILLED when it was interrupted or stopped by an error, so that
        ``--resume`` continues it). ``on_end`` runs between the tags and the status (the heartbeat stops there).
        Once it has succeeded a second call does nothing; one cut short (a Ctrl-C, a store down past its bound)
        can be called again and finishes it."""
        if self.ended is not None:
            return
        status = "completed" if ended_by in END_STATUS else "interrupted"
        self.set_tags(
            {record.STATUS: status, record.ENDED_BY: ended_by, record.SECONDS_RUN: f"{self.seconds_run():.1f}"}
        )
        if on_end is not None:
            on_end()
        retrying(self.client.set_terminated, self.run_id, END_STATUS.get(ended_by, "KILLED"))
        self.ended = ended_by


def _float(text) -> float:
    try:
        return max(float(text), 0.0)
    except (TypeError, ValueError):
        return 0.0


def parse_json_tag(run, name: str):
    """A JSON tag of a run, or None when it is missing or does not parse."""
    try:
        return json.loads(run.data.tags[name])
    except (KeyError, ValueError):
        return None
