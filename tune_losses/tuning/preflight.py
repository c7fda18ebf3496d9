"""Checks a sweep makes before anything starts: writable paths, GPUs, a reachable tracking store and Ray cluster,
a sweep to resume, the data set. Each failure is one SpaceError naming the file or option, the value and what
is allowed; none of them starts Ray or writes to MLflow."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from tune_losses import tracking
from tune_losses.spaces import Space, SpaceError

CONNECT_TIMEOUT = 5.0


def check_writable(path: Path, what: str) -> None:
    """Fail when a directory the sweep writes to cannot be written."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        why = "is a file, not a directory" if not probe.is_dir() else "has no write permission"
        raise SpaceError(f"{what}={str(path)!r} is not writable ({probe} {why}); "
                         f"choose a directory you can write to")


def _reachable(host: str, port: int) -> str | None:
    """None when a TCP connection opens, else why not."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


def check_tracking(uri: str, resume: bool, name: str) -> None:
    """An MLflow server must answer; a sweep to resume needs a store that exists (without creating one)."""
    shown = tracking.redact(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        why = _reachable(parsed.hostname or "", port)
        if why:
            raise SpaceError(f"--tracking-uri={shown!r}: no MLflow server answers at {parsed.hostname}:{port} "
                             f"({why}); allowed: the URI of a running MLflow server, or a sqlite:/// path")
    elif parsed.scheme.startswith(("postgresql", "mysql")) and parsed.hostname:
        why = _reachable(parsed.hostname, parsed.port or (5432 if parsed.scheme.startswith("postgresql") else 3306))
        if why:
            raise SpaceError(f"--tracking-uri={shown!r}: the database server does not answer ({why})")
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        check_writable(db.parent, "--tracking-uri")
        if resume and not db.is_file():
            raise SpaceError(f"--resume: no sweep named {name!r}: the tracking store {db} does not exist; "
                             "allowed: the name of a sweep recorded in that store")


def check_ray_address(address: str | None, option: str = "--address") -> None:
    """An address (host:port or ray://host:port, from ``option``) must answer before the driver joins it."""
    if not address or address in ("auto", "local"):
        return
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if not parsed.hostname or not parsed.port:
        raise SpaceError(f"{option}={address!r} is not allowed: give HOST:PORT of a Ray head "
                         "(e.g. 127.0.0.1:6379), ray://HOST:10001, or 'auto'")
    why = _reachable(parsed.hostname, parsed.port)
    if why:
        raise SpaceError(f"{option}={address!r}: no Ray cluster answers there ({why}); allowed: the address of a "
                         f"running Ray head (`ray start --head` prints it), or no {option} for a local Ray")


def check_gpus(space: Space, source: str, available: float, where: str) -> None:
    want = space.resources.gpu
    if want <= 0:
        return
    if want > available or available == 0:
        raise SpaceError(f"{source}: resources.gpu: {want} GPU per trial is more than the {where} has "
                         f"({available:g}); allowed: 0" + (f" to {available:g}" if available else " (no GPU found)"))


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
