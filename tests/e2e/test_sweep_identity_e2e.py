"""One sweep, one identity, end to end (issue 21): a new sweep after the store was deleted."""

import pytest

from tune_losses import tracking
from tune_losses.tracking.ledger import audit

from helpers import write_space


@pytest.mark.slow
def test_a_new_sweep_after_the_store_was_deleted_trains_every_epoch_once(tmp_path, ray_local):
    """The scenario of issue 21: the same name and --storage, a new tracking store. The second sweep trains and
    records every trial's epochs once, from 1 (before, it resumed the old checkpoints and logged nothing)."""
    from tune_losses.tuning.runner import run_sweep

    path = write_space(tmp_path / "s.yaml", name="again", train={"epochs": 2})
    storage = str(tmp_path / "ray")
    run_sweep(path, tracking_uri=f"sqlite:///{tmp_path}/one.db", storage=storage, verbose=0, make_report=False)
    uri = f"sqlite:///{tmp_path}/two.db"
    result = run_sweep(path, tracking_uri=uri, storage=storage, verbose=0, make_report=False)
    c = tracking.client(uri)
    exp = c.get_run(result.parent_run_id).info.experiment_id
    assert audit(c, result.parent_run_id, exp, 2) == []
    for run in tracking.trial_runs(c, result.parent_run_id, exp):
        assert [m.step for m in c.get_metric_history(run.info.run_id, "epoch")] == [1, 2]
    assert result.summary["completed"] == 2
