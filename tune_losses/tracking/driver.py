"""Who drives a sweep, and whether it still does: one driver per sweep.

A sweep's driver (the process running ``run_sweep``) is named on its parent run by the tag
``tune_losses.driver`` (JSON: host, boot id, pid namespace, pid, and the process's start in clock ticks since
boot), written when the parent is created, and by a param ``tune_losses.resumed_by.<n>`` (the same JSON and the
time) that each resume claims (:func:`claim`). A thread of the driver beats on the tag ``heartbeat`` every
:data:`HEARTBEAT_S` from just after the parent's creation (which writes the first beat) or resume until the
parent has ended (:class:`Heartbeat`).
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
  its own value: a database-backed store never changes a param, so one write wins and the other command stops
  (:func:`claim`), across machines and users (MLflow's file store checks and writes in two steps: there the
  claim narrows the race without closing it);
* a driver that looked gone (paused, or cut off from the store, past :data:`STALE_HEARTBEAT_S`) and was
  resumed elsewhere sees the later claim at its first beat that reaches the store again and stops itself
  (:class:`Heartbeat`; until then, and while its trial processes die with it, both may write);
* for one user on one machine, a driver holds exclusive locks for its life (:class:`DriverLock`: on the sweep's
  tracking store and name, and on its storage directory and name), which the kernel releases when it dies
  however it dies, so two commands started together cannot both create a sweep (across machines or users, a
  creation that sees a second parent of its name deletes its own, at worst both: tuning/runner.py).

While the store is down nothing of this can be read from the store. So the driver also says how it sees the
store on this machine: :class:`StoreWatch` probes it every :data:`WATCH_S` and writes a health file beside the
store's lock file (:func:`health_path`), which ``tune-losses status`` reads when the store does not answer
(:func:`local_driver`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import socket
import stat as stat_
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from mlflow.entities import RunTag

from tune_losses import atomic, process

from . import record, store
from .ledger import STORE, retry_seconds

log = logging.getLogger(__name__)

#: the tag of the parent run that names the sweep's driver
DRIVER_TAG = record.DRIVER
#: the params a resume claims, ``<prefix><n>`` for the n-th resume (:func:`claim`)
CLAIM_PREFIX = record.RESUMED_BY
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


def _pid_namespace() -> str:
    try:
        return "".join(re.findall(r"\d+", os.readlink("/proc/self/ns/pid")))
    except OSError:
        return ""


def driver_tag() -> str:
    """This process as a sweep's driver (the value of :data:`DRIVER_TAG`)."""
    stat = process.stat(os.getpid())
    return json.dumps(
        {
            "host": socket.gethostname(),
            "boot": _read("/proc/sys/kernel/random/boot_id"),
            "pidns": _pid_namespace(),
            "pid": os.getpid(),
            "start": stat[1] if stat else "",
        }
    )


def _claims(parent) -> dict[int, str]:
    """The resumes' claims on the parent run: number -> value."""
    params = parent.data.params
    return {
        int(k[len(CLAIM_PREFIX) :]): v
        for k, v in params.items()
        if k.startswith(CLAIM_PREFIX) and re.fullmatch(r"[0-9]+", k[len(CLAIM_PREFIX) :])
    }


def _last_claim(parent) -> dict | None:
    """The last claim's driver and time (None without claims, or when it does not parse)."""
    claims = _claims(parent)
    try:
        found = json.loads(claims[max(claims)]) if claims else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


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
    if d is not None and d["pid"] == os.getpid() and _here(d):
        return parent.info.run_id in ACTIVE  # a run_sweep of this process drives it now, or did and ended
    return _alive_here(d)


def _here(d: dict) -> bool:
    """Whether the driver ``d`` (a :func:`driver_tag`) ran on this machine, in this pid namespace."""
    here = json.loads(driver_tag())
    return bool(here["boot"]) and all(d.get(k) == here[k] for k in ("host", "boot", "pidns"))


def _alive_here(d: dict | None) -> bool | None:
    """Whether the process of driver tag ``d`` lives (None: not of this machine)."""
    if d is None or not _here(d):
        return None
    stat = process.stat(int(d["pid"]))
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


def claim(client, parent, retrying) -> int:
    """Claim the sweep for this resume: the param ``tune_losses.resumed_by.<n>``, n one past the last claim on
    ``parent`` as it was read when the sweep was found undriven; returns n. A resume that read it at the same
    time claims the same n with another value (each holds a nonce); a database-backed store (SQLite, PostgreSQL,
    MySQL, or a server with one behind it) keeps a param's first value and refuses a change, so exactly one
    succeeds, and the other raises :class:`SweepBusy`. Which value the store holds decides, read back after the
    write (a retried write of this process repeats its own value; MLflow's file store checks and writes in two
    steps, where reading back narrows the race without closing it). ``retrying``: tracking/ledger.py's."""
    from mlflow.exceptions import MlflowException

    n = max(_claims(parent), default=0) + 1
    key = f"{CLAIM_PREFIX}{n}"
    value = json.dumps({**json.loads(driver_tag()), "time": round(time.time(), 3), "nonce": uuid.uuid4().hex})
    with contextlib.suppress(MlflowException):  # refused: the value read back says who claimed n first
        retrying(client.log_param, parent.info.run_id, key, value)
    held = retrying(client.get_run, parent.info.run_id).data.params.get(key)
    if held is None:
        raise RuntimeError(f"could not record the claim {key} on the sweep's parent run {parent.info.run_id}")
    if held != value:
        name = parent.data.tags.get(record.SWEEP, parent.info.run_name)
        raise SweepBusy(
            f"--resume: the sweep {name!r} was resumed at the same moment by another command (it claimed resume "
            f"{n} first); follow it with `tune-losses status {name}`"
        )
    return n


def _supersede(message: str) -> None:
    """What a driver does when another has claimed its sweep: stop at once, writing nothing more, as a kill
    would (its trials end with it; the new driver continues them from the ledger)."""
    log.warning(message)  # to the sweep's log file; the console gets the line below
    print(f"error: {message}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


class Heartbeat:
    """A daemon thread that writes the time on the parent run's tag ``heartbeat`` every :data:`HEARTBEAT_S`
    while the driver drives (from just after the parent's creation or resume until the parent has ended). A
    failed write is logged, not retried: the next beat tries again.

    After each beat it reads the parent: a claim past this driver's own (``claimed``: its resume's number, 0
    for the creation) means another command took the sweep over, as one may when this driver looked gone (it
    was paused, or the store was out of reach, for over :data:`STALE_HEARTBEAT_S`): the driver stops at once
    (``on_superseded``, by default a SIGKILL of this process): the overlap of two drivers is bounded by this
    driver's next beat that reaches the store (up to one beat after it wakes; a driver cut off from the store
    goes on until it reaches it again, its trials waiting on the store as well). It beats whether
    or not trials progress (a driver that hangs keeps its sweep)."""

    def __init__(
        self,
        client,
        parent_run_id: str,
        claimed: int = 0,
        every: float | None = None,
        on_superseded=None,
        beat_tags=None,
    ):
        """``beat_tags``: what a beat writes besides the time (tracking/parent.py ``ParentRun.beat_tags``)."""
        self.client, self.parent_run_id, self.claimed = client, parent_run_id, claimed
        self.beat_tags = beat_tags or (lambda: {"heartbeat": f"{time.time():.0f}"})
        self.every = HEARTBEAT_S if every is None else every
        self.on_superseded = on_superseded or _supersede
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tune_losses-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:  # the beat first: a read that fails or is slow must not make this driver look gone
                tags = [RunTag(k, v) for k, v in self.beat_tags().items()]
                self.client.log_batch(self.parent_run_id, tags=tags)
                STORE.reached()
            except Exception as exc:
                STORE.failed(exc)
                log.warning("could not record the sweep's heartbeat: %s", exc)
            try:
                parent = self.client.get_run(self.parent_run_id)
            except Exception as exc:
                log.warning("could not read the sweep's parent run: %s", exc)
                continue
            latest = max(_claims(parent), default=0)
            if latest > self.claimed and not self._stop.is_set():
                name = parent.data.tags.get(record.SWEEP, parent.info.run_name)
                self.on_superseded(
                    f"the sweep {name!r} was taken over by another command (resume {latest}) while this driver "
                    "looked gone; this driver stops, the other continues its trials"
                )
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


#: seconds between two probes of the store by a running driver (:class:`StoreWatch`)
WATCH_S = 2.0


class StoreWatch:
    """A daemon thread of the driver that notices a store going down, and coming back, within :data:`WATCH_S`
    (its own calls are few: a heartbeat every 30 s and the scheduler's decisions), and keeps the health file
    (:func:`health_path`) in step with what this process knows of the store (:data:`ledger.STORE`).

    A store with a server (MLflow's, a database's) is probed by a TCP connection to it, which cannot hang or
    fill the log; a change of the probe's answer marks the store failing or reached. A failure met by any other
    call of the driver marks it too (tracking/ledger.py ``retrying``)."""

    def __init__(self, tracking_uri: str, health: Path, facts: dict, every: float | None = None):
        self.address = store.server_address(tracking_uri)
        self.health, self.facts = health, facts
        self.every = WATCH_S if every is None else every
        self._probed_down = False
        self._written: object = object()  # what the health file says of the store (nothing yet)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tune_losses-store-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a watch must never stop a sweep
                self.probe()
                self.write()
            if self._stop.wait(self.every):
                return

    def probe(self) -> None:
        if self.address is None:
            return
        why = store.reachable(*self.address, min(self.every, 2.0))
        where = f"{self.address[0]}:{self.address[1]}"
        if why and not self._probed_down:
            STORE.failed(ConnectionError(f"no connection to {where}: {why}"))
            log.warning("the tracking store does not answer: no connection to %s: %s", where, why)
        elif not why and self._probed_down:
            STORE.reached()
            log.warning("the tracking store at %s takes connections again", where)
        self._probed_down = bool(why)

    def write(self) -> None:
        """The health file, when what it says changed: written whole, then renamed over the old one."""
        since = STORE.failing_since
        if since == self._written:
            return
        text = json.dumps(
            {
                **self.facts,
                "store_down_since": since,
                "store_error": store.redact(STORE.last_error) if since else "",  # never a URI's password
                "wait_s": retry_seconds(),
                "written": time.time(),
            }
        )
        # only this user reads it (the lock directory may not); a lock directory gone is never made again here
        atomic.write_text(self.health, text, mode=0o600, make_dirs=False)
        self._written = since

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.health.unlink()


def _lock_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _store_lock_key(tracking_uri: str, name: str) -> str:
    return f"store:{_store_key(tracking_uri)}/{name}"


def health_path(tracking_uri: str, name: str) -> Path:
    """Where the driver of sweep ``name`` on this store says how it sees the store: beside the store's lock."""
    return lock_dir() / f"{_lock_name(_store_lock_key(tracking_uri, name))}.health.json"


def local_driver(tracking_uri: str, sweep: str) -> dict | None:
    """The health file of a live driver of this machine that drives ``sweep`` (its name or parent run id) on
    this store (``store_down_since``: since when it has not reached the store, or None; ``wait_s``: how long its
    trials wait for it), or None. Read without the store: what ``tune-losses status`` says while it is down."""
    try:
        found = [health_path(tracking_uri, sweep), *sorted(lock_dir().glob("*.health.json"))]
    except ValueError:  # no lock directory of this user's: no driver of this user here
        return None
    for path in found:
        try:
            facts = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        ours = facts.get("store") == _store_key(tracking_uri) and sweep in (facts.get("sweep"), facts.get("run_id"))
        if isinstance(facts, dict) and ours and _alive_here(facts):
            return facts
    return None


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


LOCK_HINT = "set TUNE_LOSSES_LOCK_DIR to a directory of your own on a local disk"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` names the file open as ``fd`` (not deleted, not replaced by a new file)."""
    try:
        here, there = os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino) and here.st_nlink == 1


class DriverLock:
    """Exclusive locks on a sweep while it runs: flock on files of :func:`lock_dir` named by hashes of the
    sweep's tracking store and name (the ledger it writes) and of its storage directory and name (the
    checkpoints it writes). The kernel releases them when the process ends, however it ends; they are per open
    file, so two ``run_sweep`` in one process exclude each other too, and not inherited by child processes
    (PEP 446; a fork keeps them until it execs or exits). Each file holds the holder's :func:`driver_tag` and
    the sweep, for the message of the command it refuses. A released lock's file is deleted, so the directory
    does not grow: only by its holder, while it holds the flock; and a taker that locked a file which was then
    deleted (it opened it before the holder deleted it) finds that the path no longer names the file it locked
    and opens the path again (else two processes could each hold a lock on a different file of one name)."""

    def __init__(self) -> None:
        self._fds: list[tuple[Path, int]] = []
        self.parent_run_id: str | None = None
        self._heartbeat: Heartbeat | None = None
        self._watch: StoreWatch | None = None
        self._sweep: tuple[str, str | None] = ("", None)  # the sweep's name and tracking store

    @staticmethod
    def paths(storage: str, name: str, tracking_uri: str | None = None) -> dict[Path, str]:
        """The lock files, in the order they are taken, each with what it covers (for messages)."""
        keys = {f"storage:{storage.rstrip('/')}/{name}": f"storage {storage}"}
        if tracking_uri:
            keys[_store_lock_key(tracking_uri, name)] = f"tracking store {_store_key(tracking_uri)}"
        found = {_lock_name(k): what for k, what in keys.items()}
        return {lock_dir() / f"{h}.lock": found[h] for h in sorted(found)}

    def acquire(self, storage: str, name: str, tracking_uri: str | None = None) -> None:
        self._sweep = (name, tracking_uri)
        try:
            for path, what in self.paths(storage, name, tracking_uri).items():
                self._fds.append((path, self._take(path, what, storage, name)))
        except BaseException:
            self.release()
            raise

    @staticmethod
    def _take(path: Path, what: str, storage: str, name: str) -> int:
        for _ in range(100):  # a new try only when a holder deleted the file between our open and our lock
            fd = DriverLock._open(path)
            try:
                if DriverLock._locked(fd, path, name, what):
                    os.ftruncate(fd, 0)
                    tag = {**json.loads(driver_tag()), "sweep": name, "storage": storage}
                    os.pwrite(fd, json.dumps(tag).encode(), 0)
                    return fd
            except OSError as exc:  # e.g. ENOLCK: a file system without locks
                os.close(fd)
                raise ValueError(f"the driver lock {path}: {exc.strerror or exc}; {LOCK_HINT}") from None
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise ValueError(f"the driver lock {path} was deleted under this driver 100 times; {LOCK_HINT}")

    @staticmethod
    def _open(path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ValueError(f"the driver lock {path}: {exc.strerror or exc}; {LOCK_HINT}") from None
        st = os.fstat(fd)
        if not stat_.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_nlink > 1:
            os.close(fd)
            raise ValueError(f"the driver lock {path} is not a file of this user's alone (or is linked); {LOCK_HINT}")
        return fd

    @staticmethod
    def _locked(fd: int, path: Path, name: str, what: str) -> bool:
        """True once ``fd`` is locked and ``path`` still names its file; False: its holder deleted it meanwhile
        (take the path again); SweepBusy when another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0))
                pid = f"process {holder['pid']} on {holder['host']}"
            except (ValueError, KeyError, TypeError, OSError):
                pid = "another process"
            raise SweepBusy(
                f"the sweep {name!r} ({what}) is being run by {pid}; follow it with `tune-losses "
                f"status {name}`; once it has ended (or been stopped with Ctrl-C), --resume continues it; or "
                "give this sweep another --name"
            ) from None
        return _same_file(fd, path)

    def drives(self, parent_run_id: str, client=None, claimed: int = 0, beat_tags=None) -> None:
        """This process drives that parent run now (:func:`driver_alive` says so to readers in this process);
        with ``client``, its :class:`Heartbeat` beats (``claimed``: the number of this resume's claim;
        ``beat_tags``: what each beat writes) until :meth:`ended` or :meth:`release`."""
        self.parent_run_id = parent_run_id
        ACTIVE.add(parent_run_id)
        if client is not None and self._heartbeat is None:
            self._heartbeat = Heartbeat(client, parent_run_id, claimed, beat_tags=beat_tags)
        name, uri = self._sweep
        if uri and self._watch is None:
            facts = {**json.loads(driver_tag()), "sweep": name, "run_id": parent_run_id, "store": _store_key(uri)}
            self._watch = StoreWatch(uri, health_path(uri, name), facts)

    def ended(self) -> None:
        """The parent run has ended: no more beats (a report built afterwards is not the sweep running)."""
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    def release(self) -> None:
        self.ended()
        if self.parent_run_id is not None:
            ACTIVE.discard(self.parent_run_id)
        while self._fds:
            path, fd = self._fds.pop()
            try:
                if _same_file(fd, path):  # still ours, and locked: no one else can delete or replace it now
                    path.unlink()
            except OSError:
                pass  # left for the next taker to reuse
            os.close(fd)

    def __enter__(self) -> DriverLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
