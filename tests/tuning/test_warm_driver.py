"""The warm driver's hand-over (tuning/warm_driver.py, warm_command.py) with a real driver process and real
commands, on a small entry point instead of the CLI (the real `up` -> sweep is tests/e2e/test_warm_ray_e2e.py): the
child has the command's streams, directory, argv and environment; its exit status, Ctrl-C, SIGUSR1, `nohup` and a
killed command pass through as for a command's own process; a command runs once, in the child or in itself; what
the driver cannot run as the command's own process would is declined, and the command then runs itself."""

import json
import os
import pty
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tune_losses.tuning import warm_driver, warm_ray

ENTRY = """
import json, os, signal, sys, time
from pathlib import Path

def main(args):
    Path(os.environ["RAN"]).write_text(str(os.getpid()))
    if args[1] == "echo":
        print(json.dumps({"args": args, "argv0": sys.argv[0], "cwd": os.getcwd(), "tty": sys.stdout.isatty(),
                          "colour": os.environ.get("COLOUR"), "set_at_import": os.environ.get("SET_AT_IMPORT"),
                          "pid": os.getpid(), "sid": os.getsid(0)}))
        print("to stderr", file=sys.stderr)
        return 3
    if args[1] == "die":
        os.kill(os.getpid(), signal.SIGTERM)
    signal.signal(signal.SIGUSR1, lambda signum, frame: print("usr1", flush=True))
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
    "import sys; from tune_losses.tuning.warm_command import hand_over; code = hand_over(sys.argv[1:]); "
    "print('RAN HERE', flush=True) if code is None else None; sys.exit(0 if code is None else code)"
)


def children_of(pid: int) -> list[int]:
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(p))
        except (OSError, ValueError):
            continue
    return out


@pytest.fixture
def driver(tmp_path):
    """A warm driver serving ``entry:main``, recorded in ``tmp_path``'s warm-Ray file as `up` records it; the
    entry writes the file ``RAN`` when it runs."""
    (tmp_path / "entry.py").write_text(ENTRY)
    env = {
        **os.environ,
        "TUNE_LOSSES_HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
        "RAN": str(tmp_path / "ran"),
    }
    env.pop("SET_AT_IMPORT", None)
    sock = warm_ray.driver_socket(tmp_path)
    serve = (
        "from pathlib import Path; from tune_losses.tuning import warm_driver; "
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
    for child in children_of(proc.pid):  # a child left by a failed test: its own session, the driver's stop
        os.kill(child, signal.SIGKILL)  # does not reach it
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
    dies = client(env, "sweep", "die", stdout=subprocess.DEVNULL)
    assert dies.wait(timeout=60) == -signal.SIGTERM  # a child killed by a signal: so is its command


def test_signals_reach_the_child_and_a_killed_command_takes_it_along(driver):
    env, _, _ = driver
    run = client(env, "sweep", "wait", stdout=subprocess.PIPE)
    int(run.stdout.readline())  # the child runs: the command's forwarders were in place before it did
    run.send_signal(signal.SIGUSR1)  # a pre-empted sweep's graceful stop (tuning/interrupt.py)
    assert run.stdout.readline() == "usr1\n"
    run.send_signal(signal.SIGINT)
    assert run.stdout.read() == "interrupted\n" and run.wait(timeout=60) == 130
    hup_ignored = client(env, "sweep", "wait", stdout=subprocess.PIPE, preexec_fn=_ignore_hangup)  # as `nohup`
    int(hup_ignored.stdout.readline())
    hup_ignored.send_signal(signal.SIGHUP)
    hup_ignored.send_signal(signal.SIGUSR1)
    assert hup_ignored.stdout.readline() == "usr1\n" and hup_ignored.poll() is None  # SIGHUP ignored by both
    hup_ignored.send_signal(signal.SIGINT)
    assert hup_ignored.wait(timeout=60) == 130
    run = client(env, "sweep", "wait", stdout=subprocess.PIPE)
    child = int(run.stdout.readline())
    run.kill()
    run.wait(timeout=60)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the child of a killed command is still running"


def _ignore_hangup():
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_a_command_that_leaves_before_go_never_runs_and_the_driver_serves_on(driver, tmp_path):
    env, proc, sock = driver
    for _ in range(3):  # the request sent, the answer never read: as a command killed or timed out right then
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock))
        request = {
            "argv": ["-c", "sweep", "wait"],
            "cwd": str(tmp_path),
            "env": env,
            "path": sys.path,
            "interpreter": warm_driver.interpreter(),
            "code": warm_ray.code_fingerprint(),
            "ignored": [],
        }
        message = warm_driver.frame(request)
        socket.send_fds(conn, [message[:4]], [0, 1, 2])
        conn.sendall(message[4:])
        time.sleep(0.1)
        conn.close()
    deadline = time.monotonic() + 30
    while children_of(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (tmp_path / "ran").exists() and proc.poll() is None and children_of(proc.pid) == []
    run = client(env, "sweep", "echo", stdout=subprocess.PIPE)
    assert run.wait(timeout=60) == 3  # still serving


def test_a_driver_that_closes_without_an_answer_leaves_the_command_to_run_itself(tmp_path):
    sock = tmp_path / "mute.sock"
    listener = warm_driver.listen(sock)
    threading.Thread(target=lambda: [c.close() for c in [listener.accept()[0]]], daemon=True).start()
    warm_ray.write(warm_ray.WarmRay("127.0.0.1:1", 1, 1, [], False, 1.0, "", str(sock), 1), tmp_path / "warm-ray.json")
    run = client({**os.environ, "TUNE_LOSSES_HOME": str(tmp_path)}, "sweep", "x", stdout=subprocess.PIPE)
    assert run.communicate(timeout=60)[0] == "RAN HERE\n" and run.returncode == 0
    listener.close()


def test_what_the_driver_cannot_run_as_the_command_would_runs_in_the_command(driver, tmp_path):
    env, _, _ = driver
    for changed in ({"OMP_NUM_THREADS": "7"}, {"PYTHONPATH": str(tmp_path)}):  # read when torch / Python start
        run = client({**env, **changed}, "sweep", "echo", stdout=subprocess.PIPE)
        out = run.communicate(timeout=60)[0]
        assert run.returncode == 0 and "RAN HERE" in out, out
        assert f"settings read at import differ from `tune-losses up`'s: {next(iter(changed))}" in out
    not_served = client(env, "status", "x", stdout=subprocess.PIPE)
    assert not_served.communicate(timeout=60)[0] == "RAN HERE\n"  # only a sweep is handed over
    assert not (tmp_path / "ran").exists()


def test_decline_reasons():
    expected = {"code": "abc", "interpreter": warm_driver.interpreter()}
    env = {"RAY_ADDRESS": "h:1", "TUNE_LOSSES_HOME": "/x", "TERM": "a"}
    request = {"code": "abc", "interpreter": warm_driver.interpreter(), "env": env, "argv": ["tune-losses", "sweep"]}
    assert warm_driver.why_declined(request, {"TERM": "b"}, expected) == ""  # read when used: the command's apply
    assert "changed since" in warm_driver.why_declined({**request, "code": "new"}, {}, expected)
    other = {**warm_driver.interpreter(), "executable": "/other"}
    assert "another Python" in warm_driver.why_declined({**request, "interpreter": other}, {}, expected)
    assert "RAY_DEDUP_LOGS" in warm_driver.why_declined(request, {"RAY_DEDUP_LOGS": "0"}, expected)
    assert "only sweep" in warm_driver.why_declined({**request, "argv": ["tune-losses", "down"]}, {}, expected)


def test_a_long_run_directory_puts_the_socket_in_a_private_folder(tmp_path):
    deep = tmp_path / ("d" * 120)
    path = warm_ray.driver_socket(deep)
    assert len(os.fsencode(path)) <= warm_ray.MAX_SOCKET_PATH and path != warm_ray.driver_socket(tmp_path / "e")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert warm_ray.driver_socket(tmp_path) == tmp_path / "warm-driver.sock"
