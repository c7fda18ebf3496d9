"""The live view's fault lines (tuning/progress.py): the store going down and coming back is one line each, said
once however long it lasts; a lost trial goes on from the epoch of the checkpoint it restores, read from the
sweep's checkpoints (a trial's or a fused group's), and says so honestly when that cannot be read."""

import io

import pytest

from tune_losses.spaces import load_space
from tune_losses.tracking.ledger import STORE, trial_key
from tune_losses.training.checkpoint import save_checkpoint
from tune_losses.tuning.fusion import group_key
from tune_losses.tuning.progress import SweepProgress, checkpoint_epoch


@pytest.fixture
def view(monkeypatch):
    monkeypatch.setattr(STORE, "failing_since", None)
    out = io.StringIO()
    space, _, _ = load_space("quickstart")
    return SweepProgress(space, bar=False, out=out), out


def test_a_store_outage_is_one_line_down_and_one_line_back(view):
    progress, out = view
    progress.setup(total_num_samples=5)  # the periodic status line is due every 30 s from here
    progress.on_step_end(0, [])
    assert out.getvalue() == ""
    STORE.failed(ConnectionError("Connection refused"))
    for _ in range(3):  # trials stay paused over many steps: said once
        progress.on_step_end(0, [])
    STORE.failed(ConnectionError("again"))
    progress.on_step_end(0, [])
    STORE.reached()
    progress.on_step_end(0, [])
    progress.on_step_end(0, [])
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("waiting for the tracking store since ") and lines[0].endswith("(trials paused)")
    assert lines[1] == "tracking store back after 0:00"
    progress.on_experiment_end([])


def test_the_outage_lines_come_while_the_loop_is_blocked(view):
    """Ray Tune's loop can wait in a retried tracking call for the whole outage (a new user saw no line at all):
    the store's health tells the live view itself, from whichever thread saw the change."""
    import threading

    progress, out = view
    progress.setup(total_num_samples=5)
    watch = threading.Thread(target=lambda: STORE.failed(ConnectionError("Connection refused")))
    watch.start()
    watch.join()
    assert out.getvalue().startswith("waiting for the tracking store since ")  # no step has run since
    STORE.reached()
    assert out.getvalue().splitlines()[-1].startswith("tracking store back after ")
    progress.on_experiment_end([])
    STORE.failed(ConnectionError("after the sweep"))
    STORE.reached()
    assert "after the sweep" not in out.getvalue() and len(out.getvalue().splitlines()) == 4  # + the end lines


def test_a_lost_trial_goes_on_from_its_checkpoints_epoch(tmp_path):
    config = {"params": {"loss.a": 5.0}}
    assert checkpoint_epoch(str(tmp_path), config) == 0  # none yet: it starts again
    save_checkpoint({"epoch": 7, "replicas": []}, tmp_path / trial_key(config))
    assert checkpoint_epoch(str(tmp_path), config) == 7
    members = [{"params": {"loss.a": 5.0}}, {"params": {"loss.a": 10.0}}]
    save_checkpoint({"epoch": 3}, tmp_path / group_key([trial_key(m) for m in members]))
    assert checkpoint_epoch(str(tmp_path), {"group": members}) == 3
    (tmp_path / trial_key(config) / "state.pt").write_bytes(b"torn")
    assert checkpoint_epoch(str(tmp_path), config) is None  # unreadable: not guessed
    assert checkpoint_epoch("s3://bucket/sweep", config) is None  # not readable from the driver here
