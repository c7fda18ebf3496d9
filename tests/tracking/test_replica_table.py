"""Each replica's own values as one table artifact of a trial's run (tracking/replicas.py), against a real SQLite
store: split from the metrics `train` reports, written whole and atomically, read back equal, and older runs'
``<metric>_r<i>`` metrics read the same way."""

import time

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric

from tune_losses import tracking
from tune_losses.tracking import record
from tune_losses.tracking.ledger import Ledger
from tune_losses.tracking.replicas import (
    REPLICA_KEY,
    ReplicaTable,
    final_values,
    history,
    read_table,
    recorded_table,
    split_replicas,
)

K = 3


@pytest.fixture
def ledger(tmp_path):
    c = tracking.client(f"sqlite:///{tmp_path}/mlflow.db")
    exp = tracking.experiment_id(c)
    parent = c.create_run(exp, tags={"tune_losses.role": "sweep"}).info.run_id
    return Ledger(c, exp, parent, retry_s=5)


def epoch_metrics(epoch: int) -> dict:
    """What `train` reports for an epoch of K replicas: means, spread, and each replica's own values."""
    out: dict = {"epoch": epoch, "device": "cpu", "test_confusion": [[1, 0], [0, 1]]}
    for metric in ("train_loss", "test_acc", "val_acc"):
        values = [round(0.1 * epoch + 0.01 * r + (0.3 if metric == "test_acc" else 0), 6) for r in range(K)]
        out[metric] = float(np.mean(values))
        out[f"{metric}_std"] = float(np.std(values, ddof=1))
        out.update({f"{metric}_r{r}": v for r, v in enumerate(values)})
    return out


def test_split_takes_every_replica_value_out_of_the_metrics():
    rest, own = split_replicas(epoch_metrics(2))
    assert not any(k.endswith(("_r0", "_r1", "_r2")) for k in rest)
    assert rest["test_acc"] == pytest.approx(np.mean(own["test_acc"])) and "test_acc_std" in rest
    assert rest["test_confusion"] == [[1, 0], [0, 1]] and rest["device"] == "cpu"
    assert own["test_acc"] == [0.5, 0.51, 0.52] and set(own) == {"train_loss", "test_acc", "val_acc"}
    assert split_replicas({"epoch": 1, "test_acc": 0.5}) == ({"epoch": 1, "test_acc": 0.5}, {})


def test_the_table_round_trips_through_the_store_each_epoch_once(ledger):
    run_id = ledger.find_or_create("k", "trial", {}).run_id
    table = ReplicaTable()
    for epoch in (1, 2, 3):
        table.add(epoch, split_replicas(epoch_metrics(epoch))[1])
    table.add(2, {"test_acc": [9.0] * K, "train_loss": [9.0] * K, "val_acc": [9.0] * K})  # held: not replaced
    assert table.unwritten
    table.write(ledger, run_id)
    assert not table.unwritten
    got = read_table(ledger.client, run_id)
    assert list(got["epoch"]) == [1, 1, 1, 2, 2, 2, 3, 3, 3] and list(got["replica"]) == [0, 1, 2] * 3
    for epoch in (1, 2, 3):
        own = split_replicas(epoch_metrics(epoch))[1]
        for metric, values in own.items():
            assert list(got.loc[got["epoch"] == epoch, metric]) == values
    again = ReplicaTable()  # a resumed attempt goes on from what the run holds
    again.load(got)
    again.add(3, {"test_acc": [9.0] * K, "train_loss": [9.0] * K, "val_acc": [9.0] * K})
    again.add(4, split_replicas(epoch_metrics(4))[1])
    pd.testing.assert_frame_equal(again.frame()[again.frame()["epoch"] < 4].reset_index(drop=True), got)
    assert sorted(set(again.frame()["epoch"])) == [1, 2, 3, 4]


def test_a_write_that_fails_leaves_the_table_before_it_whole(ledger):
    """Replaced by a rename: a write killed or failing half way leaves the earlier table, and no stray file among
    the run's artifacts."""
    run_id = ledger.find_or_create("k", "trial", {}).run_id
    table = ReplicaTable()
    table.add(1, split_replicas(epoch_metrics(1))[1])
    table.write(ledger, run_id)
    before = read_table(ledger.client, run_id)

    def torn(path):
        path.write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ledger.write_artifact(run_id, record.REPLICAS_ARTIFACT, torn)
    pd.testing.assert_frame_equal(read_table(ledger.client, run_id), before)
    assert {a.path for a in ledger.client.list_artifacts(run_id)} == {record.REPLICAS_ARTIFACT}
    assert not list(ledger._local_artifacts(run_id).parent.glob(".*.tmp"))


def test_readers_give_the_same_values_from_a_table_and_from_older_replica_metrics(ledger):
    c = ledger.client
    new = ledger.find_or_create("new", "new", {}).run_id
    old = ledger.find_or_create("old", "old", {}).run_id
    table = ReplicaTable()
    for epoch in (1, 2):
        rest, own = split_replicas(epoch_metrics(epoch))
        ledger.log_epoch(new, rest, epoch)
        table.add(epoch, own)
        ts = int(time.time() * 1000)  # an older version's record: every replica's value a metric
        c.log_batch(
            old,
            metrics=[
                Metric(k, float(v), ts, epoch)
                for k, v in epoch_metrics(epoch).items()
                if isinstance(v, float) or k == "epoch"
            ],
        )
    table.write(ledger, new)
    assert not any(REPLICA_KEY.match(k) for k in c.get_run(new).data.metrics)
    want = {r: {"train_loss": 0.2 + 0.01 * r, "test_acc": 0.5 + 0.01 * r, "val_acc": 0.2 + 0.01 * r} for r in range(K)}
    for run_id in (new, old):
        got = final_values(c, c.get_run(run_id))
        assert got.keys() == want.keys()
        for r in want:
            assert got[r] == pytest.approx(want[r])
        assert history(c, run_id, "test_acc", K) == {
            r: pytest.approx({1: 0.4 + 0.01 * r, 2: 0.5 + 0.01 * r}) for r in range(K)
        }
    legacy = recorded_table(c, old, c.get_run(old).data.metrics)
    pd.testing.assert_frame_equal(legacy[table.frame().columns], table.frame(), check_dtype=False)
    single = ledger.find_or_create("one", "one", {}).run_id
    ledger.log_epoch(single, {"test_acc": 0.7}, 1)
    assert final_values(c, c.get_run(single)) is None
    assert history(c, single, "test_acc", 1) == {0: {1: 0.7}}
