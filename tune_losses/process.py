"""What Linux's /proc says of a process: its state and its start, which with its pid name it even after the pid
is reused. Standard library only: the CLI reads it before anything heavy is imported (tuning/warm_command.py)."""

from __future__ import annotations

from pathlib import Path


def stat(pid: int) -> tuple[str, str] | None:
    """(state, start in clock ticks since boot) of process ``pid``, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after the command, which may hold spaces and parentheses
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)
