"""The warm driver of `tune-losses up`: a process that has imported what a sweep's driver imports (torch, Ray Tune,
MLflow, Optuna, the runner, the reports) and forks each `tune-losses sweep` from there, so that the command's
seconds of imports are off the path to its first trial (``benchmarks/startup.py`` measures it).

How a command is handed over (:func:`hand_over`, the first step of ``cli.run``; this module imports only the
standard library at its top): the command connects to the driver's Unix socket (named in the warm Ray's file;
mode 0600, and a peer of another user is refused), sends its argv, working directory, environment and import path,
and passes its three standard streams (SCM_RIGHTS). The driver forks; the child takes those streams, that
directory and that environment, in a session of its own, and runs ``cli.main`` as the command would have. The
command waits for the child's exit status and exits with it; the signals a terminal or a supervisor sends it
(Ctrl-C's SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH) are passed on to the child. When the command dies without a
word (SIGKILL), the driver kills the child, as a driver process dies with its command.

What declines (the command then runs in its own process, as without `up`): no warm driver answering; code that
changed since `up` (the driver runs what it imported); another interpreter; settings read when torch, Ray or MLflow
are imported that differ from `up`'s (:data:`IMPORT_TIME`). A decline is one line on stdout.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

SERVED = ("sweep",)  # the commands handed over: a sweep's first trial is what the wait is measured on
#: what the driver imports before it forks: what a sweep's driver imports, from its start to its report
PRELOAD = (
    "torch",
    "ray.tune",
    "optuna",
    "mlflow",
    "tune_losses.tuning.runner",
    "tune_losses.tuning.sweep",
    "tune_losses.tuning.tuner",
    "tune_losses.tracking.callback",
    "tune_losses.tracking.ledger",
    "tune_losses.reports.build",
)
#: environment variables (prefixes) that Python, torch, Ray, Ray Tune, gRPC or MLflow may read when imported, or
#: that choose what is imported: a command whose values differ from the driver's runs on its own. MLflow reads
#: its other variables (the tracking URI, credentials, retries) when used.
IMPORT_TIME = (
    *("PYTHON", "LD_", "HOME", "TMPDIR", "LANG", "LC_"),
    *("RAY_", "TUNE_", "GRPC_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "TORCH", "CUDA", "NCCL_"),
    *("MLFLOW_CONFIGURE_LOGGING", "MLFLOW_LOGGING_LEVEL"),
)
#: ... except those read when used: where Ray starts (RAY_ADDRESS), this package's own (never read at import:
#: tests/test_contracts.py). The child takes the command's values.
NOT_IMPORT_TIME = ("RAY_ADDRESS", "TUNE_LOSSES_")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)
CONNECT_TIMEOUT_S = 2.0
ANSWER_TIMEOUT_S = 30.0  # the driver answers once it has forked (milliseconds); a busy machine gets slack
POLL_S = 0.2

#: in a forked child: the warm driver's pid (the sweep's header says where it came from); None otherwise
FORKED_FROM: int | None = None


# --- the command's side -------------------------------------------------------------------------------------------
def hand_over(argv: list[str]) -> int | None:
    """Run this command in the warm driver when one takes it: its exit status; None when none does."""
    if not argv or argv[0] not in SERVED:
        return None
    from tune_losses.home import run_dir

    from . import warm_ray

    info = warm_ray.read(run_dir() / warm_ray.FILENAME)
    if info is None or not info.driver_socket:
        return None
    conn = _connect(info.driver_socket)
    if conn is None:
        return None
    with conn:
        request = {
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "path": sys.path,
            "executable": os.path.realpath(sys.executable),
            "code": warm_ray.code_fingerprint(),
        }
        try:
            frame = _frame(request)
            socket.send_fds(conn, [frame[:4]], [0, 1, 2])  # the streams ride on the length, the body follows
            conn.sendall(frame[4:])
            conn.settimeout(ANSWER_TIMEOUT_S)
            answer = _receive(conn)
        except (OSError, ValueError):
            return None  # no answer: a child forked meanwhile dies with this connection; the command runs here
        except KeyboardInterrupt:  # Ctrl-C before the child started: it dies with this connection
            print("\ninterrupted", file=sys.stderr)
            return 130
        if "declined" in answer:
            print(f"driver: not forked from `tune-losses up`'s warm driver ({answer['declined']})", flush=True)
            return None
        conn.settimeout(None)
        return _wait(conn, int(answer["pid"]))


def _connect(path: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn.connect(path)
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError:  # no driver (a stale file, `down` meanwhile): run here
        conn.close()
        return None
    if uid != os.getuid():  # never hand this environment (credentials) to another user's process
        conn.close()
        return None
    return conn


def _wait(conn: socket.socket, pid: int) -> int:
    """Pass the terminal's signals on to the child until the driver sends its exit status."""
    previous = {sig: signal.signal(sig, lambda signum, frame: _forward(pid, signum)) for sig in SIGNALS}
    try:
        answer = _receive(conn)
    except (OSError, ValueError):
        answer = {}
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if "status" not in answer:  # the driver stopped (`down`, a kill) while the child ran: wait for the child
        while Path(f"/proc/{pid}").exists() and not _zombie(pid):
            time.sleep(POLL_S)
        print(
            f"error: the warm driver stopped while this command ran (pid {pid}); its exit status is unknown",
            file=sys.stderr,
        )
        return 1
    status = int(answer["status"])
    return status if status >= 0 else 128 - status  # killed by a signal: as a shell reports it


def _forward(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just ended
        os.kill(pid, signum)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack("!I", len(body)) + body


def _receive(conn: socket.socket) -> dict:
    """One framed message; {} at an end of stream before it."""
    head = _read_exactly(conn, 4)
    if len(head) < 4:
        return {}
    body = _read_exactly(conn, struct.unpack("!I", head)[0])
    return json.loads(body)


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- the driver's side (its own process, started by the warm Ray's keeper) ----------------------------------------
def serve(path: Path, entry: str, preload: tuple[str, ...] = PRELOAD) -> None:
    """Import, listen, fork a child per command, report each child's exit status, until SIGTERM. ``entry`` is the
    command's ``main`` as a console script names it (``module:function``: argv in, exit status out)."""
    import importlib

    from . import warm_ray

    start_env = dict(os.environ)
    for module in preload:
        importlib.import_module(module)
    module, _, function = entry.partition(":")
    main = getattr(importlib.import_module(module), function)
    defaults = {k: v for k, v in os.environ.items() if start_env.get(k) != v}  # what the imports set
    expected = {"code": warm_ray.code_fingerprint(), "executable": os.path.realpath(sys.executable)}
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    listener = _listen(path)
    children: dict[int, socket.socket | None] = {}  # pid -> its command's connection (None: the command died)
    try:
        print(f"warm driver {os.getpid()} listening on {path}", flush=True)
        while True:
            waiting = [c for c in children.values() if c is not None]
            readable, _, _ = select.select([listener, *waiting], [], [], POLL_S)
            for conn in readable:
                if conn is listener:
                    _accept(listener, children, start_env, defaults, expected, main)
                elif not conn.recv(1):  # the command is gone: its child goes too
                    pid = next(p for p, c in children.items() if c is conn)
                    _forward(pid, signal.SIGKILL)
                    conn.close()
                    children[pid] = None
            _reap(children)
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def _listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)  # a driver killed before it removed its socket
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # 0600 from the start: no moment where another user could connect
    try:
        listener.bind(os.fspath(path))
    finally:
        os.umask(umask)
    listener.listen(8)
    return listener


def _accept(listener, children, start_env: dict, defaults: dict, expected: dict, main) -> None:
    conn, _ = listener.accept()
    fds: list[int] = []
    try:
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != os.getuid():  # the socket's mode already says so; a second lock on who may fork this process
            conn.close()
            return
        conn.settimeout(CONNECT_TIMEOUT_S * 5)  # a connection that sends nothing holds nobody up for long
        head, fds, _, _ = socket.recv_fds(conn, 4, 3)
        head += _read_exactly(conn, 4 - len(head))
        body = _read_exactly(conn, struct.unpack("!I", head)[0]) if len(head) == 4 else b""
        request = json.loads(body) if len(fds) == 3 else None
    except (OSError, ValueError, struct.error):
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    reason = why_declined(request, start_env, expected)
    if reason or request is None:
        for fd in fds:
            os.close(fd)
        _send_quietly(conn, {"declined": reason})
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        _become(request, fds, defaults, [listener, conn, *[c for c in children.values() if c is not None]], main)
    for fd in fds:
        os.close(fd)
    conn.settimeout(None)
    if _send_quietly(conn, {"pid": child}):
        children[child] = conn
    else:  # the command gave up waiting (or died): it runs itself, or not at all; never twice
        _forward(child, signal.SIGKILL)
        conn.close()
        children[child] = None


def why_declined(request: dict | None, start_env: dict, expected: dict) -> str:
    """Why this driver cannot run the command as its own process would; '' when it can."""
    if request is None:
        return "the command sent no streams"
    if request.get("code") != expected["code"]:
        return "the code changed since `tune-losses up`; run it again to use the new code"
    if request.get("executable") != expected["executable"]:
        return f"another Python ({request.get('executable')}) than `tune-losses up`'s ({expected['executable']})"
    env = request.get("env", {})
    differ = sorted(
        k
        for k in set(env) | set(start_env)
        if k.startswith(IMPORT_TIME) and not k.startswith(NOT_IMPORT_TIME) and env.get(k) != start_env.get(k)
    )
    if differ:
        return f"settings read at import differ from `tune-losses up`'s: {', '.join(differ)}"
    return ""


def _send_quietly(conn: socket.socket, message: dict) -> bool:
    try:
        conn.sendall(_frame(message))
        return True
    except OSError:
        return False


def _reap(children: dict) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            _send_quietly(conn, {"status": os.waitstatus_to_exitcode(status)})
            conn.close()


def _become(request: dict, fds: list[int], defaults: dict, sockets: list, main) -> None:
    """The forked child becomes the command: its streams, directory, environment and import path; never returns."""
    global FORKED_FROM
    code = 1
    try:
        FORKED_FROM = os.getppid()
        for sock in sockets:
            sock.close()
        os.setsid()  # the driver's stop (`down`) does not reach a sweep; its command passes signals on
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
        sys.argv, sys.path[:] = list(request["argv"]), list(request["path"])
        for stream, lines in ((sys.stdout, os.isatty(1)), (sys.stderr, True)):  # as Python buffers them
            if isinstance(stream, io.TextIOWrapper):
                stream.reconfigure(line_buffering=lines)
        _reseed()
        code = main(request["argv"][1:])
    except SystemExit as exit:  # argparse's errors, `sys.exit` in a command: as the interpreter ends on one
        code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # as the interpreter reports an uncaught exception
        import traceback

        traceback.print_exc()
    finally:
        from tune_losses._internals import exit_without_teardown

        exit_without_teardown(code)


def _reseed() -> None:
    """The streams a new process seeds from the OS would otherwise repeat the driver's in every child."""
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()


if __name__ == "__main__":  # run as the package's module, so that a child's FORKED_FROM is the one sweeps read
    from tune_losses.tuning import warm_driver

    warm_driver.serve(Path(sys.argv[1]), sys.argv[2])
