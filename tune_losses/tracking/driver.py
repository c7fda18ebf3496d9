"""Who drives a sweep, and whether it still does: one driver per sweep.

A sweep's driver (the process running ``run_sweep``) is named on its parent run by the tag
``tune_losses.driver`` (JSON: host, boot id, pid namespace, pid, and the process's start in clock ticks since
boot), written when the parent is created, and by a param ``tune_losses.resumed_by.<n>`` (the same JSON and the
time) that each resume claims (:func:`claim`). A thread of the driver beats on the tag ``heartbeat`` every
:data:`HEARTBEAT_S` from the parent's creation (or resume) until ``run_sweep`` returns (:class:`Heartbeat`).
From these a reader anywhere knows whether the sweep is still driven:

* on the driver's own machine (same host name, boot and pid namespace: a container or a cloned machine that
  repeats the host name is not taken for it), at once: the process lives, is not a zombie and started when the
  tag says (a later process reusing the pid is not the driver); in the driver's own process, while
  ``run_sweep`` runs (:data:`ACTIVE`);
* elsewhere, by the heartbeat: over :data:`STALE_HEARTBEAT_S` old, the driver is gone (a kill, a lost machine).
  This assumes the two machines' clocks agree to well within that; a reader whose clock runs ahead takes a live
  driver for gone, one whose clock lags waits longer.

A second driver would train the same trials into the same checkpoints. Three things keep it out:

* ``--resume`` is refused while the sweep is driven (:func:`running_driver`);
* two resumes that both found it undriven both claim the same param ``tune_losses.resumed_by.<n>``, each with
  its own value: MLflow never changes a param, so one write wins and the other command stops
  (:func:`claim`); this holds across machines and users, on any store;
* on one machine, a driver holds exclusive locks for its life (:class:`DriverLock`: on the sweep's tracking
  store and name, and on its storage directory and name), which the kernel releases when it dies however it
  dies, so two commands started together cannot both create a sweep (across machines, a creation that sees a
  second parent of its name deletes its own: tuning/runner.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import stat as stat_
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: the tag of the parent run that names the sweep's driver
DRIVER_TAG = "tune_losses.driver"
#: the params a resume claims, ``<prefix><n>`` for the n-th resume (:func:`claim`)
CLAIM_PREFIX = "tune_losses.resumed_by."
#: seconds between two heartbeats of the driver on the parent run (tag ``heartbeat``, Unix time)
HEARTBEAT_S = 30.0
#: four beats missed, the driver is gone
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


def _claims(parent) -> dict[int, dict]:
    """The resumes' claims on the parent run, by number (values that do not parse are skipped)."""
    found = {}
    for key, value in parent.data.params.items():
        if key.startswith(CLAIM_PREFIX) and key[len(CLAIM_PREFIX) :].isdigit():
            try:
                found[int(key[len(CLAIM_PREFIX) :])] = json.loads(value)
            except ValueError:
                continue
    return found


def _last_claim(parent) -> dict | None:
    claims = _claims(parent)
    return claims[max(claims)] if claims else None


def _driver(parent) -> dict | None:
    """The latest driver: the last resume's claim (its tag follows it), else the tag written at creation."""
    try:
        found = _last_claim(parent) or json.loads(parent.data.tags[DRIVER_TAG])
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
    """When the driver last showed life: its heartbeat tag, or a resume's claim if later (a parent is created
    with its first beat; one without any is from a version that wrote none before the trials ran, cut short
    before they did: no driver)."""
    beats = []
    with contextlib.suppress(KeyError, ValueError):
        beats.append(float(parent.data.tags["heartbeat"]))
    with contextlib.suppress(KeyError, ValueError, TypeError):
        beats.append(float((_last_claim(parent) or {})["time"]))
    return max(beats) if beats else None


def _resuming(parent) -> bool:
    """A resume claimed the sweep after the parent run last ended: it is starting (not yet RUNNING)."""
    try:
        claimed = float((_last_claim(parent) or {})["time"])
    except (KeyError, ValueError, TypeError):
        return False
    return claimed * 1000 > (parent.info.end_time or 0)


def running_driver(parent) -> str | None:
    """Why the sweep is taken to be driven now (its driver's process lives, or, seen from another machine, it beat
    less than :data:`STALE_HEARTBEAT_S` ago), or None. A parent that is not RUNNING is driven only by a resume
    that claimed it and has not yet marked it RUNNING."""
    if parent.info.status != "RUNNING" and not _resuming(parent):
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


def claim(client, parent, retrying) -> None:
    """Claim the sweep for this resume: the param ``tune_losses.resumed_by.<n>``, n one past the last claim on
    ``parent`` as it was read when the sweep was found undriven. A resume that read it at the same time claims
    the same n with another value; MLflow keeps a param's first value and refuses a change, so exactly one
    succeeds, and the other raises :class:`SweepBusy`. A retried write of this process repeats the same value
    (idempotent). ``retrying``: tracking/ledger.py's."""
    from mlflow.exceptions import MlflowException

    n = max(_claims(parent), default=0) + 1
    value = json.dumps({**json.loads(driver_tag()), "time": round(time.time(), 3)})
    try:
        retrying(client.log_param, parent.info.run_id, f"{CLAIM_PREFIX}{n}", value)
    except MlflowException as exc:
        if "Changing param values is not allowed" not in str(exc):
            raise
        name = parent.data.tags.get("tune_losses.sweep", parent.info.run_name)
        raise SweepBusy(
            f"--resume: the sweep {name!r} was resumed at the same moment by another command (it claimed resume "
            f"{n} first); follow it with `tune-losses status {name}`"
        ) from None


class Heartbeat:
    """A daemon thread that writes the time on the parent run's tag ``heartbeat`` every :data:`HEARTBEAT_S`
    while the driver drives (from the parent's creation or resume to the end of ``run_sweep``, whatever the
    trials do). A failed write is logged, not retried: the next beat tries again."""

    def __init__(self, client, parent_run_id: str, every: float = HEARTBEAT_S):
        self.client, self.parent_run_id, self.every = client, parent_run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tune_losses-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.client.set_tag(self.parent_run_id, "heartbeat", f"{time.time():.0f}")
            except Exception as exc:
                log.warning("could not record the sweep's heartbeat: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def lock_dir() -> Path:
    """This user's directory of driver locks: ``$TUNE_LOSSES_LOCK_DIR``, else ``/tmp/tune_losses-locks-<uid>``
    (the literal /tmp, whatever ``TMPDIR`` says, so two shells of one user agree; the system's temporary
    directory where /tmp is not writable). Created mode 0700; one that is a link, another user's, or open to
    others is refused (another user could otherwise plant or hold the lock files)."""
    if os.environ.get("TUNE_LOSSES_LOCK_DIR"):
        path = Path(os.environ["TUNE_LOSSES_LOCK_DIR"])
    else:
        base = "/tmp" if os.access("/tmp", os.W_OK | os.X_OK) else tempfile.gettempdir()
        path = Path(base) / f"tune_losses-locks-{os.getuid()}"
    hint = "set TUNE_LOSSES_LOCK_DIR to a directory of your own on a local disk"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError as exc:
        raise ValueError(f"the driver lock directory {path}: {exc.strerror or exc}; {hint}") from None
    if not stat_.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise ValueError(
            f"the driver lock directory {path} is not this user's own (a link, another user's, or writable by "
            f"others); allowed: a directory owned by uid {os.getuid()}, not writable by others; {hint}"
        )
    return path


def _store_key(uri: str) -> str:
    """A tracking store, spelled one way: a SQLite or local path resolved, a server's URI without credentials."""
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve())
    if "://" not in uri or uri.startswith("file:"):
        return "file://" + str(Path(uri.removeprefix("file://").removeprefix("file:")).resolve())
    return re.sub(r"//[^/@]+@", "//", uri).rstrip("/")


class DriverLock:
    """Exclusive locks on a sweep while it runs: flock on files of :func:`lock_dir` named by hashes of the
    sweep's tracking store and name (the ledger it writes) and of its storage directory and name (the
    checkpoints it writes). The kernel releases them when the process ends, however it ends; they are per open
    file, so two ``run_sweep`` in one process exclude each other too, and not inherited by child processes
    (PEP 446; a fork keeps them until it execs or exits). Each file holds the holder's :func:`driver_tag` and
    the sweep, for the message of the command it refuses; it is never deleted (a deleted lock file could be
    locked twice)."""

    def __init__(self) -> None:
        self._fds: list[int] = []
        self.parent_run_id: str | None = None
        self._heartbeat: Heartbeat | None = None

    @staticmethod
    def paths(storage: str, name: str, tracking_uri: str | None = None) -> list[Path]:
        keys = [f"storage:{storage.rstrip('/')}/{name}"]
        if tracking_uri:
            keys.append(f"store:{_store_key(tracking_uri)}/{name}")
        names = sorted(hashlib.sha256(k.encode()).hexdigest()[:24] for k in keys)
        return [lock_dir() / f"{n}.lock" for n in names]

    def acquire(self, storage: str, name: str, tracking_uri: str | None = None) -> None:
        try:
            for path in self.paths(storage, name, tracking_uri):
                self._fds.append(self._take(path, storage, name))
        except BaseException:
            self.release()
            raise

    @staticmethod
    def _take(path: Path, storage: str, name: str) -> int:
        hint = "set TUNE_LOSSES_LOCK_DIR to a directory of your own on a local disk"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ValueError(f"the driver lock {path}: {exc.strerror or exc}; {hint}") from None
        try:
            st = os.fstat(fd)
            if not stat_.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise ValueError(f"the driver lock {path} is not a file of this user's; {hint}")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    holder = json.loads(os.pread(fd, 4096, 0))
                    pid = f"process {holder['pid']} on {holder['host']}"
                except (ValueError, KeyError, TypeError, OSError):
                    pid = "another process"
                raise SweepBusy(
                    f"the sweep {name!r} (storage {storage}) is being run by {pid}; follow it with `tune-losses "
                    f"status {name}`; once it has ended (or been stopped with Ctrl-C), --resume continues it; or "
                    "give this sweep another --name"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({**json.loads(driver_tag()), "sweep": name, "storage": storage}).encode(), 0)
            return fd
        except OSError as exc:  # e.g. ENOLCK: a file system without locks
            os.close(fd)
            raise ValueError(f"the driver lock {path}: {exc.strerror or exc}; {hint}") from None
        except BaseException:
            os.close(fd)
            raise

    def drives(self, parent_run_id: str, client=None) -> None:
        """This process drives that parent run now (:func:`driver_alive` says so to readers in this process);
        with ``client``, its heartbeat beats until :meth:`release`."""
        self.parent_run_id = parent_run_id
        ACTIVE.add(parent_run_id)
        if client is not None and self._heartbeat is None:
            self._heartbeat = Heartbeat(client, parent_run_id)

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self.parent_run_id is not None:
            ACTIVE.discard(self.parent_run_id)
        while self._fds:
            os.close(self._fds.pop())

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
