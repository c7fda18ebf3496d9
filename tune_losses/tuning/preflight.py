"""Checks a sweep makes before anything starts: the sweep's name, writable paths, CPUs and GPUs per trial, a
tracking store MLflow can serve and reach, a reachable Ray cluster, a sweep to resume, the data set. Each failure
is one SpaceError naming the file or option, the value and what is allowed; none of them starts Ray or writes to
MLflow (the one check that needs a joined cluster, check_ray_resources, runs before MLflow is written)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

from tune_losses import tracking
from tune_losses.spaces import Space, SpaceError, check_name

CONNECT_TIMEOUT = 5.0  # a Ray head's port (the tracking store's bound is tracking.store.store_timeout())
#: Seconds to wait, on a cluster an autoscaler may grow, for a node that can hold one trial (default 0: fail at once).
RESOURCE_WAIT_ENV = "TUNE_LOSSES_RESOURCE_WAIT_S"


def check_sweep_name(name: str, option: str = "--name") -> None:
    """The sweep's name is a directory under --storage: no path, no hidden or empty name."""
    try:
        check_name(name)
    except ValueError as exc:
        raise SpaceError(f"{option}={name!r} {str(exc).removeprefix(repr(name) + ' ')}") from None


def check_writable(path: Path, what: str) -> None:
    """Fail when a directory the sweep writes to cannot be written."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        why = "is a file, not a directory" if not probe.is_dir() else "has no write permission"
        raise SpaceError(f"{what}={str(path)!r} is not writable ({probe} {why}); choose a directory you can write to")


def _reachable(host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> str | None:
    """None when a TCP connection opens, else why not."""
    return tracking.store.reachable(host, port, timeout)


def check_tracking(uri: str, resume: bool, name: str) -> None:
    """MLflow must serve the URI's scheme, an MLflow server must answer a first read, a database server take a
    connection, each within TUNE_LOSSES_STORE_TIMEOUT s (not MLflow's minutes of retries); a sweep to resume needs
    a store that exists (without creating one). A database is not read here: a first read builds its schema."""
    shown, option = tracking.redact(uri), tracking.store.option_for(uri)
    try:
        tracking.store.check_uri(uri, option)
        timeout = tracking.store.store_timeout()
    except ValueError as exc:
        raise SpaceError(str(exc)) from None
    parsed, address = urlparse(uri), tracking.store.server_address(uri)
    if address is not None:
        why = _reachable(*address, timeout=timeout)
        if why and parsed.scheme in ("http", "https"):
            raise SpaceError(
                f"{option}={shown!r}: no MLflow server answers at {address[0]}:{address[1]} "
                f"({why}); allowed: the URI of a running MLflow server, or a sqlite:/// path"
            )
        if why:
            raise SpaceError(f"{option}={shown!r}: the database server does not answer ({why})")
        if parsed.scheme in ("http", "https"):
            try:
                tracking.store.probe(uri, timeout)
            except tracking.store.StoreUnavailable as exc:
                raise SpaceError(str(exc)) from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        check_writable(db.parent, option)
        if resume and not db.is_file():
            raise SpaceError(
                f"--resume: no sweep named {name!r}: the tracking store {db} does not exist; "
                "allowed: the name of a sweep recorded in that store"
            )


def check_ray_address(address: str | None, option: str = "--address") -> None:
    """An address (host:port or ray://host:port, from ``option``) must answer before the driver joins it."""
    if not address or address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if not parsed.hostname or not parsed.port:
        raise SpaceError(
            f"{option}={address!r} is not allowed: give HOST:PORT of a Ray head "
            "(e.g. 127.0.0.1:6379), ray://HOST:10001, or 'auto'"
        )
    why = _reachable(parsed.hostname, parsed.port)
    if why:
        raise SpaceError(
            f"{option}={address!r}: no Ray cluster answers there ({why}); allowed: the address of a "
            f"running Ray head (`ray start --head` prints it), or no {option} for a local Ray"
        )
    if "://" not in address:  # a GCS address (ray:// is Ray Client's own protocol)
        check_ray_auth(address, option)


# Run in a process of its own: Ray's C++ client aborts the process when token mode is on and no token is found,
# and retries a silent port for many seconds. It reads RAY_AUTH_MODE / RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH /
# ~/.ray/auth_token exactly as the driver's ray.init will (an explicit address never turns token mode on).
_AUTH_PROBE = """
import sys
from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, InnerGcsClient, get_authentication_mode
from ray.exceptions import AuthenticationError
token_mode = get_authentication_mode() == AuthenticationMode.TOKEN
if token_mode and not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
    print("no-token")
    sys.exit()
try:
    InnerGcsClient.standalone(sys.argv[1], None, 3000)
    print("ok")
except AuthenticationError:
    print("refused-token" if token_mode else "refused-no-mode")
except Exception as exc:
    print("other", type(exc).__name__)
"""
AUTH_PROBE_TIMEOUT = 10.0
_AUTH_HELP = (
    "allowed: the cluster's token in the driver's environment: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the token "
    "the head was started with> (or RAY_AUTH_TOKEN_PATH=<a file holding it>)"
)


def check_ray_auth(address: str, option: str = "--address") -> None:
    """Before Ray's client starts (which otherwise retries ~20 s, then prints two tracebacks): one call to the
    cluster's GCS tells whether it takes this driver's token. A missing or wrong token is one SpaceError naming
    RAY_AUTH_TOKEN and RAY_AUTH_MODE; a probe that cannot tell (a timeout, another error) leaves it to Ray."""
    import subprocess
    import sys

    try:
        out = subprocess.run(
            [sys.executable, "-c", _AUTH_PROBE, address], capture_output=True, text=True, timeout=AUTH_PROBE_TIMEOUT
        ).stdout.split()
    except subprocess.TimeoutExpired:
        return
    verdict = out[0] if out else "other"
    why = {
        "no-token": "RAY_AUTH_MODE=token is set here but no token is: RAY_AUTH_TOKEN is unset and no token file "
        "exists (RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)",
        "refused-no-mode": "the cluster requires token authentication and this driver sends no token "
        "(RAY_AUTH_MODE is not 'token' here)",
        "refused-token": "the cluster refused this driver's token (RAY_AUTH_TOKEN, or the token file, is not "
        "the one the cluster was started with)",
    }.get(verdict)
    if why:
        raise SpaceError(f"{option}={address!r}: {why}; {_AUTH_HELP}")


def check_cluster_store(address: str | None, uri: str, option: str = "--address") -> None:
    """A sweep on a cluster records from every node: a local store (a sqlite: file, a file: directory, a path)
    would be a separate, empty store on each node, and the driver would never see the trials' records."""
    if not address or address == "local":
        return
    scheme = uri.split("://")[0].lower() if "://" in uri else ""
    if scheme in ("sqlite", "file", ""):
        raise SpaceError(
            f"{option}={address!r} with the local tracking store {tracking.redact(uri)!r} "
            f"({tracking.store.option_for(uri)}): each node of the cluster would write a store of its own and the "
            "driver would see none of the trials; allowed: an MLflow server every node reaches "
            "(--tracking-uri http://HOST:5000, `mlflow server --backend-store-uri postgresql://...`), or a "
            "database URI every node reaches (postgresql+psycopg2://USER@HOST/DB)"
        )


def check_resources(space: Space, source: str, nodes: list[dict], where: str, waited: float = 0) -> None:
    """One trial runs on one node: fail when no node of ``nodes`` (Ray resource dicts, {"CPU": 2, "GPU": 1, ...})
    has the CPUs and GPUs one trial asks for. Ray would queue such a trial forever. More trials than fit at once is
    fine (Ray queues them until others finish)."""
    want = {"cpu": space.resources.cpu, "gpu": space.resources.gpu}
    if any(all(n.get(k.upper(), 0) >= v for k, v in want.items() if v > 0) for n in nodes):
        return
    largest = {k: max((n.get(k.upper(), 0) for n in nodes), default=0) for k in want}
    after = f" (after waiting {waited:g} s for one)" if waited else ""
    place = f"the {where}" if len(nodes) <= 1 else f"the largest node of the {where}"
    for k, v in want.items():
        if v > largest[k]:
            unit = k.upper()
            if k == "gpu":
                allowed = f"0 to {largest[k]:g}" if largest[k] else "0 (no GPU found)"
            else:
                allowed = f"> 0, up to {largest[k]:g}" if largest[k] else "none here: no node has a CPU to give"
            raise SpaceError(
                f"{source}: resources.{k}: {v:g} {unit} per trial is more than {place} has "
                f"({largest[k]:g}){after}; allowed: {allowed}"
            )
    sizes = [{k: n.get(k, 0) for k in ("CPU", "GPU")} for n in nodes]
    raise SpaceError(
        f"{source}: resources: {want['cpu']:g} CPU and {want['gpu']:g} GPU per trial: no node of the "
        f"{where} has both at once{after} (nodes: {sizes}); allowed: what one node has"
    )


def check_local_resources(space: Space, source: str, num_cpus: int | None, gpus: int) -> None:
    """Before a local Ray starts: one trial must fit this machine (its CPUs, or ``num_cpus``, and its GPUs)."""
    where = f"local Ray (num_cpus={num_cpus})" if num_cpus else "machine"
    check_resources(space, source, [{"CPU": num_cpus or os.cpu_count() or 1, "GPU": gpus}], where)


def resource_wait_s() -> float:
    raw = os.environ.get(RESOURCE_WAIT_ENV, "") or "0"
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if not 0 <= value < float("inf"):
        raise SpaceError(f"{RESOURCE_WAIT_ENV}={raw!r} is not allowed; allowed: seconds >= 0 (0: no wait)")
    return value


def check_ray_resources(space: Space, source: str, where: str = "cluster", poll_s: float = 2.0) -> None:
    """Once Ray is up (local or joined): one trial must fit the largest live node. With TUNE_LOSSES_RESOURCE_WAIT_S
    > 0 (an autoscaler may add nodes) it waits up to that long for such a node, saying so in one line."""
    import ray

    wait = resource_wait_s()
    nodes = lambda: [n["Resources"] for n in ray.nodes() if n.get("Alive")]  # noqa: E731
    try:
        check_resources(space, source, nodes(), where)
        return
    except SpaceError:
        if wait <= 0:
            raise
    print(
        f"No node of the {where} has {space.resources.cpu:g} CPU and {space.resources.gpu:g} GPU for one trial; "
        f"waiting up to {wait:g} s ({RESOURCE_WAIT_ENV}) for an autoscaler to add one",
        flush=True,
    )
    deadline = time.monotonic() + wait
    while True:
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))
        last = time.monotonic() >= deadline
        try:
            check_resources(space, source, nodes(), where, waited=wait if last else 0)
            return
        except SpaceError:
            if last:
                raise


def data_is_swept(space: Space) -> bool:
    return any(part.split(".")[0] in ("dataset", "data_seed") for path in space.params for part in path.split(","))


def load_data(space: Space, source: str):
    """Build the space's data set on the driver, so a missing file is one error before start; the splits then
    reach every trial (on any node) through Ray's object store. None when the data set itself is swept: each
    trial then builds its own, and the files of the space's fixed data set are what is checked here."""
    from tune_losses.data import build_dataset

    d = space.train.dataset
    try:
        splits = build_dataset(d.name, root=d.root, download=d.download, seed=space.train.data_seed, **d.options)
    except (ValueError, FileNotFoundError, TypeError) as exc:
        raise SpaceError(f"{source}: train.dataset: {exc}") from None
    return None if data_is_swept(space) else splits
