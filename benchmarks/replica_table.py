"""A trial-epoch's tracking cost with K replicas, the two records side by side in one run (issue 22): every
replica's value as metrics of its own (``<metric>_r<i>``, the record before) against the mean/std/min/max as
metrics and every replica's values in the run's table (``replicas.parquet``, tracking/replicas.py, written as
tuning/trial.py writes it: at most ~2% of the time between writes, and at the last epoch). Both go through the
same ledger calls (tracking/ledger.py) into one real SQLite store; the epochs of the two alternate, so load on a
shared machine falls on both alike. Training time per epoch is not simulated: a write ``due`` by the 2% rule is
judged against the tracking time alone, so the table is written more often than in a trial (an upper bound).

    PYTHONPATH=. .venv/bin/python benchmarks/replica_table.py [--replicas 60] [--epochs 60]

Its last line: ``tracking per trial-epoch: before <ms> ms, after <ms> ms (<X.X>x)``.
"""

import argparse
import tempfile
import time

import numpy as np

from tune_losses import tracking
from tune_losses.tracking.ledger import Ledger
from tune_losses.tracking.replicas import ReplicaTable, split_replicas
from tune_losses.tuning.trial import TABLE_SHARE, Cadence

METRICS = ("train_loss", "val_acc", "test_acc", "val_f1", "test_f1", "test_nmi")


def epoch_metrics(epoch: int, k: int, rng) -> dict:
    """What `train` reports for an epoch of k replicas (training/evaluation.py)."""
    out: dict = {"epoch": epoch, "device": "cpu"}
    for metric in METRICS:
        values = rng.random(k)
        out[metric] = float(values.mean())
        out.update({f"{metric}_std": float(values.std(ddof=1)), f"{metric}_min": float(values.min())})
        out.update({f"{metric}_max": float(values.max())})
        out.update({f"{metric}_r{i}": float(v) for i, v in enumerate(values)})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        c = tracking.client(f"sqlite:///{tmp}/mlflow.db")
        exp = tracking.experiment_id(c)
        ledger = Ledger(c, exp, c.create_run(exp).info.run_id)
        before, after = ledger.find_or_create("b", "before", {}).run_id, ledger.find_or_create("a", "after", {}).run_id
        table, writes, spent = ReplicaTable(), Cadence(TABLE_SHARE), {"before": 0.0, "after": 0.0}
        for epoch in range(1, args.epochs + 1):
            metrics = epoch_metrics(epoch, args.replicas, rng)
            start = time.perf_counter()
            ledger.log_epoch(before, metrics, epoch)
            spent["before"] += time.perf_counter() - start
            start = time.perf_counter()
            summary, own = split_replicas(metrics)
            ledger.log_epoch(after, summary, epoch)
            table.add(epoch, own)
            if epoch == args.epochs or writes.due():
                with writes.timed():
                    table.write(ledger, after)
            spent["after"] += time.perf_counter() - start
        logged = {k: len(c.get_run(r).data.metrics) for k, r in (("before", before), ("after", after))}
    ms = {k: 1000 * v / args.epochs for k, v in spent.items()}
    print(f"{args.replicas} replicas x {args.epochs} epochs; metric names per run: {logged}")
    print(
        f"tracking per trial-epoch: before {ms['before']:.1f} ms, after {ms['after']:.1f} ms "
        f"({ms['before'] / ms['after']:.1f}x)"
    )


if __name__ == "__main__":
    main()
