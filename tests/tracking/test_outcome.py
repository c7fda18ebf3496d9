"""How a trial ended: the one rule (tracking/outcome.py) that the callback, the closing pass, the summary and the
live view share."""

import pytest

from tune_losses.tracking import outcome

EPOCHS = 5


@pytest.mark.parametrize(
    "last, kw, status, stopped_by, written",
    [
        ({"epoch": 5, "val_acc": 0.9}, {}, "completed", None, "FINISHED"),
        ({"epoch": 2}, {}, "completed", "asha", "FINISHED"),
        ({"epoch": 2}, {"scheduler": "halving"}, "completed", "halving", "FINISHED"),
        ({"epoch": 2}, {"scheduler": "fifo"}, "completed", "stopper", "FINISHED"),
        ({"epoch": 2}, {"budget_fired": "time_budget"}, "completed", "time_budget", "FINISHED"),
        ({"epoch": 3, "trial_status": "diverged", "reason": "nan"}, {}, "diverged", None, "FINISHED"),
        ({"epoch": 3}, {"error": "ValueError: boom"}, "error", None, "FAILED"),
        ({"epoch": 3}, {"interrupted": True}, "interrupted", None, None),
        ({}, {}, "not_started", None, None),
        ({"epoch": 3, "trial_status": "superseded"}, {}, "superseded", None, None),
        ({"epoch": 3}, {"error": f"Superseded: run r: {outcome.SUPERSEDED}"}, "superseded", None, None),
    ],
)
def test_each_way_a_trial_ends(last, kw, status, stopped_by, written):
    ended = outcome.decide(last, EPOCHS, **kw)
    assert (ended.status, ended.stopped_by) == (status, stopped_by)
    assert (ended.run_status if ended.recorded else None) == written
    if ended.recorded:
        tags = ended.tags()
        assert tags["status"] == status and tags["stopped_early"] == str(stopped_by is not None).lower()
        assert ("stopped_at_epoch" in tags) == (stopped_by is not None)


def test_a_trial_that_a_ctrl_c_stopped_after_its_last_epoch_has_completed():
    """It finished on its own: the Ctrl-C does not make it resumable."""
    assert outcome.decide({"epoch": EPOCHS}, EPOCHS, interrupted=True).status == "completed"


def test_a_joint_paths_param_is_a_name_mlflow_takes(tmp_path):
    """MLflow refuses a comma in a param's name: the joint path loss.beta,loss.gamma is recorded as
    swept.loss.beta/loss.gamma and read back as the path."""
    from tune_losses import tracking
    from tune_losses.tracking.record import swept_param, swept_path

    c = tracking.client(f"sqlite:///{tmp_path}/m.db")
    run = c.create_run(tracking.experiment_id(c))
    name = swept_param("loss.beta,loss.gamma")
    c.log_param(run.info.run_id, name, "[4.0, 10.0]")
    assert swept_path(name) == "loss.beta,loss.gamma" and swept_path(swept_param("loss.a")) == "loss.a"
    assert c.get_run(run.info.run_id).data.params[name] == "[4.0, 10.0]"
