"""Where ASHA may stop a trial (tuning/trial.py asha_rungs): a trial writes its replica table there, so a stopped
trial's table ends where its metrics end."""

from tune_losses.spaces import parse_space
from tune_losses.tuning.trial import asha_rungs


def space(scheduler, epochs=10):
    return parse_space(
        {
            "name": "rungs",
            "train": {
                "dataset": {"name": "digits"},
                "model": {"name": "mlp"},
                "loss": {"name": "dal"},
                "epochs": epochs,
            },
            "params": {"loss.a": {"grid": [3.0, 5.0]}},
            "search": {"searcher": "grid", "scheduler": scheduler},
        },
        "rungs.yaml",
    )


def test_asha_stops_at_its_milestones_and_at_max_t():
    asha = {"name": "asha", "grace_period": 1, "reduction_factor": 3, "max_t": 8}
    assert asha_rungs(space(asha)) == {1, 3, 8}  # 8: every trial stops there, before train.epochs (10)
    assert asha_rungs(space({**asha, "max_t": 9})) == {1, 3, 9}
    assert asha_rungs(space({"name": "fifo"})) == set()
