"""Where runs are recorded: a local SQLite MLflow store in the project's run directory by default, any tracking
URI (an MLflow server) with --tracking-uri or MLFLOW_TRACKING_URI. Credentials in a URI never reach logs."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

EXPERIMENT = "tune_losses"


def run_dir() -> Path:
    return Path(os.environ.get("TUNE_LOSSES_HOME", "runs")).resolve()


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


def create_sqlite_store(db: Path) -> None:
    """Make a new SQLite store whole or not at all. MLflow builds its schema in many migration steps, several
    committed apart: a process killed among them leaves a store that no later command can open ("duplicate column
    name"; found by benchmarks/faults.py). So the schema is built in a file of its own beside ``db`` and renamed
    into place in one step; a kill leaves at most that file (``.*.creating``), never a half-made store."""
    if db.exists():
        return
    # a name never used before: MLflow caches each store (and its open database) by URI
    tmp = db.with_name(f".{db.name}.{uuid.uuid4().hex}.creating")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)  # builds the schema
        if not db.exists():  # another process may have made it meanwhile: both are whole, keep the first
            os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


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
        filter_string=f"tags.`tune_losses.sweep` = '{sweep}' and tags.`tune_losses.role` = 'sweep'",
        max_results=1,
        order_by=["attributes.start_time ASC", "attributes.run_id ASC"],  # the first, if a concurrent start made two
    )
    return runs[0] if runs else None


def trial_runs(c: MlflowClient, parent_run_id: str, experiment_id_: str):
    return c.search_runs(
        [experiment_id_], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=10000
    )
