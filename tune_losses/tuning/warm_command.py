"""The command's side of the warm driver's hand-over (the protocol: tuning/warm_driver.py): ``cli.run`` calls
:func:`hand_over` first; when no warm driver takes the command, the command runs itself. Standard library only,
as ``cli.run`` runs it before anything heavy is imported."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time

from tune_losses import process

from .warm_driver import (
    CONNECT_TIMEOUT_S,
    GO,
    POLL_S,
    SERVED,
    SIGNALS,
    frame,
    interpreter,
    kill_quietly,
    peer_uid,
    receive,
    start_time,
)

ANSWER_TIMEOUT_S = 30.0  # the driver answers once it has forked (milliseconds); a loaded machine gets slack
STOPS = (signal.SIGTSTP, signal.SIGCONT)  # Ctrl-Z and `fg`: the child has no terminal, so it is stopped by hand


def hand_over(argv: list[str]) -> int | None:
    """Run this command in the warm driver when one takes it: its exit status; None when none does."""
    if not argv or argv[0] not in SERVED:
        return None
    from tune_losses.home import run_dir

    from . import warm_ray

    info = warm_ray.read(run_dir() / warm_ray.FILENAME)
    conn = _connect(info.driver_socket) if info is not None and info.driver_socket else None
    if conn is None:
        return None
    with conn:
        ignored = [int(s) for s in (*SIGNALS, *STOPS) if signal.getsignal(s) == signal.SIG_IGN]  # `nohup`
        request = {
            "argv": sys.argv,
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "path": sys.path,
            "interpreter": interpreter(),
            "code": warm_ray.code_fingerprint(),
            "ignored": ignored,
        }
        try:
            child = _start(conn, request, ignored)
        except KeyboardInterrupt:  # a Ctrl-C held back while the driver declined: the command ends here
            print("\ninterrupted", file=sys.stderr)
            return 130
        return None if child is None else _wait(conn, child)


def _connect(path: str) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_TIMEOUT_S)
    try:
        conn.connect(path)
        uid = peer_uid(conn)
    except (OSError, TypeError, ValueError):  # no driver (a stale or garbled file, `down` meanwhile): run here
        conn.close()
        return None
    if uid != os.getuid():  # never hand this environment (credentials) to another user's process
        conn.close()
        return None
    return conn


class Forwarder:
    """Passes the signals this command gets on to its child; Ctrl-Z stops both, `fg` continues both."""

    def __init__(self, pid: int, started: str, ignored: list[int]):
        self.pid, self.started = pid, started
        self.previous = {sig: signal.signal(sig, self.forward) for sig in SIGNALS if int(sig) not in ignored}
        if int(signal.SIGTSTP) not in ignored:
            self.previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, self.stop)
            self.previous[signal.SIGCONT] = signal.signal(signal.SIGCONT, self.resume)

    def alive(self) -> bool:
        """Whether the child still runs (its pid not taken over by another process since)."""
        return bool(self.started) and start_time(self.pid) == self.started and not _zombie(self.pid)

    def forward(self, signum, frame) -> None:
        if self.alive():
            kill_quietly(self.pid, signum)

    def stop(self, signum, frame) -> None:
        if self.alive():
            kill_quietly(self.pid, signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # this command stops here until continued

    def resume(self, signum, frame) -> None:
        if self.alive():
            kill_quietly(self.pid, signal.SIGCONT)
        signal.signal(signal.SIGTSTP, self.stop)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _start(conn: socket.socket, request: dict, ignored: list[int]) -> Forwarder | None:
    """Send the request; once the child is forked, forward signals to it and say go. Signals are held back until
    then: none is lost, and none reaches a child that will not run."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, [*SIGNALS, *STOPS])
    child = None
    try:
        message = frame(request)
        try:
            socket.send_fds(conn, [message[:4]], [0, 1, 2])  # the streams ride on the length; the body follows
            conn.sendall(message[4:])
            conn.settimeout(ANSWER_TIMEOUT_S)
            answer = receive(conn)
        except (OSError, ValueError):
            answer = {}  # no answer: a child forked meanwhile dies with this connection; the command runs here
        if "declined" in answer:
            print(f"driver: not forked from `tune-losses up`'s warm driver ({answer['declined']})", flush=True)
        elif "pid" in answer:
            child = Forwarder(int(answer["pid"]), str(answer.get("started", "")), ignored)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)  # what was held back is handled now
    if child is None:
        return None
    try:
        conn.settimeout(None)
        conn.sendall(GO)
    except OSError:  # the driver is gone before the child ran: it never will (its go pipe closed)
        child.restore()
        return None
    return child


def _wait(conn: socket.socket, child: Forwarder) -> int:
    """The child's exit status, passed on as this command's; signals are forwarded until the child has ended."""
    try:
        answer = receive(conn)
    except ValueError:
        answer = {}
    if "status" not in answer:  # the driver stopped (a kill) while the child ran: wait for the child itself
        while child.alive():
            time.sleep(POLL_S)
        child.restore()
        print(
            f"error: the warm driver ended while this command ran in it (pid {child.pid}); its exit status is unknown",
            file=sys.stderr,
        )
        return 1
    child.restore()
    status = int(answer["status"])
    if status < 0:  # the child died of a signal: so does this command, as its callers would see a cold one die
        sys.stdout.flush()
        with contextlib.suppress(OSError, ValueError):  # SIGKILL has no handler to reset
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        return 128 - status  # a signal whose default is not to end a process
    return status


def _zombie(pid: int) -> bool:
    found = process.stat(pid)
    return found is None or found[0] == "Z"
