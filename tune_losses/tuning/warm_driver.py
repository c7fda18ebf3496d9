"""The warm driver of `tune-losses up`: a process that has imported what a sweep's driver imports (torch, Ray Tune,
MLflow, Optuna, the runner, the reports) and forks each `tune-losses sweep` from there, so that the command's
seconds of imports are off the path to its first trial (``benchmarks/startup.py`` measures it).

The hand-over (the command's side is tuning/warm_command.py, the first step of ``cli.run``):

1. The command connects to the driver's Unix socket (named in the warm Ray's file; mode 0600, and each side checks
   that the other is the same user), sends its argv, directory, environment, import path, interpreter flags and
   the signals it ignores (``nohup``), and passes its three standard streams (SCM_RIGHTS).
2. The driver declines what it cannot run as the command's own process would (:func:`why_declined`): the command
   then runs itself, as without `up`. Otherwise it forks: the child takes the streams, directory, environment and
   ignored signals, in a session of its own, and waits. The driver sends the command the child's pid.
3. The command installs its signal forwarders, then says "go": only then does the child run the command's
   ``main``. A command that stops before (Ctrl-C, a timeout, a kill) closes the connection, and the driver kills the
   child, which never ran: a command runs once, in the child or in itself, never in both.
4. The command passes on the signals a terminal or supervisor sends it (:data:`SIGNALS`; Ctrl-Z stops both) and
   exits with the child's status (dying of the same signal when the child did). When the command dies without a
   word (SIGKILL), the driver kills the child, as a driver process dies with its command.

This module imports only the standard library at its top: the command imports it before anything heavy.
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
from dataclasses import dataclass
from pathlib import Path

from tune_losses import process

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
#: environment variables (prefixes) that Python, torch, Ray, Ray Tune, gRPC, matplotlib or MLflow may read when
#: imported, or that choose what is imported: a command whose values differ from the driver's runs on its own.
#: MLflow reads its other variables (the tracking URI, credentials, retries) when used.
IMPORT_TIME = (
    *("PYTHON", "LD_", "HOME", "TMPDIR", "LANG", "LC_", "XDG_", "MPL"),
    *("RAY_", "TUNE_", "GRPC_", "OMP_", "MKL_", "KMP_", "OPENBLAS_", "TORCH", "PYTORCH", "CUDA", "NCCL_"),
    *("MLFLOW_CONFIGURE_LOGGING", "MLFLOW_LOGGING_LEVEL"),
)
#: ... except those read when used: where Ray starts (RAY_ADDRESS), this package's own (never read at import:
#: tests/test_contracts.py). The child takes the command's values.
NOT_IMPORT_TIME = ("RAY_ADDRESS", "TUNE_LOSSES_")
#: passed on to the child as they come (SIGUSR1: a pre-empted sweep's graceful stop, tuning/interrupt.py)
SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
GO = b"g"  # the command's word that its forwarders are in place
CONNECT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 10.0  # a connection that sends nothing holds the driver up no longer
POLL_S = 0.2

#: in a forked child: the warm driver's pid (the sweep's header says where it came from); None otherwise
FORKED_FROM: int | None = None


def frame(message: dict) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack("!I", len(body)) + body


def receive(conn: socket.socket) -> dict:
    """One framed message; {} at an end of stream (or a reset) before it."""
    head = read_exactly(conn, 4)
    if len(head) < 4:
        return {}
    return json.loads(read_exactly(conn, struct.unpack("!I", head)[0]))


def read_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        try:
            chunk = conn.recv(left)
        except ConnectionError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def peer_uid(conn: socket.socket) -> int:
    return struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]


def kill_quietly(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just ended
        os.kill(pid, signum)


def interpreter() -> dict:
    """What must be equal for a forked child to run as the command's own interpreter would."""
    return {
        "executable": os.path.realpath(sys.executable),
        "flags": list(sys.flags),
        "warnoptions": list(sys.warnoptions),
        "xoptions": {k: str(v) for k, v in sys._xoptions.items()},
    }


def why_declined(request: dict, start_env: dict, expected: dict) -> str:
    """Why this driver cannot run the command as its own process would; '' when it can."""
    if request.get("code") != expected["code"]:
        return "the code or its libraries changed since `tune-losses up`; run `down` and `up` to use them"
    argv = request.get("argv") or []
    if len(argv) < 2 or argv[1] not in SERVED:
        return f"only {' and '.join(SERVED)} is handed over"
    if request.get("interpreter") != expected["interpreter"]:
        return "another Python, or other interpreter options, than `tune-losses up`'s"
    env = request.get("env", {})
    differ = sorted(
        k
        for k in set(env) | set(start_env)
        if k.startswith(IMPORT_TIME) and not k.startswith(NOT_IMPORT_TIME) and env.get(k) != start_env.get(k)
    )
    if differ:
        return f"settings read at import differ from `tune-losses up`'s: {', '.join(differ)}"
    return ""


# --- the driver (its own process, started by the warm Ray's keeper) -----------------------------------------------
@dataclass
class Child:
    """A forked command: its connection (None once the command is gone) and, until the command says go, the pipe
    the child waits on."""

    conn: socket.socket | None
    go: int | None


class Driver:
    """Listen, fork a child per command, pass each child's exit status back; on SIGTERM stop listening and end
    once the running children have ended (their commands still get their status)."""

    def __init__(self, path: Path, main, start_env: dict, defaults: dict, expected: dict):
        self.path, self.main = path, main
        self.start_env, self.defaults, self.expected = start_env, defaults, expected
        self.children: dict[int, Child] = {}
        self.listener: socket.socket | None = None
        self.stopping = False

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, lambda signum, frame: setattr(self, "stopping", True))
        self.listener = listen(self.path)
        print(f"warm driver {os.getpid()} listening on {self.path}", flush=True)
        try:
            while not (self.stopping and not self.children):
                if self.stopping and self.listener is not None:
                    self._stop_listening()
                self._step()
        finally:
            self._stop_listening()

    def _stop_listening(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            self.path.unlink(missing_ok=True)

    def _step(self) -> None:
        conns = {c.conn: pid for pid, c in self.children.items() if c.conn is not None}
        waiting = [*conns, *([self.listener] if self.listener else [])]
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(waiting, [], [], POLL_S)
            for conn in readable:
                if conn is self.listener:
                    self._accept()
                else:
                    self._from_command(conns[conn])
        self._reap()

    def _from_command(self, pid: int) -> None:
        child = self.children[pid]
        assert child.conn is not None
        try:
            word = child.conn.recv(1)
        except OSError:  # reset: the command is gone
            word = b""
        if word == GO and child.go is not None:
            os.write(child.go, GO)  # the child runs the command now
            os.close(child.go)
            child.go = None
        elif not word:  # the command is gone: its child goes too (one that had not started never runs)
            kill_quietly(pid, signal.SIGKILL)
            child.conn.close()
            child.conn = None

    def _accept(self) -> None:
        assert self.listener is not None
        conn, _ = self.listener.accept()
        request, fds = read_request(conn)
        reason = (
            "the command sent no streams" if request is None else why_declined(request, self.start_env, self.expected)
        )
        if request is None or reason:
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                conn.sendall(frame({"declined": reason}))
            conn.close()
            return
        self._fork(conn, request, fds)

    def _fork(self, conn: socket.socket, request: dict, fds: list[int]) -> None:
        go_read, go_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(go_write)
            sockets = [self.listener, conn, *(c.conn for c in self.children.values())]
            become(request, fds, go_read, self.defaults, [s for s in sockets if s is not None], self.main)
        os.close(go_read)
        for fd in fds:
            os.close(fd)
        conn.settimeout(None)
        self.children[pid] = Child(conn, go_write)
        try:
            conn.sendall(frame({"pid": pid, "started": start_time(pid)}))
        except OSError:  # the command gave up: the child, which has not run, goes
            self._from_command(pid)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is not None and child.go is not None:
                os.close(child.go)
            if child is not None and child.conn is not None:
                with contextlib.suppress(OSError):
                    child.conn.sendall(frame({"status": os.waitstatus_to_exitcode(status)}))
                child.conn.close()


def serve(path: Path, entry: str, preload: tuple[str, ...] = PRELOAD) -> None:
    """Import, then serve commands until SIGTERM. ``entry`` is the command's ``main`` as a console script names it
    (``module:function``: argv in, exit status out)."""
    import importlib

    from . import warm_ray

    start_env = dict(os.environ)
    for module in preload:
        importlib.import_module(module)
    module, _, function = entry.partition(":")
    main = getattr(importlib.import_module(module), function)
    # what the imports set (a per-process value, named with a leading underscore, stays the driver's own)
    defaults = {k: v for k, v in os.environ.items() if start_env.get(k) != v and not k.startswith("_")}
    expected = {"code": warm_ray.code_fingerprint(), "interpreter": interpreter()}
    Driver(path, main, start_env, defaults, expected).serve()


def listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)  # a driver killed before it removed its socket
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)  # 0600 from the start: no moment where another user could connect
    try:
        listener.bind(os.fspath(path))
    finally:
        os.umask(umask)
    listener.listen(8)
    return listener


def read_request(conn: socket.socket) -> tuple[dict | None, list[int]]:
    """The command's request and its three streams; None (and whatever came) for anything else."""
    fds: list[int] = []
    try:
        if peer_uid(conn) != os.getuid():  # the socket's mode already says so; a second lock on who forks this
            return None, fds
        conn.settimeout(REQUEST_TIMEOUT_S)
        head, fds, _, _ = socket.recv_fds(conn, 4, 3)
        head += read_exactly(conn, 4 - len(head))
        body = read_exactly(conn, struct.unpack("!I", head)[0]) if len(head) == 4 else b""
        return (json.loads(body) if len(fds) == 3 else None), fds
    except (OSError, ValueError, struct.error):
        return None, fds


def start_time(pid: int) -> str:
    """The process's start (tune_losses/process.py): with its pid, what names it even after the pid is reused."""
    found = process.stat(pid)
    return found[1] if found else ""


# --- the child ---------------------------------------------------------------------------------------------------
def become(request: dict, fds: list[int], go: int, defaults: dict, sockets: list, main) -> None:
    """The forked child becomes the command: its streams, directory, environment, import path and ignored signals;
    it runs ``main`` once the command says go, and never returns."""
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
        ignored = set(request.get("ignored", []))
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)
        if signal.SIGINT not in ignored:
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
        numpy = sys.modules.get("numpy")  # `random` reseeds itself in a forked child; numpy's global stream not
        if numpy is not None:
            numpy.random.seed()
        if os.read(go, 1) != GO:  # the command stopped before it could pass signals on: it runs elsewhere, or not
            os._exit(1)
        code = main(request["argv"][1:])
    except SystemExit as exit:  # argparse's errors, `sys.exit` in a command: as the interpreter ends on one
        code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
        if exit.code is not None and not isinstance(exit.code, int):
            print(exit.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # as the interpreter reports an uncaught exception
        import traceback

        traceback.print_exc()
    finally:
        from tune_losses._internals import exit_without_teardown

        exit_without_teardown(code)


if __name__ == "__main__":  # run as the package's module, so that a child's FORKED_FROM is the one sweeps read
    from tune_losses.tuning import warm_driver

    warm_driver.serve(Path(sys.argv[1]), sys.argv[2])
