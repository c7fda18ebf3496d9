"""Every replica's own per-epoch values of a trial: one table artifact of its run (``replicas.parquet``).

A trial of K replicas used to log each replica's value of each summary metric as a metric of its own
(``test_acc_r<i>``): ~260 metrics per epoch at 60 replicas, the largest part of a sweep's tracking time
(benchmarks/paper_protocol.py). Its run now carries the mean, std, min and max per epoch as metrics, and every
replica's values in one table, a row per (epoch, replica), rewritten whole (atomically: :meth:`Ledger.write_artifact`)
as the trial goes (tuning/trial.py says when). A trial that resumes reads its table back first, and an epoch the
table holds is never added again, so each epoch is in it once.

Readers (reports, ``best``) get the same values from a run recorded either way: the table, or an older run's
``<metric>_r<i>`` metrics (:func:`final_values`, :func:`history`).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from . import record

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a trial reads its table back quietly

#: a replica's own value in the metrics ``train`` reports (and in older runs' metrics): ``test_acc_r3``
REPLICA_KEY = re.compile(r"^(?P<metric>.+)_r(?P<replica>\d+)$")
KEYS = ("epoch", "replica")


def split_replicas(metrics: dict) -> tuple[dict, dict[str, list[float]]]:
    """(``metrics`` without the replicas' own values, ``{metric: [replica 0's value, 1's, ...]}``)."""
    rest: dict = {}
    own: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        found = REPLICA_KEY.match(key)
        if found and isinstance(value, (int, float)) and not isinstance(value, bool):
            own.setdefault(found["metric"], {})[int(found["replica"])] = float(value)
        else:
            rest[key] = value
    return rest, {m: [v[i] for i in sorted(v)] for m, v in own.items()}


class ReplicaTable:
    """One trial's table in memory: each epoch's (K, metrics) values, and which epochs are not written yet."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.epochs: dict[int, np.ndarray] = {}  # epoch -> (K, len(columns))
        self.unwritten = False

    def __len__(self) -> int:
        return len(self.epochs)

    def add(self, epoch: int, values: dict[str, list[float]]) -> None:
        """An epoch's values, unless the table holds that epoch already (an epoch re-run after a resume)."""
        if not values or epoch in self.epochs:
            return
        if not self.columns:
            self.columns = sorted(values)
        self.epochs[epoch] = np.array([values[c] for c in self.columns], dtype=np.float64).T
        self.unwritten = True

    def frame(self) -> pd.DataFrame:
        """A row per (epoch, replica), the metrics as columns, in epoch order."""
        if not self.epochs:
            return pd.DataFrame(columns=[*KEYS, *self.columns])
        order = sorted(self.epochs)
        k = self.epochs[order[0]].shape[0]
        frame = pd.DataFrame(np.concatenate([self.epochs[e] for e in order]), columns=self.columns)
        frame.insert(0, "replica", np.tile(np.arange(k), len(order)))
        frame.insert(0, "epoch", np.repeat(order, k))
        return frame

    def load(self, frame: pd.DataFrame) -> None:
        """The table a run holds (a resumed trial goes on from it)."""
        self.columns = [c for c in frame.columns if c not in KEYS]
        for epoch, rows in frame.groupby("epoch", sort=True):
            self.epochs[int(epoch)] = rows.sort_values("replica")[self.columns].to_numpy(np.float64)
        self.unwritten = False

    def write(self, ledger, run_id: str) -> None:
        """The whole table to the run's artifact, replacing the one there (atomically where the store is local)."""
        frame = self.frame()
        ledger.write_artifact(run_id, record.REPLICAS_ARTIFACT, lambda path: frame.to_parquet(path, index=False))
        self.unwritten = False

    def upload(self, client, run_id: str) -> None:
        """The whole table to a run that is written once (``tune-losses train``: no resume, no ledger)."""
        with tempfile.TemporaryDirectory() as tmp:
            self.frame().to_parquet(Path(tmp) / record.REPLICAS_ARTIFACT, index=False)
            client.log_artifact(run_id, str(Path(tmp) / record.REPLICAS_ARTIFACT))
        self.unwritten = False


def read_table(client, run_id: str) -> pd.DataFrame | None:
    """The run's table, or None when it has none (one replica, or recorded before the table existed)."""
    names = {a.path for a in client.list_artifacts(run_id)}
    if record.REPLICAS_ARTIFACT not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_parquet(Path(client.download_artifacts(run_id, record.REPLICAS_ARTIFACT, tmp)))


def recorded_table(client, run_id: str, metrics: dict) -> pd.DataFrame | None:
    """What the run holds of its replicas' values as a table: its table, or for a run an older version started
    (``<metric>_r<i>`` metrics, named in ``metrics``) the same rows from those metrics' histories, so that a
    resumed older trial's table holds its earlier epochs too."""
    table = read_table(client, run_id)
    if table is not None:
        return table
    keys = [k for k in metrics if REPLICA_KEY.match(k)]
    if not keys:
        return None
    cells: dict[tuple[int, int], dict[str, float]] = {}
    for key in keys:
        found = REPLICA_KEY.match(key)
        assert found is not None
        for h in client.get_metric_history(run_id, key):
            cells.setdefault((h.step, int(found["replica"])), {})[found["metric"]] = h.value
    rows = [{"epoch": e, "replica": r, **values} for (e, r), values in sorted(cells.items())]
    return pd.DataFrame(rows)


def final_values(client, run) -> dict[int, dict[str, float]] | None:
    """Each replica's values at the run's last recorded epoch, ``{replica: {metric: value}}``; None for a run of
    one replica. From the table, or an older run's ``<metric>_r<i>`` metrics (their latest values)."""
    table = read_table(client, run.info.run_id)
    if table is None:
        legacy: dict[int, dict[str, float]] = {}
        for key, value in run.data.metrics.items():
            if found := REPLICA_KEY.match(key):
                legacy.setdefault(int(found["replica"]), {})[found["metric"]] = value
        return legacy or None
    last = int(run.data.metrics.get("epoch", table["epoch"].max()))
    if last not in set(table["epoch"]):
        # a trial stopped by a budget between two writes of its table: its last rows are those of an earlier epoch
        log.warning(
            "run %s: %s holds epochs up to %d, not its last epoch %d: reading epoch %d",
            run.info.run_id,
            record.REPLICAS_ARTIFACT,
            table["epoch"].max(),
            last,
            table["epoch"].max(),
        )
        last = int(table["epoch"].max())
    rows = table[table["epoch"] == last].drop(columns="epoch").set_index("replica")
    return {int(r): {k: float(v) for k, v in values.items()} for r, values in rows.iterrows()}


def history(client, run_id: str, metric: str, replicas: int) -> dict[int, dict[int, float]]:
    """``{replica: {epoch: value}}`` of one metric: from the table, an older run's ``<metric>_r<i>`` histories, or
    (one replica) the metric's own history as replica 0's."""
    table = read_table(client, run_id)
    if table is not None and metric in table:
        return {
            int(r): dict(zip(rows["epoch"].astype(int), rows[metric].astype(float)))
            for r, rows in table.groupby("replica")
        }
    keys = {r: f"{metric}_r{r}" if replicas > 1 else metric for r in range(replicas)}
    return {r: {h.step: h.value for h in client.get_metric_history(run_id, k)} for r, k in keys.items()}
