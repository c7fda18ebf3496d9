"""Where runs are recorded: a local SQLite MLflow store in the project's run directory by default, any tracking
URI (an MLflow server) with --tracking-uri or MLFLOW_TRACKING_URI. Credentials in a URI never reach logs."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.tracking import MlflowClient

from tune_losses import _internals
from tune_losses.atomic import replacing
from tune_losses.home import run_dir

from . import record

EXPERIMENT = "tune_losses"


def default_tracking_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{run_dir() / 'mlflow.db'}"


def redact(uri: str) -> str:
    """The URI with any user:password@ removed, for logs and params."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def option_for(uri: str) -> str:
    """The option a URI came from, for error messages."""
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") == uri else "--tracking-uri"


# Used only where MLflow's registry cannot be read (tracking_schemes() returns None).
KNOWN_SCHEMES = ["databricks", "file", "http", "https", "mssql", "mysql", "postgresql", "sqlite"]


def _store_registry():
    """MLflow's registry of tracking store schemes. MLflow has no public way to ask which schemes it serves;
    this is the one place that reads its private registry (tests/tuning/test_bad_input.py fails if it moves)."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    return _tracking_store_registry


UNSERVED = {"uc", "databricks-uc"}  # registered, but MLflow refuses them as tracking stores (model registry only)


def tracking_schemes() -> list[str] | None:
    """The URI schemes this MLflow serves as a tracking store ('' and file: are local paths), or None."""
    try:
        return sorted(s for s in _store_registry()._registry if s and s not in UNSERVED)
    except (ImportError, AttributeError):
        return None


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///").split("?")[0]) if uri.startswith("sqlite:///") else None


def check_uri(uri: str, option: str | None = None) -> None:
    """Fail, naming the option and what is allowed, when MLflow cannot serve ``uri``: an unknown scheme (a typo
    such as htp://), a database driver that SQLAlchemy does not know or that is not installed, a SQLite path that
    is a directory. Nothing is opened or created."""
    option, shown = option or option_for(uri), redact(uri)
    schemes = tracking_schemes()
    allowed = (
        "allowed: "
        + ", ".join(f"{s}:" for s in (schemes or KNOWN_SCHEMES))
        + " (a database as SCHEME+DRIVER://), or a local path"
    )
    scheme = uri.split("://")[0].lower() if "://" in uri else ""
    if scheme in UNSERVED:
        raise ValueError(f"{option}={shown!r}: MLflow serves {scheme}: as a model registry only; {allowed}")
    if schemes is not None:
        try:
            _store_registry().get_store_builder(uri)
        except Exception as exc:  # UnsupportedModelRegistryStoreURIException, MlflowException (a bad database URI)
            raise ValueError(
                f"{option}={shown!r}: MLflow cannot serve this tracking URI ({type(exc).__name__}); {allowed}"
            ) from None
    elif scheme.split("+")[0] not in KNOWN_SCHEMES + [""]:
        raise ValueError(f"{option}={shown!r}: MLflow cannot serve this tracking URI; {allowed}")
    if scheme.split("+")[0] in ("postgresql", "mysql", "mssql", "sqlite"):
        from sqlalchemy.engine import make_url

        try:
            make_url(uri).get_dialect().import_dbapi()
        except Exception as exc:  # NoSuchModuleError (unknown driver), ImportError (driver not installed)
            raise ValueError(
                f"{option}={shown!r}: its database driver cannot be loaded ({type(exc).__name__}: "
                f"{exc}); allowed: SCHEME+DRIVER:// with a driver SQLAlchemy knows and that is installed, "
                "e.g. postgresql+psycopg2:// or mysql+pymysql://"
            ) from None
    db = _sqlite_path(uri)
    if db is not None and db.is_dir():
        raise ValueError(
            f"{option}={shown!r}: {db} is a directory; allowed: the path of a SQLite file, "
            f"e.g. sqlite:///{db / 'mlflow.db'}"
        )


def check_exists(uri: str, option: str | None = None) -> None:
    """Fail when a local store (a SQLite file, a file: directory) does not exist, without creating it."""
    option, shown = option or option_for(uri), redact(uri)
    db = _sqlite_path(uri)
    scheme = uri.split("://")[0].lower() if "://" in uri else ""
    local = db if db is not None else (Path(uri.removeprefix("file://")) if scheme in ("", "file") else None)
    if local is not None and not local.exists():
        raise ValueError(
            f"{option}={shown!r}: no MLflow store exists there ({local} does not exist); allowed: "
            "the tracking URI a sweep recorded into (this command reads a store, it never makes one)"
        )


def store_exists(uri: str) -> bool:
    """Whether a store is there to read: always for a server or database, for a local one when its file is."""
    try:
        check_exists(uri)
        return True
    except ValueError:
        return False


def client(tracking_uri: str | None = None, must_exist: bool = False) -> MlflowClient:
    """A client of the store; ``must_exist`` (read-only commands): a local store that is not there is an error
    instead of a new, empty store."""
    uri = tracking_uri or default_tracking_uri()
    check_uri(uri)
    if must_exist:
        check_exists(uri)
    elif (db := _sqlite_path(uri)) is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        create_sqlite_store(db)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


#: Seconds a read-only command, and a sweep's start-up check, waits on the tracking store before it fails
#: (MLflow's own client retries an HTTP request for ~4 minutes: MLFLOW_HTTP_REQUEST_MAX_RETRIES and friends).
STORE_TIMEOUT_ENV = "TUNE_LOSSES_STORE_TIMEOUT"
DEFAULT_STORE_TIMEOUT = 10.0


class StoreUnavailable(ValueError):
    """The tracking store cannot be reached or fails: one line naming the (redacted) URI and what failed."""


def store_timeout() -> float:
    raw = os.environ.get(STORE_TIMEOUT_ENV, "") or str(DEFAULT_STORE_TIMEOUT)
    try:
        value = float(raw)
    except ValueError:
        value = -1
    if not 0 < value < float("inf"):
        raise ValueError(f"{STORE_TIMEOUT_ENV}={raw!r} is not allowed; allowed: seconds > 0 (default 10)")
    return value


def reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within ``timeout`` s, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return str(exc) or type(exc).__name__


def server_address(uri: str) -> tuple[str, int] | None:
    """(host, port) of an MLflow server or database server the URI names; None for a local store."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0].lower()
    ports = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
    if scheme not in ports or not parsed.hostname:
        return None
    return parsed.hostname, parsed.port or ports[scheme]


def _is_store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the store is unreachable or failing (not a bug of ours, not a missing sweep)."""
    import requests
    import sqlalchemy.exc
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return "API request to" in exc.message or exc.error_code == "TEMPORARILY_UNAVAILABLE"
    return isinstance(exc, requests.RequestException | sqlalchemy.exc.OperationalError | ConnectionError)


def _what_failed(exc: BaseException, timeout: float) -> str:
    """The innermost reason of a store failure, in a few words, without the request's URL (it may hold a password)."""
    import requests

    inner, chain = exc, [exc]
    while (nxt := inner.__cause__ or inner.__context__) is not None and nxt not in chain:
        chain.append(nxt)
        inner = nxt
    if any(isinstance(e, requests.Timeout | TimeoutError | socket.timeout) for e in chain):
        return f"no answer within {timeout:g} s"
    code = re.search(r"error code (\d+)", str(exc))
    if code:
        return f"it answered HTTP {code.group(1)}"
    text = str(inner).splitlines()[0] if str(inner) else type(inner).__name__
    return redact(re.sub(r"https?://\S+", "", text)).strip()[:200]


def failure(uri: str, why: str, timeout: float) -> StoreUnavailable:
    return StoreUnavailable(
        f"{option_for(uri)}={redact(uri)!r}: the tracking store is unreachable or failing ({why}; each call waits "
        f"at most {timeout:g} s: {STORE_TIMEOUT_ENV}); allowed: a running MLflow server or a reachable database"
    )


@contextlib.contextmanager
def bounded(uri: str, timeout: float | None = None) -> Iterator[float]:
    """Within the block, each MLflow HTTP request is tried once for at most ``timeout`` s (default
    TUNE_LOSSES_STORE_TIMEOUT) instead of MLflow's retries over minutes, a database connection waits as long, and
    any failure to reach or read the store becomes one StoreUnavailable naming the redacted URI and what failed.
    The environment is restored after the block (a sweep's trials keep MLflow's patient retries)."""
    timeout = store_timeout() if timeout is None else timeout
    bounds = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout))),  # MLflow reads it as an int
        "PGCONNECT_TIMEOUT": str(max(2, math.ceil(timeout))),  # libpq's connect timeout (2 s at least)
    }
    saved = {k: os.environ.get(k) for k in bounds}
    os.environ.update(bounds)
    try:
        yield timeout
    except Exception as exc:
        if _is_store_failure(exc):
            raise failure(uri, _what_failed(exc, timeout), timeout) from None
        raise
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def probe(uri: str, timeout: float | None = None, call: bool = True) -> None:
    """Fail within ``timeout`` s (one StoreUnavailable) unless the store answers: its server takes a TCP
    connection, and with ``call`` one cheap read (a list of one experiment) succeeds. A local store is not
    probed (check_exists says whether it is there)."""
    timeout = store_timeout() if timeout is None else timeout
    address = server_address(uri)
    if address is None:
        return
    why = reachable(*address, timeout)
    if why:
        raise failure(uri, f"no connection to {address[0]}:{address[1]}: {why}", timeout)
    if call:
        with bounded(uri, timeout):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)


def create_sqlite_store(db: Path) -> None:
    """Make a new SQLite store whole or not at all. MLflow builds its schema in many migration steps, several
    committed apart: a process killed among them leaves a store that no later command can open ("duplicate column
    name"; found by benchmarks/faults.py). So the store is made in a file of its own beside ``db`` and renamed
    into place in one step (tune_losses/atomic.py); a kill leaves at most that hidden file, never a half-made store.
    The schema is built once per MLflow version (about 1 s of migrations) and copied from then on."""
    if db.exists():
        return
    # staged under a name never used before: MLflow caches each store (and its open database) by URI
    with replacing(db, keep_existing=True) as staged:  # another process may make it meanwhile: keep the first
        template = schema_template()
        if template is None:
            _build_schema(staged)
        else:
            shutil.copyfile(template, staged)
            # the copy's Default experiment (id 0) points where its template was built: beside this store instead
            _internals.set_default_experiment_location(staged, (db.resolve().parent / "mlartifacts" / "0").as_uri())


def _build_schema(db: Path) -> None:
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)  # runs every migration


def schema_template() -> Path | None:
    """An empty store of this MLflow (and SQLAlchemy) version in the user's cache, built whole on first use; None
    where the cache cannot be written (each store is then built from scratch)."""
    import sqlalchemy

    folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tune_losses" / "mlflow-schema"
    path = folder / f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}.db"
    if path.exists():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):  # (MLflow would retry its engine for a minute before it failed)
            return None
        with replacing(path) as staged:  # whole or not at all, as the stores made from it
            _build_schema(staged)
    except Exception:  # a read-only home, a full disk: build each store from scratch instead
        return None
    return path


# MLflow 3's UI opens an experiment without this tag on its GenAI (traces) pages; with it, on the runs table.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(c: MlflowClient, name: str = EXPERIMENT) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if "mlflow.experimentKind" not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, "mlflow.experimentKind", EXPERIMENT_TAGS["mlflow.experimentKind"])
        return exp.experiment_id
    location = None
    if c.tracking_uri.startswith("sqlite:///"):  # artifacts beside the database file
        location = (Path(c.tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return c.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)


def find_sweep(c: MlflowClient, sweep: str, experiment: str = EXPERIMENT):
    """The parent run of a sweep by name, or None."""
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs = c.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{record.SWEEP}` = '{sweep}' and tags.`{record.ROLE}` = 'sweep'",
        max_results=1,
        order_by=["attributes.start_time ASC", "attributes.run_id ASC"],  # the first, if a concurrent start made two
    )
    return runs[0] if runs else None


def trial_runs(c: MlflowClient, parent_run_id: str, experiment_id_: str):
    return c.search_runs(
        [experiment_id_], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10000
    )
