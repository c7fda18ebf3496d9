"""The replica table (tracking/replicas.py) through real sweeps with a kill: a trial process SIGKILLed between an
epoch's metrics and its table write (the worst point: the metrics say the epoch is recorded, the table does not
hold it) is retried by Ray, resumes from its checkpoint and leaves a complete table, each epoch once, equal to
the per-epoch metrics; the report reads it back. Unfused and fused (every member of the group killed at once)."""

import pytest

from tune_losses import tracking
from tune_losses.reports.build import build_report
from tune_losses.tracking.ledger import audit
from tune_losses.tracking.replicas import REPLICA_KEY, read_table

from helpers import IN_TRIAL, write_space

pytestmark = pytest.mark.slow
EPOCHS, REPEATS, KILL_FROM = 4, 2, 3

KILLER_PLUGIN = '''
"""A test plugin: the first trial process to write a replica table holding epoch {kill_from} or later is
SIGKILLed just before it writes (marker file: {marker}), after that epoch's metrics were logged."""
import os
import signal
from pathlib import Path

from tune_losses.tracking import replicas

write = replicas.ReplicaTable.write


def killing_write(self, ledger, run_id):
    marker = Path({marker!r})
    if self.epochs and max(self.epochs) >= {kill_from} and not marker.exists():
        marker.write_text(f"killed before writing epoch {{max(self.epochs)}}")
        os.kill(os.getpid(), signal.SIGKILL)
    write(self, ledger, run_id)


if {in_trial}:
    replicas.ReplicaTable.write = killing_write
'''


@pytest.mark.parametrize("fuse", ["off", "auto"])
def test_a_trial_killed_between_metrics_and_table_leaves_a_complete_table(
    tmp_path, plugin, ray_local, monkeypatch, fuse
):
    from tune_losses.cli import main

    marker = tmp_path / "killed"
    text = KILLER_PLUGIN.format(kill_from=KILL_FROM, marker=str(marker), in_trial=IN_TRIAL)
    name = plugin("killer", text)
    space = write_space(
        tmp_path / "kill.yaml",
        name=f"table_kill_{fuse}",
        train={"plugins": [name], "epochs": EPOCHS, "repeats": REPEATS},
        params={"loss.a": {"grid": [3.0, 5.0, 10.0, 20.0]}},
        search={"fuse": fuse, "max_concurrent": 2, "max_failures": 1},
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("TUNE_LOSSES_HOME", str(tmp_path / "home"))
    assert main(["sweep", str(space), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")]) == 0
    assert marker.read_text().startswith("killed before writing epoch"), "the kill was not injected"
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, f"table_kill_{fuse}")
    assert audit(c, parent.info.run_id, parent.info.experiment_id, EPOCHS) == []  # each epoch's metrics once
    runs = tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id)
    assert len(runs) == 4 and any(int(r.data.tags.get("attempts", 0)) >= 2 for r in runs)  # killed, retried
    for run in runs:
        assert run.data.tags["status"] == "completed"
        assert not any(REPLICA_KEY.match(k) for k in run.data.metrics)
        table = read_table(c, run.info.run_id)
        assert list(zip(table["epoch"], table["replica"])) == [(e, r) for e in range(1, EPOCHS + 1) for r in range(2)]
        for key in ("test_acc", "val_acc", "train_loss"):  # the re-run epochs equal what the killed attempt logged
            logged = {h.step: h.value for h in c.get_metric_history(run.info.run_id, key)}
            assert table.groupby("epoch")[key].mean().to_dict() == pytest.approx(logged, rel=1e-9, abs=1e-12)
    report = build_report(f"table_kill_{fuse}", uri, tmp_path / "report", log=False)
    rows = report.trials.set_index(["run_id", "replica"])
    for run in runs:  # the report's per-replica rows: the table's last epoch
        last = read_table(c, run.info.run_id).query(f"epoch == {EPOCHS}")
        for r, value in zip(last["replica"], last["test_acc"]):
            assert rows.loc[(run.info.run_id, r), "test_acc"] == pytest.approx(value)
