"""Replacing a file whole: the one rule for every file the package writes that another process may read while it is
written (a checkpoint, a replica table, the warm Ray's address file, the driver's health file, a store's schema,
the cached features, the kernel's source copy).

The new content goes to a hidden file of a name never used before, in the target's directory (or one beside it on
the same file system), which one ``os.replace`` then puts in place. A reader sees the old file or the new one,
never part of one. A kill or a full disk leaves at most the hidden file; the next write of the same target removes
such leftovers once they are :data:`STALE_S` old (a live writer's file grows, so it never is).
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

#: a hidden file of a target untouched this long was left by a writer that died (a checkpoint takes seconds)
STALE_S = 600.0


@contextlib.contextmanager
def replacing(
    path: Path | str,
    *,
    durable: bool = False,
    mode: int | None = None,
    staging_dir: Path | None = None,
    keep_existing: bool = False,
    make_dirs: bool = True,
) -> Iterator[Path]:
    """Yield the path to write the new content to; put it in place of ``path`` when the block ends without an error,
    remove it otherwise.

    ``durable``: the file, then its directory, flushed to the disk, so that a machine's crash too leaves the old or
    the new (checkpoints). ``mode``: the permissions it is created with, before any byte is written (0o600: only
    this user reads it). ``staging_dir``: where it is written, when the target's directory is listed by readers (a
    run's artifacts); it must be on the same file system. ``keep_existing``: a file another process put there
    first wins (both are whole; the first is kept, never replaced). ``make_dirs``: create missing directories
    (False where a directory's absence must be an error: the driver's lock directory is checked when made)."""
    path = Path(path)
    folder = staging_dir or path.parent
    if make_dirs:
        for directory in {path.parent, folder}:
            directory.mkdir(parents=True, exist_ok=True)
    staged = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    if mode is not None:
        os.close(os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
    try:
        yield staged
        if durable:
            _fsync(staged)
        _put_in_place(staged, path, keep_existing)
        if durable:
            _fsync(path.parent)
        _remove_stale(folder, path.name)
    finally:
        with contextlib.suppress(OSError):  # never hides what the block raised
            staged.unlink(missing_ok=True)


def write_text(path: Path | str, text: str, **options) -> None:
    """``path``'s text replaced whole (:func:`replacing`'s options)."""
    with replacing(path, **options) as staged:
        staged.write_text(text)


def _put_in_place(staged: Path, path: Path, keep_existing: bool) -> None:
    if not keep_existing:
        os.replace(staged, path)
        return
    try:
        os.link(staged, path)  # one step: a file made meanwhile is never replaced
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: checked, then replaced (a narrow window, as before)
        if not path.exists():
            os.replace(staged, path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale(folder: Path, name: str) -> None:
    """Hidden files of ``name`` that writers killed mid-write left behind (checkpoint-sized, one per kill)."""
    cutoff = time.time() - STALE_S
    for left in folder.glob(f".{glob.escape(name)}.*.tmp"):
        with contextlib.suppress(OSError):  # another writer's, finished or removed meanwhile
            if left.stat().st_mtime < cutoff:
                left.unlink()
