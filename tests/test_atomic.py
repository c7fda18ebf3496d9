"""tune_losses/atomic.py: a file replaced whole, whatever cuts the write."""

import os
import stat
import subprocess
import sys
import time

import pytest

from tune_losses import atomic

KILLED_MID_WRITE = """
import os, sys
from tune_losses.atomic import replacing
with replacing(sys.argv[1]) as staged:
    staged.write_text("half of the new")
    os._exit(9)  # a SIGKILL, a full disk: the block never ends
"""


def test_a_reader_sees_the_old_file_until_the_new_one_is_whole(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with atomic.replacing(path) as staged:
        staged.write_text("new")
        assert path.read_text() == "old" and staged.parent == tmp_path and staged.name.startswith(".")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["f.json"]


def test_an_error_in_the_block_keeps_the_old_file_and_leaves_nothing(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    with pytest.raises(OSError), atomic.replacing(path) as staged:
        staged.write_text("new")
        raise OSError(28, "No space left on device")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f"]


def test_a_killed_writer_leaves_the_old_file_and_its_leftover_goes_once_stale(tmp_path):
    path = tmp_path / "state.pt"
    path.write_text("old")
    done = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(path)], capture_output=True, timeout=60)
    assert done.returncode == 9 and path.read_text() == "old"
    (left,) = [p for p in tmp_path.iterdir() if p != path]
    assert left.name.startswith(".state.pt.")  # hidden; no later write reuses its name
    atomic.write_text(path, "new", durable=True)
    assert path.read_text() == "new" and left.exists()  # it may be a live writer's: not yet stale
    old = time.time() - atomic.STALE_S - 1
    os.utime(left, (old, old))
    atomic.write_text(path, "newer")
    assert path.read_text() == "newer" and os.listdir(tmp_path) == ["state.pt"]  # one leftover per kill, not more


def test_mode_is_set_before_any_byte_is_written(tmp_path):
    with atomic.replacing(tmp_path / "health.json", mode=0o600) as staged:
        assert stat.S_IMODE(staged.stat().st_mode) == 0o600 and staged.read_text() == ""
        staged.write_text("{}")
    assert stat.S_IMODE((tmp_path / "health.json").stat().st_mode) == 0o600


def test_staging_elsewhere_and_keeping_a_file_another_process_made(tmp_path):
    listed, staging = tmp_path / "artifacts", tmp_path
    with atomic.replacing(listed / "replicas.parquet", staging_dir=staging) as staged:
        assert staged.parent == staging and listed.is_dir() and not list(listed.iterdir())
        staged.write_text("table")
    assert (listed / "replicas.parquet").read_text() == "table"
    db = tmp_path / "mlflow.db"
    with atomic.replacing(db, keep_existing=True) as staged:
        staged.write_text("mine")
        db.write_text("theirs")  # made meanwhile by another process
    assert db.read_text() == "theirs" and not staged.exists()
    with pytest.raises(FileNotFoundError), atomic.replacing(tmp_path / "gone" / "health", make_dirs=False) as staged:
        staged.write_text("{}")  # a directory that must exist is never made here
    assert not (tmp_path / "gone").exists()


def test_keeping_an_existing_file_where_hard_links_fail(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")  # what a file system without hard links answers

    monkeypatch.setattr(os, "link", no_links)
    db = tmp_path / "mlflow.db"
    atomic.write_text(db, "mine", keep_existing=True)
    assert db.read_text() == "mine"
    atomic.write_text(db, "another", keep_existing=True)
    assert db.read_text() == "mine" and os.listdir(tmp_path) == ["mlflow.db"]
