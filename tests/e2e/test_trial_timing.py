"""A trial's own record of where its time went, and checkpoints that are written only when they are cheap enough
(tuning/trial.py), through a real sweep: real Ray, a real MLflow SQLite store, digits."""

import pytest

from tune_losses import tracking

from helpers import IN_TRIAL, write_space

pytestmark = pytest.mark.slow

# Imported in every trial (train.plugins): checkpoints after the first and the last epoch only, and a
# cross-entropy that raises once after the training of epoch {fail_at}, writing the epoch of the checkpoint it
# would resume from into the marker file.
SPARSE_PLUGIN = """
from pathlib import Path

import torch

from tune_losses.losses.ce import CrossEntropyLoss
from tune_losses.losses.registry import register

if {in_trial}:
    import tune_losses.tuning.trial as trial

    trial.CHECKPOINT_SHARE = 1e-9  # a write may take a billionth of the time: only the first and last epochs


@register("flaky_sparse_ce")
class FlakySparseCE(CrossEntropyLoss):
    def __init__(self, num_classes, fail_at={fail_at}):
        super().__init__(num_classes)
        self.fail_at, self.epochs = fail_at, 0

    def update(self, confusion):
        self.epochs += 1  # counted from the start of this process
        marker = Path({marker!r})
        if self.epochs == self.fail_at and not marker.exists():
            found = list(Path({storage!r}).glob("*/*/checkpoints/*/state.pt"))
            epochs = [torch.load(p, weights_only=True)["epoch"] for p in found]
            marker.write_text(",".join(map(str, sorted(epochs))))
            raise RuntimeError("injected fault: flaky_sparse_ce raises once")
"""


def sweep_cli(tmp_path, monkeypatch, args) -> None:
    """`tune-losses sweep ARGS` (the CLI's main, in this process: the tests' shared Ray)."""
    from tune_losses.cli import main

    monkeypatch.setenv("TUNE_LOSSES_HOME", str(tmp_path / "home"))
    assert main(["sweep", *args]) == 0


def steps(c, run_id, key):
    return sorted(m.step for m in c.get_metric_history(run_id, key))


def test_trial_runs_record_their_seconds(tmp_path, ray_local):
    from tune_losses.tuning.runner import run_sweep

    space = write_space(tmp_path / "timed.yaml", name="timed")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_sweep(space, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, make_report=False)
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, "timed")
    runs = tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)
    assert len(runs) == 2
    for run in runs:
        m = run.data.metrics
        parts = ("train", "first_epoch", "tracking", "checkpoint", "tune_report", "trial")
        assert all(m[f"seconds_{p}"] > 0 for p in parts), m
        spent = m["seconds_train"] + m["seconds_tracking"] + m["seconds_checkpoint"] + m["seconds_tune_report"]
        assert spent <= m["seconds_trial"]
        assert m["seconds_first_epoch"] <= m["seconds_train"]
        assert steps(c, run.info.run_id, "epoch") == [1, 2, 3]  # the timings are not epochs


def test_a_retry_after_skipped_checkpoints_re_runs_epochs_without_logging_them_again(
    tmp_path, plugin, ray_local, monkeypatch
):
    """Checkpoints after epochs 1 and 5 only; the trial raises after epoch 3's training: the retry continues from
    epoch 1, re-runs epochs 2 and 3 without logging them again, and its history is that of the same training
    without a fault, epoch for epoch."""
    marker, storage = tmp_path / "raised", tmp_path / "ray"
    text = SPARSE_PLUGIN.format(fail_at=3, marker=str(marker), storage=str(storage), in_trial=IN_TRIAL)
    name = plugin("sparse", text)
    space = write_space(
        tmp_path / "sparse.yaml",
        replace=("params",),
        name="sparse",
        train={"plugins": [name], "loss": {"name": "flaky_sparse_ce"}, "epochs": 5},
        params={"loss.fail_at": {"grid": [3, 99]}},  # the same training; only fail_at=3 raises
        search={"searcher": "grid", "scheduler": {"name": "fifo"}, "max_failures": 1, "max_concurrent": 1},
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep_cli(tmp_path, monkeypatch, [str(space), "--tracking-uri", uri, "--storage", str(storage)])
    found = marker.read_text().split(",")  # the other trial's last checkpoint (5) too, if it ran first
    assert "1" in found and set(found) <= {"1", "5"}, f"checkpoints at the fault: epochs {found}, expected 1"
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, "sparse")
    runs = {r.info.run_name: r for r in tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)}
    flaky, clean = runs["flaky_sparse_ce fail_at=3"], runs["flaky_sparse_ce fail_at=99"]
    assert flaky.data.tags["retries"] == "1" and flaky.data.tags["status"] == "completed"
    assert "restarted_from_scratch" not in flaky.data.tags
    for key in ("epoch", "test_acc", "train_loss"):
        assert steps(c, flaky.info.run_id, key) == [1, 2, 3, 4, 5], key  # every epoch once
    for key in ("test_acc", "train_loss"):
        history = {
            run: [m.value for m in sorted(c.get_metric_history(run, key), key=lambda m: m.step)]
            for run in (flaky.info.run_id, clean.info.run_id)
        }
        assert history[flaky.info.run_id] == history[clean.info.run_id], key


# Imported in every trial (train.plugins): the trial's report to Ray Tune of its last epoch raises once, after
# that epoch's checkpoint was written, as a kill there would stop it.
LAST_REPORT_FAULT = """
from pathlib import Path

import ray.tune

_report = ray.tune.report


def report(metrics, *args, **kwargs):
    marker = Path({marker!r})
    if metrics.get("epoch") == {epochs} and not metrics.get("replayed") and not marker.exists():
        marker.write_text("raised")
        raise RuntimeError("injected fault: the trial stops after its last checkpoint")
    return _report(metrics, *args, **kwargs)


if {in_trial}:
    ray.tune.report = report
"""


def test_a_trial_stopped_after_its_last_checkpoint_keeps_its_confusion_matrix(tmp_path, plugin, ray_local, monkeypatch):
    """The trial stops right after writing its last epoch's checkpoint; the retry resumes from it with nothing
    left to train, so the confusion matrix must already be in its run (it is logged before that checkpoint)."""
    marker = tmp_path / "raised"
    text = LAST_REPORT_FAULT.format(marker=str(marker), epochs=3, in_trial=IN_TRIAL)
    name = plugin("last_fault", text)
    space = write_space(
        tmp_path / "last.yaml",
        replace=("params",),
        name="last",
        train={"plugins": [name], "epochs": 3},
        params={"loss.a": {"grid": [5.0]}},
        search={"searcher": "grid", "scheduler": {"name": "fifo"}, "max_failures": 1, "max_concurrent": 1},
    )
    uri, storage = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "ray"
    sweep_cli(tmp_path, monkeypatch, [str(space), "--tracking-uri", uri, "--storage", str(storage)])
    assert marker.exists(), "the fault was not injected: the test tested nothing"
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, "last")
    (run,) = tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)
    assert run.data.tags["retries"] == "1" and run.data.tags["status"] == "completed"
    assert steps(c, run.info.run_id, "epoch") == [1, 2, 3]
    assert "confusion_matrix.json" in {a.path for a in c.list_artifacts(run.info.run_id)}
