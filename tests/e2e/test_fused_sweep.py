"""Fused trials through real sweeps (issue 22): a grid of loss parameters trained as vectorised groups records,
per config and per seed, what the same sweep unfused records; a killed fused sweep resumes every member once."""

import math

import pandas as pd
import pytest

from tune_losses import tracking
from tune_losses.tracking.ledger import audit
from tune_losses.tracking.replicas import read_table
from tune_losses.tuning.runner import run_sweep

from helpers import write_space

EPOCHS = 3
GRID = [3.0, 5.0, 10.0, 20.0]


def _space(tmp_path, name, fuse):
    return write_space(
        tmp_path / f"{name}.yaml",
        name=name,
        train={"epochs": EPOCHS, "repeats": 2},
        params={"loss.a": {"grid": GRID}},
        search={"fuse": fuse, "max_concurrent": 2},
        baseline="ce",  # a group of its own when fused (it trains another loss)
    )


def _records(c, result) -> dict:
    """Each trial's run by its swept value: params, metric histories (timings aside), status, artifacts, and its
    replica table (every seed's values per epoch)."""
    exp = c.get_run(result.parent_run_id).info.experiment_id
    out = {}
    for run in tracking.trial_runs(c, result.parent_run_id, exp):
        histories = {
            k: [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, k)]
            for k in run.data.metrics
            if not k.startswith("seconds_")
        }
        params = {k: v for k, v in run.data.params.items()}
        artifacts = {a.path for a in c.list_artifacts(run.info.run_id)}
        table = read_table(c, run.info.run_id)
        value = run.data.params.get("swept.loss.a", "baseline")
        out[value] = (params, histories, run.data.tags["status"], artifacts, table)
    return out


def test_a_fused_sweep_records_what_the_unfused_sweep_records(tmp_path, ray_local):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    storage = str(tmp_path / "ray")
    fused = run_sweep(_space(tmp_path, "fused", "auto"), tracking_uri=uri, storage=storage, verbose=0)
    alone = run_sweep(_space(tmp_path, "alone", "off"), tracking_uri=uri, storage=storage, verbose=0)
    c = tracking.client(uri)
    got, want = _records(c, fused), _records(c, alone)
    assert sorted(got) == sorted(want) == sorted([*(str(a) for a in GRID), "baseline"])
    for value, (params, histories, status, artifacts, table) in want.items():
        f_params, f_histories, f_status, f_artifacts, f_table = got[value]
        assert f_params == params and f_status == status == "completed"
        assert "confusion_matrix.json" in f_artifacts and f_artifacts >= artifacts - {"learning_curves.png"}
        assert f_histories.keys() == histories.keys()
        for key, steps in histories.items():  # every epoch once, from 1, each value to rounding
            assert [s for s, _ in f_histories[key]] == [s for s, _ in steps] == list(range(1, len(steps) + 1))
            for (_, a), (_, b) in zip(f_histories[key], steps):
                assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (value, key, a, b)
        # per seed: the replica tables, every (epoch, replica) once, each value to rounding
        want_cells = [(e, r) for e in range(1, EPOCHS + 1) for r in range(2)]
        assert (
            list(zip(f_table["epoch"], f_table["replica"])) == list(zip(table["epoch"], table["replica"])) == want_cells
        )
        assert list(f_table.columns) == list(table.columns)
        pd.testing.assert_frame_equal(f_table, table, rtol=1e-4, atol=1e-6)
    for result in (fused, alone):
        exp = c.get_run(result.parent_run_id).info.experiment_id
        assert audit(c, result.parent_run_id, exp, EPOCHS) == []
    assert fused.best_config == alone.best_config
    assert fused.summary["completed"] == alone.summary["completed"] == len(GRID) + 1
    assert fused.summary["epochs_run"] == alone.summary["epochs_run"] == (len(GRID) + 1) * EPOCHS


@pytest.mark.parametrize("fuse, scheduler", [("auto", "asha")])
def test_a_sweep_that_cannot_fuse_runs_as_before(tmp_path, ray_local, capsys, fuse, scheduler):
    """ASHA stops configs one by one: the sweep runs a trial per config, and the header says why."""
    path = _space(tmp_path, "asha", fuse)
    text = path.read_text().replace("name: fifo", f"name: {scheduler}")
    path.write_text(text)
    result = run_sweep(
        path,
        tracking_uri=f"sqlite:///{tmp_path}/m.db",
        storage=str(tmp_path / "ray"),
        verbose=0,
        progress=True,
        make_report=False,
    )
    out = capsys.readouterr().out
    assert "Not fused: scheduler asha stops configs one by one" in out
    assert result.summary["trials"] == len(GRID) + 1  # and the baseline
