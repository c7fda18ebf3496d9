"""`tune-losses up` / `tune-losses down`: a local Ray kept running between commands, its worker processes already
holding torch and the trial code, so that a sweep's first trial starts in seconds instead of importing them.

``up`` starts a keeper (``python -m tune_losses.tuning.warm_ray``, in a session of its own, so that a Ctrl-C in
the terminal never reaches it or its Ray). The keeper starts Ray exactly as a sweep starts its own
(ray_runtime.py ``init_ray``: the preload list, no dashboard, all CPUs or ``--num-cpus``) and writes the address
file. Ray ends a job's worker processes with its driver, so each sweep would use up the warm workers: when a job
has ended and none runs, the keeper asks the raylet for new ones (``_internals.prestart_workers``), which import
the trial code while nothing else runs. ``down`` sends the keeper SIGTERM: it shuts its Ray down (only its own
processes; ``ray stop`` would stop every Ray of the machine) and removes the file.

The address file, ``<TUNE_LOSSES_HOME>/warm-ray.json`` (``runs/`` by default), written atomically, is how
``down`` and ``sweep`` find it. A file whose keeper is gone (a reboot, a kill) is stale: :func:`find` removes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILENAME = "warm-ray.json"
KEEPER = "tune_losses.tuning.warm_ray"  # the keeper's module: what its command line holds
START_TIMEOUT_S = 120.0  # Ray's start on a loaded 2-CPU machine takes 10-20 s
STOP_TIMEOUT_S = 30.0
POLL_S = 0.5
KEEP_ALIVE_S = 10 * 365 * 86400  # a prestarted worker stays until a job takes it (or `down`)
MAX_SOCKET_PATH = 100  # a Unix socket's address holds 108 bytes


@dataclass
class WarmRay:
    """What the address file holds."""

    address: str  # the GCS address, host:port
    pid: int  # the keeper's process id (the leader of the session Ray's processes run in)
    num_cpus: int
    preload: list[str]
    token_auth: bool  # whether a driver must send the token (~/.ray/auth_token) to join
    started: float  # epoch seconds
    fingerprint: str = ""  # of the code and settings its workers run with (``fingerprint``)
    driver_socket: str = ""  # where its warm driver listens (tuning/warm_driver.py); "" when it has none
    driver_pid: int = 0
    settings: dict = field(default_factory=dict)  # the same, one hash each (``settings``): what differs is named

    def describe(self) -> str:
        return f"address {self.address}, {self.num_cpus} CPUs, keeper pid {self.pid}"

    def join_env(self) -> None:
        """What a driver needs to join: the keeper's Ray takes the token Ray saved for it (~/.ray/auth_token)
        unless the user chose a mode (RAY_AUTH_MODE)."""
        if self.token_auth and "RAY_AUTH_MODE" not in os.environ:
            from tune_losses import _internals

            _internals.enable_token_auth()


def state_file() -> Path:
    from tune_losses.home import run_dir

    return run_dir() / FILENAME


#: what a trial process reads from its environment: the warm Ray's workers have `up`'s values, not a sweep's
TRIAL_ENV = (
    "TUNE_LOSSES_FUSED",
    "TUNE_LOSSES_STORE_WAIT_S",
    "TUNE_LOSSES_MLFLOW_RETRY_S",
    "TUNE_LOSSES_DATA",
    "TUNE_LOSSES_FEATURES",
    "TUNE_LOSSES_LOCK_DIR",
    "TORCH_EXTENSIONS_DIR",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


def driver_socket(home: Path) -> Path:
    """Where the warm driver (tuning/warm_driver.py) of the warm Ray in ``home`` listens: in ``home`` when the path
    fits a socket's address, else in a private folder of the temp directory named by ``home``'s hash."""
    path = home / "warm-driver.sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    folder = Path(tempfile.gettempdir()) / f"tune-losses-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    mode = folder.lstat()
    if mode.st_uid != os.getuid() or mode.st_mode & 0o077 or folder.is_symlink():
        raise PermissionError(f"{folder} is not a private folder of this user: the warm driver does not listen there")
    return folder / f"{hashlib.sha256(os.fsencode(home)).hexdigest()[:16]}.sock"


#: the libraries whose installation `code_fingerprint` notices (reinstalled: their folder is new)
LIBRARIES = ("torch", "torchvision", "ray", "mlflow", "optuna")


def code_fingerprint() -> str:
    """A hash of the package's code and of where and when its main libraries were installed: what the warm Ray's
    workers and its driver imported at `up`."""
    import importlib.util

    import tune_losses

    key = hashlib.sha256()
    root = Path(tune_losses.__file__).parent
    for source in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".cpp")):
        key.update(str(source.relative_to(root)).encode() + b"\0" + source.read_bytes())
    for name in LIBRARIES:
        spec = importlib.util.find_spec(name)
        for folder in (spec and spec.submodule_search_locations) or []:
            key.update(f"{folder}\0{os.stat(folder).st_mtime_ns}".encode())
    return key.hexdigest()[:16]


CODE = "the code of tune_losses or its libraries"


def settings() -> dict[str, str]:
    """What the warm Ray's workers run with, each hashed (a value is never stored): :func:`code_fingerprint`
    and each variable of :data:`TRIAL_ENV`."""
    hashed = {name: hashlib.sha256(json.dumps(os.environ.get(name)).encode()).hexdigest()[:12] for name in TRIAL_ENV}
    return {CODE: code_fingerprint(), **hashed}


def fingerprint(values: dict[str, str] | None = None) -> str:
    """All of :func:`settings` in one hash: a sweep joins the warm Ray only when its own is the same."""
    return hashlib.sha256(json.dumps(values or settings(), sort_keys=True).encode()).hexdigest()[:16]


def differences(recorded: dict[str, str]) -> list[str]:
    """What this process runs with that differs from the warm Ray's recorded :func:`settings`."""
    now = settings()
    return [name for name in now if recorded.get(name) != now[name]]


def read(path: Path | None = None) -> WarmRay | None:
    """The recorded warm Ray, alive or not; None when no file (or an unreadable one) is there."""
    path = path or state_file()
    try:
        return WarmRay(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def write(info: WarmRay, path: Path | None = None) -> None:
    """Atomically: a reader sees the old file or the new one, never half of one."""
    from tune_losses import atomic

    atomic.write_text(path or state_file(), json.dumps(asdict(info), indent=2))


def keeper_alive(pid: int) -> bool:
    """Whether ``pid`` is a running keeper (not a process that took its pid after a reboot)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return KEEPER in cmdline


def _gcs_answers(address: str) -> bool:
    from tune_losses.tracking.store import reachable

    host, _, port = address.rpartition(":")
    return reachable(host, int(port), 2.0) is None


def find(path: Path | None = None) -> WarmRay | None:
    """The warm Ray that is up, or None; a stale file (its keeper or its Ray gone) is removed."""
    path = path or state_file()
    info = read(path)
    if info is None:
        return None
    if not keeper_alive(info.pid):
        _remove(path, info.pid)
        return None
    return info if _gcs_answers(info.address) else None  # alive but slow: not joined now, and not forgotten


def _remove(path: Path, pid: int) -> None:
    """Remove the file if it still names ``pid`` (a new keeper may have written its own meanwhile)."""
    current = read(path)
    if current is not None and current.pid == pid:
        path.unlink(missing_ok=True)


def up(num_cpus: int | None = None, driver_entry: str = "") -> tuple[WarmRay, bool]:
    """Start the keeper and wait for its address file: (the warm Ray, whether one was already up). With a
    ``driver_entry`` (``module:function``, the command's ``main``), the keeper also starts a warm driver that
    forks that command (tuning/warm_driver.py)."""
    path = state_file()
    found = find(path)
    if found is not None:
        return found, True
    held = read(path)
    if held is not None and keeper_alive(held.pid):  # up, its Ray slow to answer: never a second keeper
        return held, True
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log")
    cmd = [sys.executable, "-m", KEEPER, str(path), str(num_cpus or 0), driver_entry]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own, never a joined one
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        info = read(path)
        if info is not None and info.pid == proc.pid:
            return info, False
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the warm Ray did not start (exit {proc.returncode}); its log {log}:\n{tail}")
        time.sleep(POLL_S)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError(f"the warm Ray did not start within {START_TIMEOUT_S:g} s; its log: {log}")


def down() -> tuple[WarmRay | None, bool]:
    """Stop the warm Ray: (what the file recorded, whether a running one was stopped)."""
    path = state_file()
    info = read(path)
    if info is None:
        return None, False
    if not keeper_alive(info.pid):
        _remove(path, info.pid)
        return info, False
    os.kill(info.pid, signal.SIGTERM)  # the keeper shuts its Ray down and removes the file
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while keeper_alive(info.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if keeper_alive(info.pid):
        os.killpg(info.pid, signal.SIGKILL)  # its session: the keeper and every Ray process it started
    _remove(path, info.pid)
    return info, True


# --- the keeper (its own process) ---------------------------------------------------------------------------------
def idle_workers(session: int) -> int:
    """Worker processes of this session's Ray waiting for work (Ray titles them ``ray::IDLE``)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getsid(int(pid)) == session and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::IDLE"):
                count += 1
        except OSError:
            continue
    return count


def _rewarm(info: WarmRay, node: dict, own_job, ended: int) -> int:
    """Once a job has ended and none runs, start preloaded workers for the CPUs that have none waiting (Ray ends
    a job's workers with it). Returns how many jobs have ended."""
    from tune_losses import _internals

    jobs = {job: running for job, running in _internals.job_states().items() if job != own_job}
    now_ended = sum(not running for running in jobs.values())
    if now_ended > ended and not any(jobs.values()):
        time.sleep(1.0)  # the ended job's workers exit
        missing = info.num_cpus - idle_workers(os.getsid(0))
        if missing > 0:
            _internals.prestart_workers(node["NodeManagerAddress"], node["NodeManagerPort"], missing, KEEP_ALIVE_S)
        return now_ended
    return ended


def keep(path: Path, num_cpus: int | None, driver_entry: str = "") -> None:
    """The keeper's life: start Ray (and the warm driver), record it, keep its workers warm until SIGTERM."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    # before this process imports Ray (which sets variables): the driver has `up`'s environment
    try:
        driver = _start_driver(path, driver_entry) if driver_entry else None
    except OSError as exc:  # no place for its socket: sweeps start their own driver, as without `up`
        print(f"the warm driver did not start: {exc}", file=sys.stderr, flush=True)
        driver = None
    try:
        import ray

        from tune_losses import _internals

        from .ray_runtime import PRELOAD_MODULES, init_ray

        init_ray("local", num_cpus, verbose=0)
        node = next(n for n in ray.nodes() if n.get("Alive"))
        info = WarmRay(
            address=ray.get_runtime_context().gcs_address,
            pid=os.getpid(),
            num_cpus=int(ray.cluster_resources().get("CPU", 0)),
            preload=list(PRELOAD_MODULES),
            token_auth=_internals.token_auth_enabled(),
            started=time.time(),
            fingerprint=fingerprint(recorded := settings()),
            settings=recorded,
            driver_socket=_driver_ready(driver, driver_socket(path.parent), path) if driver else "",
            driver_pid=driver.pid if driver else 0,
        )
        own_job = ray.get_runtime_context().get_job_id()
        _keep_warm(path, info, node, own_job)
    finally:
        if driver is not None:  # it stops listening at once, and ends once the sweeps forked from it have
            driver.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                driver.wait(timeout=STOP_TIMEOUT_S / 2)


def _keep_warm(path: Path, info: WarmRay, node: dict, own_job) -> None:
    import ray

    try:
        write(info, path)
        ended = 0
        while True:
            time.sleep(POLL_S)
            try:
                ended = _rewarm(info, node, own_job, ended)
            except Exception as exc:  # a slow GCS, a timed-out call: the sweeps on this Ray go on; try again
                print(f"keeping the workers warm failed ({exc!r}); trying again", file=sys.stderr, flush=True)
                time.sleep(5 * POLL_S)
    finally:
        _remove(path, info.pid)
        ray.shutdown()


def _start_driver(path: Path, entry: str) -> subprocess.Popen:
    """The warm driver (tuning/warm_driver.py), in the keeper's session: `down` stops it with the keeper."""
    sock = driver_socket(path.parent)
    sock.unlink(missing_ok=True)
    with open(path.with_name("warm-driver.log"), "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tune_losses.tuning.warm_driver", str(sock), entry],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _driver_ready(driver: subprocess.Popen, sock: Path, path: Path) -> str:
    """The driver's socket once it listens; "" (sweeps start their own driver) if it failed: its log says why."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and driver.poll() is None:
        if sock.exists():
            return str(sock)
        time.sleep(POLL_S / 5)
    print(f"the warm driver did not start; see {path.with_name('warm-driver.log')}", file=sys.stderr, flush=True)
    return ""


if __name__ == "__main__":
    keep(Path(sys.argv[1]), int(sys.argv[2]) or None, sys.argv[3])
