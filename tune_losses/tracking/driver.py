"""Who drives a sweep, and whether it still does: one driver per sweep.

A sweep's driver (the process running ``run_sweep``) is named on its parent run by the tag
``tune_losses.driver`` (JSON: host, boot id, pid namespace, pid, and the process's start in clock ticks since
boot), written when the parent is created and on every resume, and beats on the tag ``heartbeat`` every 30 s
(tracking/callback.py). From these a reader anywhere knows whether the sweep is still driven:

* on the driver's own machine (same host name, boot and pid namespace: a container or a cloned machine that
  repeats the host name is not taken for it), at once: the process lives, is not a zombie and started when the
  tag says (a later process reusing the pid is not the driver); in the driver's own process, while
  ``run_sweep`` runs (:data:`ACTIVE`);
* elsewhere, by the heartbeat: over :data:`STALE_HEARTBEAT_S` old, the driver is gone (a kill, a lost machine;
  the two machines' clocks are assumed to agree within that).

A second driver would train the same trials into the same checkpoints, so ``--resume`` is refused while the
sweep is driven (:func:`running_driver`); on top of that, a driver holds an exclusive lock for its life
(:class:`DriverLock`: a file under the system's temporary directory named by the sweep's storage directory and
name, so nothing is written in the user's directories before the sweep starts), which the kernel releases when
it dies however it dies, so two commands started together on one machine cannot both drive a sweep.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path

#: the tag of the parent run that names the sweep's driver
DRIVER_TAG = "tune_losses.driver"
#: a driver writes its heartbeat (tag ``heartbeat``) every 30 s (tracking/callback.py): four missed, it is gone
STALE_HEARTBEAT_S = 120.0
#: parent run ids whose driver is a ``run_sweep`` running in this process now
ACTIVE: set[str] = set()


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start in clock ticks since boot) of process ``pid`` from /proc (Linux), None when it is gone."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command, which may hold spaces and parentheses
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def _pid_namespace() -> str:
    try:
        return "".join(re.findall(r"\d+", os.readlink("/proc/self/ns/pid")))
    except OSError:
        return ""


def driver_tag() -> str:
    """This process as a sweep's driver (the value of :data:`DRIVER_TAG`)."""
    stat = _stat(os.getpid())
    return json.dumps(
        {
            "host": socket.gethostname(),
            "boot": _read("/proc/sys/kernel/random/boot_id"),
            "pidns": _pid_namespace(),
            "pid": os.getpid(),
            "start": stat[1] if stat else "",
        }
    )


def _driver(parent) -> dict | None:
    try:
        found = json.loads(parent.data.tags[DRIVER_TAG])
        found["pid"] = int(found["pid"])
        return found
    except (KeyError, ValueError, TypeError):
        return None


def driver_alive(parent) -> bool | None:
    """Whether the sweep's driver process still runs, where that can be known (this machine, see the module's
    docstring); None elsewhere, or for a parent without the tag."""
    d = _driver(parent)
    here = json.loads(driver_tag())
    if d is None or any(d.get(k) != here[k] for k in ("host", "boot", "pidns")) or not here["boot"]:
        return None
    if d["pid"] == os.getpid():
        return parent.info.run_id in ACTIVE  # a run_sweep of this process drives it now, or did and ended
    stat = _stat(d["pid"])
    if stat is None or stat[0] in ("Z", "X"):  # gone, or dead and not yet reaped by its parent
        return False
    return not d.get("start") or stat[1] == d["start"]  # a later process that reuses the pid is not the driver


def last_beat(parent) -> float | None:
    """When the driver last beat (a parent is created with its first beat; one without any is from a version
    that wrote none before the trials ran, cut short before they did: no driver)."""
    try:
        return float(parent.data.tags["heartbeat"])
    except (KeyError, ValueError):
        return None


def running_driver(parent) -> str | None:
    """Why the sweep is taken to be driven now (its driver's process lives, or, seen from another machine, it beat
    less than :data:`STALE_HEARTBEAT_S` ago), or None."""
    if parent.info.status != "RUNNING":
        return None
    alive = driver_alive(parent)
    if alive is not None:
        pid = (_driver(parent) or {}).get("pid")
        return f"its driver (process {pid} on this machine) is running" if alive else None
    beat = last_beat(parent)
    age = max(time.time() - beat, 0.0) if beat is not None else None
    if age is not None and age <= STALE_HEARTBEAT_S:
        return f"its driver beat {age:.0f} s ago (it is taken as gone after {STALE_HEARTBEAT_S:.0f} s without one)"
    return None


class SweepBusy(ValueError):
    """Another process runs this sweep now."""


class DriverLock:
    """An exclusive lock on a sweep while it runs: flock on ``<tmp>/tune_losses-locks/<hash>.lock``, the hash of
    the sweep's storage directory and name (released by the kernel when the process ends, however it ends; per
    open file, so two ``run_sweep`` in one process exclude each other too). The file holds the holder's
    :func:`driver_tag` and the sweep, for the message of the command it refuses; it is never deleted (a deleted
    lock file could be locked twice)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self.parent_run_id: str | None = None

    @staticmethod
    def path(storage: str, name: str) -> Path:
        key = hashlib.sha256(f"{storage.rstrip('/')}/{name}".encode()).hexdigest()[:24]
        return Path(tempfile.gettempdir()) / "tune_losses-locks" / f"{key}.lock"

    def acquire(self, storage: str, name: str) -> None:
        path = self.path(storage, name)
        if not path.parent.is_dir():
            path.parent.mkdir(exist_ok=True)
            with contextlib.suppress(OSError):  # shared by the machine's users, like /tmp itself
                os.chmod(path.parent, 0o1777)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by child processes (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = json.loads(_read(str(path)))
                pid = f"process {holder['pid']} on {holder['host']}"
            except (ValueError, KeyError, TypeError):
                pid = "another process"
            raise SweepBusy(
                f"the sweep {name!r} (storage {storage}) is being run by {pid}; follow it with `tune-losses "
                f"status {name}`; once it has ended (or been stopped with Ctrl-C), --resume continues it; or give "
                "this sweep another --name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({**json.loads(driver_tag()), "sweep": name, "storage": storage}).encode())
        self._fd = fd

    def drives(self, parent_run_id: str) -> None:
        """This process drives that parent run now (:func:`driver_alive` says so to readers in this process)."""
        self.parent_run_id = parent_run_id
        ACTIVE.add(parent_run_id)

    def release(self) -> None:
        if self.parent_run_id is not None:
            ACTIVE.discard(self.parent_run_id)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
