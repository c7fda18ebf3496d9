"""A tracking store that is down or failing: every read-only command (`sweeps`, `status`, `report`, `best`, `ui`)
and a sweep's start-up check say so in one line naming the (redacted) URI, exit 2, within the bound
TUNE_LOSSES_STORE_TIMEOUT, instead of MLflow's ~4 minutes of HTTP retries and a traceback. Tried against a port
where nothing listens, a server that takes connections and never answers, and a real `mlflow server` stopped in
the middle of a command."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

from tune_losses import cli, tracking
from tune_losses.spaces import SpaceError
from tune_losses.tuning import preflight

from helpers import free_port, postgres_bin, start_mlflow_server, start_postgres, stop_postgres, stop_server

READ_ONLY = [["sweeps"], ["status", "s"], ["report", "s"], ["best", "s"], ["ui"]]


def _run(argv, uri, capsys):
    start = time.monotonic()
    rc = cli.main([*argv, "--tracking-uri", uri])
    return rc, time.monotonic() - start, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv", READ_ONLY, ids=lambda a: a[0])
def test_read_only_command_against_a_port_where_nothing_listens(argv, capsys):
    port = free_port()
    rc, took, err = _run(argv, f"http://alice:pw@127.0.0.1:{port}", capsys)
    assert rc == 2 and took < 10, (rc, took)
    assert len(err) == 1 and f"'http://***@127.0.0.1:{port}'" in err[0] and "Connection refused" in err[0], err
    assert "pw" not in err[0].replace("pw'", "")


@pytest.fixture
def silent_server():
    """A server that takes TCP connections and never answers (a hung MLflow server, a stuck proxy)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.mark.parametrize("argv", [["sweeps"], ["status", "s"]], ids=lambda a: a[0])
def test_read_only_command_against_a_server_that_never_answers(argv, silent_server, capsys, monkeypatch):
    monkeypatch.setenv("TUNE_LOSSES_STORE_TIMEOUT", "2")
    rc, took, err = _run(argv, silent_server, capsys)
    assert rc == 2 and took < 10, (rc, took)  # the promise: within 10 s, whatever the bound
    assert len(err) == 1 and "no answer within 2 s" in err[0] and "TUNE_LOSSES_STORE_TIMEOUT" in err[0], err


def test_sweep_start_up_check_is_bounded_by_the_same_timeout(silent_server, monkeypatch):
    monkeypatch.setenv("TUNE_LOSSES_STORE_TIMEOUT", "2")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)  # an earlier test's ledger may set it
    start = time.monotonic()
    with pytest.raises(SpaceError, match=r"no answer within 2 s.*TUNE_LOSSES_STORE_TIMEOUT"):
        preflight.check_tracking(silent_server, resume=False, name="s")
    assert time.monotonic() - start < 10
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # the sweep itself keeps MLflow's retries


@pytest.mark.parametrize("value", ["abc", "0", "-1", "inf"])
def test_a_bad_store_timeout_is_refused_naming_the_variable(value, monkeypatch, capsys):
    monkeypatch.setenv("TUNE_LOSSES_STORE_TIMEOUT", value)
    assert cli.main(["sweeps", "--tracking-uri", "http://127.0.0.1:1"]) == 2
    assert f"TUNE_LOSSES_STORE_TIMEOUT={value!r} is not allowed" in capsys.readouterr().err


def _record_a_sweep(uri: str) -> None:
    c = tracking.client(uri)
    exp = tracking.experiment_id(c)
    parent = c.create_run(exp, tags={"tune_losses.role": "sweep", "tune_losses.sweep": "s", "tune_losses.planned": "2"})
    for a in (5, 10):
        run = c.create_run(exp, run_name=f"dal a={a}", tags={"mlflow.parentRunId": parent.info.run_id})
        c.log_metric(run.info.run_id, "val_acc", 0.5, step=1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, after", [(["status", "s"], "trial_runs"), (["sweeps"], "parent_runs")], ids=["status", "sweeps"]
)
def test_read_only_command_when_the_server_stops_mid_command(argv, after, tmp_path, capsys, monkeypatch):
    port = free_port()
    server = start_mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", port, tmp_path / "artifacts")
    uri = f"http://127.0.0.1:{port}"
    try:
        _record_a_sweep(uri)
        from tune_losses.tracking import store, sweeps

        module = store if after == "trial_runs" else sweeps
        read = getattr(module, after)

        def then_stop(*args, **kwargs):  # the command has read from the server: it goes away now
            runs = read(*args, **kwargs)
            stop_server(server, kill=True)
            return runs

        monkeypatch.setattr(module, after, then_stop)
        rc, took, err = _run(argv, uri, capsys)
    finally:
        stop_server(server, kill=True)
    assert server.poll() is not None
    assert rc == 2 and took < 10, (rc, took, err)
    # refused (a new connection) or aborted (the kept-alive one the server dropped): which one is the kill's timing
    assert len(err) == 1 and f"'{uri}'" in err[0], err
    assert "Connection refused" in err[0] or "Connection aborted" in err[0], err


@pytest.mark.slow
@pytest.mark.postgres
def test_ui_keeps_the_store_password_off_the_command_line():
    if postgres_bin("initdb") is None:
        pytest.skip("PostgreSQL is not installed")
    directory = tempfile.mkdtemp(prefix="pg", dir="/tmp")  # the postgres user must reach it
    db = start_postgres(directory, free_port())  # trust authentication: any password is accepted
    uri = db.replace("postgres@", "postgres:Secr3tPW@")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tune_losses.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, "the UI server stopped"
                time.sleep(0.5)
        else:
            pytest.fail("the UI server did not answer")
        group = [p for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == proc.pid]
        cmdlines = [open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace") for p in group]
        assert len(cmdlines) >= 2  # the server and its worker
        assert not [c for c in cmdlines if "Secr3tPW" in c], cmdlines
        assert "***@" in proc.stdout.readline()  # what it prints is redacted too
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        stop_postgres(directory)
        shutil.rmtree(directory, ignore_errors=True)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.mark.parametrize("argv", [["sweeps"], ["ui", "s"], ["status", "s"]], ids=lambda a: "-".join(a))
def test_read_only_commands_never_make_a_local_store(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNE_LOSSES_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    if argv == ["sweeps"]:
        assert rc == 0 and "no sweeps in this store" in out
    else:
        assert rc == 2 and "no MLflow store exists there" in err, err
    assert list(tmp_path.iterdir()) == []
