"""The warm driver's hand-over (tuning/warm_driver.py) with a real driver process and real commands, on a small
entry point instead of the CLI (the real `up` -> sweep is tests/e2e/test_warm_ray_e2e.py): the child has the
command's streams, directory, argv and environment; its exit status, Ctrl-C and a killed command pass through; what
the driver cannot run as the command's own process would is declined, and the command then runs itself."""

import json
import os
import pty
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tune_losses.tuning import warm_driver, warm_ray

ENTRY = """
import json, os, sys, time
from pathlib import Path

def main(args):
    if args[1] == "echo":
        print(json.dumps({"args": args, "argv0": sys.argv[0], "cwd": os.getcwd(), "tty": sys.stdout.isatty(),
                          "colour": os.environ.get("COLOUR"), "set_at_import": os.environ.get("SET_AT_IMPORT"),
                          "pid": os.getpid(), "sid": os.getsid(0)}))
        print("to stderr", file=sys.stderr)
        return 3
    print(os.getpid(), flush=True)
    try:
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130

os.environ.setdefault("SET_AT_IMPORT", "yes")  # as tracking/replicas.py sets a default when imported
"""

CLIENT = (
    "import sys; from tune_losses.tuning.warm_driver import hand_over; code = hand_over(sys.argv[1:]); "
    "print('RAN HERE') if code is None else None; sys.exit(0 if code is None else code)"
)


@pytest.fixture
def driver(tmp_path):
    """A warm driver serving ``entry:main``, recorded in ``tmp_path``'s warm-Ray file as `up` records it."""
    (tmp_path / "entry.py").write_text(ENTRY)
    env = {**os.environ, "TUNE_LOSSES_HOME": str(tmp_path), "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    env.pop("SET_AT_IMPORT", None)
    sock = warm_ray.driver_socket(tmp_path)
    serve = (
        f"from pathlib import Path; from tune_losses.tuning import warm_driver; "
        f"warm_driver.serve(Path({str(sock)!r}), 'entry:main', preload=())"
    )
    proc = subprocess.Popen([sys.executable, "-c", serve], env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not sock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sock.exists(), "the warm driver did not listen"
    info = warm_ray.WarmRay("127.0.0.1:1", proc.pid, 1, [], False, 1.0, "", str(sock), proc.pid)
    warm_ray.write(info, tmp_path / warm_ray.FILENAME)
    yield env, proc, sock
    proc.terminate()
    proc.wait(timeout=30)


def client(env, *args, **kw):
    return subprocess.Popen([sys.executable, "-c", CLIENT, *args], env=env, text=True, **kw)


def test_the_child_is_the_command(driver, tmp_path):
    env, proc, sock = driver
    work = tmp_path / "work"
    work.mkdir()
    run = client({**env, "COLOUR": "green"}, "sweep", "echo", cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 3, out + err  # the child's exit status is the command's
    seen = json.loads(out)
    assert seen["args"] == ["sweep", "echo"] and seen["argv0"] == "-c" and seen["cwd"] == str(work)
    assert seen["colour"] == "green" and seen["set_at_import"] == "yes" and not seen["tty"]
    assert seen["pid"] != run.pid and seen["sid"] == seen["pid"]  # forked, in a session of its own
    assert err == "to stderr\n"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    leader, terminal = pty.openpty()  # a terminal: the child's stdout is one too (the live view draws on it)
    run = client(env, "sweep", "echo", stdout=terminal, stderr=subprocess.DEVNULL)
    assert run.wait(timeout=60) == 3
    os.close(terminal)
    assert json.loads(os.read(leader, 65536).decode())["tty"] is True
    os.close(leader)


def test_ctrl_c_reaches_the_child_and_a_killed_command_takes_the_child_along(driver):
    env, _, _ = driver
    run = client(env, "sweep", "wait", stdout=subprocess.PIPE)
    child = int(run.stdout.readline())
    run.send_signal(signal.SIGINT)
    assert run.stdout.read() == "interrupted\n" and run.wait(timeout=60) == 130
    run = client(env, "sweep", "wait", stdout=subprocess.PIPE)
    child = int(run.stdout.readline())
    run.kill()
    run.wait(timeout=60)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the child of a killed command is still running"


def test_what_the_driver_cannot_run_as_the_command_would_runs_in_the_command(driver, tmp_path):
    env, _, _ = driver
    for changed in ({"OMP_NUM_THREADS": "7"}, {"PYTHONPATH": str(tmp_path)}):  # read when torch / Python start
        run = client({**env, **changed}, "sweep", "echo", stdout=subprocess.PIPE)
        out = run.communicate(timeout=60)[0]
        assert run.returncode == 0 and "RAN HERE" in out, out
        assert f"settings read at import differ from `tune-losses up`'s: {next(iter(changed))}" in out
    not_served = client(env, "status", "x", stdout=subprocess.PIPE)
    assert not_served.communicate(timeout=60)[0] == "RAN HERE\n"  # only a sweep is handed over


def test_decline_reasons():
    expected = {"code": "abc", "executable": "/py"}
    request = {"code": "abc", "executable": "/py", "env": {"RAY_ADDRESS": "h:1", "TUNE_LOSSES_HOME": "/x", "TERM": "a"}}
    assert warm_driver.why_declined(request, {"TERM": "b"}, expected) == ""  # read when used: the command's apply
    assert "code changed" in warm_driver.why_declined({**request, "code": "new"}, {}, expected)
    assert "another Python" in warm_driver.why_declined({**request, "executable": "/other"}, {}, expected)
    assert "RAY_DEDUP_LOGS" in warm_driver.why_declined(request, {"RAY_DEDUP_LOGS": "0"}, expected)


def test_a_long_run_directory_puts_the_socket_in_a_private_folder(tmp_path):
    deep = tmp_path / ("d" * 120)
    path = warm_ray.driver_socket(deep)
    assert len(os.fsencode(path)) <= warm_ray.MAX_SOCKET_PATH and path != warm_ray.driver_socket(tmp_path / "e")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert warm_ray.driver_socket(tmp_path) == tmp_path / "warm-driver.sock"
