"""Shared by the sweep tests: a small valid search space on digits, with fields overridden per test."""

import yaml


def write_space(path, replace=(), **over):
    """Write a 2-trial DAL grid on digits to ``path``; top-level mappings in ``over`` are merged one level,
    except the fields named in ``replace``, which ``over`` replaces."""
    space = {
        "name": "t",
        "train": {
            "dataset": {"name": "digits"},
            "model": {"name": "mlp"},
            "loss": {"name": "dal", "params": {"a": 10.0}},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "batch_size": 64,
            "epochs": 3,
            "repeats": 2,
        },
        "params": {"loss.a": {"grid": [5.0, 15.0]}},
        "search": {"searcher": "grid", "scheduler": {"name": "fifo"}, "max_concurrent": 2},
    }
    for k, v in over.items():
        space[k] = v if not isinstance(v, dict) or k not in space or k in replace else {**space[k], **v}
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def sweep_phases(path, uri, storage, **options):
    """A sweep of ``path`` ready for its phases (tuning/sweep.py), with the store open as the check leaves it."""
    from tune_losses import tracking
    from tune_losses.tracking.driver import DriverLock
    from tune_losses.tuning.sweep import Sweep, SweepOptions

    sweep = Sweep(
        SweepOptions.resolve(path, tracking_uri=uri, storage=str(storage), verbose=0, **options), DriverLock()
    )
    sweep.client = tracking.client(uri)
    sweep.found = tracking.find_sweep(sweep.client, sweep.options.name)
    return sweep


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(backend_uri: str, port: int, artifacts, timeout: float = 90.0):
    """`mlflow server` on 127.0.0.1:port (one worker), artifacts served from ``artifacts``; returns the process
    once /health answers."""
    import subprocess
    import sys
    import time
    import urllib.request

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(artifacts),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}") from None
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"mlflow server did not answer on port {port} within {timeout} s")


def sqlite_mlflow_server(folder):
    """An `mlflow server` on a SQLite store in ``folder`` for a fixture's life: yields its URI, then kills it."""
    port = free_port()
    proc = start_mlflow_server(f"sqlite:///{folder / 'mlflow.db'}", port, folder / "artifacts")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(proc, kill=True)


def stop_server(proc, kill: bool = False) -> None:
    """Stop a server started with start_new_session (the server and its worker processes); ``kill``: at once,
    as a crash would (SIGKILL), not a graceful shutdown (which takes mlflow server seconds)."""
    import os
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def postgres_bin(name: str):
    """A PostgreSQL server program (Debian keeps them in /usr/lib/postgresql/<version>/bin), or None."""
    import glob
    import shutil

    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def start_postgres(directory, port: int) -> str:
    """A throwaway PostgreSQL cluster in ``directory`` on 127.0.0.1:port with a database ``mlflow``; run as the
    postgres user when we are root (the server refuses root). Returns its SQLAlchemy URI (psycopg2)."""
    import os
    import subprocess
    from pathlib import Path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        subprocess.run(["chown", "-R", "postgres:", str(directory)], check=True)
    data, sockets = directory / "data", directory / "sock"
    sockets.mkdir(exist_ok=True)
    if as_user:
        subprocess.run(["chown", "postgres:", str(sockets)], check=True)
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(postgres_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run(
        postgres_bin("pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(directory / "server.log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off",
        "start",
    )
    run("psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE mlflow")
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"


def stop_postgres(directory) -> None:
    import os
    import subprocess
    from pathlib import Path

    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*as_user, postgres_bin("pg_ctl"), "-D", str(Path(directory) / "data"), "-m", "immediate", "stop"],
        capture_output=True,
    )


def cut_after_creation(tmp_path, searcher="grid", num_samples=1):
    """A sweep's claim killed right after its parent run was created (before its params and space file)."""
    import pytest
    from mlflow import MlflowClient

    grid = {"grid": [5.0, 10.0, 15.0]} if searcher == "grid" else {"uniform": [5.0, 20.0]}
    search = {"searcher": searcher, "num_samples": num_samples}
    path = write_space(tmp_path / "s.yaml", name="cut", params={"loss.a": grid}, search=search)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = sweep_phases(path, uri, tmp_path / "ray")

    def cut(self, *args, **kwargs):
        raise KeyboardInterrupt  # the kill, right after the run was created

    try:
        with pytest.MonkeyPatch.context() as m:
            m.setattr(MlflowClient, "log_batch", cut)
            with pytest.raises(KeyboardInterrupt):
                sweep.claim()
    finally:
        sweep.lock.release()
    return path, uri, sweep.client


def driver_of(pid: int, **over) -> str:
    """A driver tag for process ``pid`` of this machine (as that process would write it)."""
    import json

    from tune_losses import process
    from tune_losses.tracking.driver import driver_tag

    return json.dumps({**json.loads(driver_tag()), "pid": pid, "start": process.stat(pid)[1], **over})


#: a plugin's guard: what it patches, it patches in a trial process only (the driver imports it too, to check)
IN_TRIAL = "__import__('ray').get_runtime_context().get_actor_id() is not None"


def write_plugin(plugin_dir, stem: str, text: str) -> str:
    """A `train.plugins` module in ``plugin_dir`` (conftest.py), under a name no other test uses (this process
    keeps every module it imported); returns the name."""
    import importlib
    import uuid

    name = f"{stem}_{uuid.uuid4().hex[:8]}"
    (plugin_dir / f"{name}.py").write_text(text)
    importlib.invalidate_caches()  # the import system may have listed the folder already
    return name


def start_token_cluster(timeout: float = 120.0):
    """`ray start --head --num-cpus 1` with RAY_AUTH_MODE=token and a new token, in a session and a temp dir of its
    own (Ray's socket paths must stay under 108 bytes): (process, address, token, temp dir), once a driver with
    the token is let in."""
    import os
    import secrets
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from tune_losses.spaces import SpaceError
    from tune_losses.tracking.store import reachable
    from tune_losses.tuning import preflight

    port, temp, token = free_port(), tempfile.mkdtemp(prefix="ray", dir="/tmp"), secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_ADDRESS": ""}
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port), "--num-cpus",
         "1", "--node-ip-address", "127.0.0.1", "--include-dashboard=False", "--disable-usage-stats", "--temp-dir",
         temp],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + timeout
    while time.time() < deadline:
        if head.poll() is not None:
            raise RuntimeError("ray start --head exited")
        try:
            with driver_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token):
                preflight.check_ray_auth(f"127.0.0.1:{port}")
                if reachable("127.0.0.1", port, 1) is None:
                    return head, f"127.0.0.1:{port}", token, temp
        except SpaceError:
            pass
        time.sleep(1)
    stop_token_cluster(head, temp)
    raise RuntimeError(f"the token cluster did not answer within {timeout:g} s")


def stop_token_cluster(head, temp) -> None:
    import os
    import shutil
    import signal

    os.killpg(head.pid, signal.SIGKILL)
    head.wait()
    shutil.rmtree(temp, ignore_errors=True)


class driver_env:
    """The driver's Ray authentication environment, and no token file (HOME elsewhere)."""

    KEYS = ("HOME", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

    def __init__(self, **env):
        import tempfile

        self.env, self.saved = {"HOME": tempfile.mkdtemp(), **env}, {}

    def __enter__(self):
        import os

        self.saved = {k: os.environ.pop(k, None) for k in self.KEYS}
        os.environ.update(self.env)

    def __exit__(self, *exc):
        import os

        for k, v in self.saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
