"""Replacing a file whole: the one rule for every file the package writes that another process may read while it is
written (a checkpoint, a replica table, the warm Ray's address file, the driver's health file, a store's schema,
the cached features, the kernel's source copy).

The new content goes to a hidden file of a name never used before, in the target's directory (or one beside it on
the same file system), which one ``os.replace`` then puts in place. A reader sees the old file or the new one,
never part of one; a kill or a full disk leaves at most the hidden file, which the next write does not reuse.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replacing(
    path: Path | str,
    *,
    durable: bool = False,
    mode: int | None = None,
    staging_dir: Path | None = None,
    keep_existing: bool = False,
) -> Iterator[Path]:
    """Yield the path to write the new content to; put it in place of ``path`` when the block ends without an error,
    remove it otherwise.

    ``durable``: flushed to the disk before the rename, so that a machine's crash too leaves the old or the new
    (checkpoints). ``mode``: the permissions it is created with, before any byte is written (0o600: only this user
    reads it). ``staging_dir``: where it is written, when the target's directory is listed by readers (a run's
    artifacts); it must be on the same file system. ``keep_existing``: a file another process put there meanwhile
    wins (both are whole; the first is kept)."""
    path = Path(path)
    folder = staging_dir or path.parent
    for directory in {path.parent, folder}:
        directory.mkdir(parents=True, exist_ok=True)
    staged = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    if mode is not None:
        os.close(os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
    try:
        yield staged
        if durable:
            with open(staged, "rb+") as f:
                os.fsync(f.fileno())
        if not (keep_existing and path.exists()):
            os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)


def write_text(path: Path | str, text: str, **options) -> None:
    """``path``'s text replaced whole (:func:`replacing`'s options)."""
    with replacing(path, **options) as staged:
        staged.write_text(text)
