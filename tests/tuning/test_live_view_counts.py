"""The live view (tuning/progress.py) counts what the sweep's header counts: configs. A fused group is one Ray trial
training several configs; its running, finished and epoch counts are its members', and its end line says that the
value shown is its best member's."""

import io
import types

from tune_losses.spaces import load_space
from tune_losses.tuning.progress import SweepProgress


def trial(tid: str, config: dict, last: dict | None = None):
    return types.SimpleNamespace(trial_id=tid, config=config, last_result=last or {}, status="RUNNING")


def test_a_fused_group_counts_as_its_members():
    space, _, _ = load_space("quickstart", {"train.epochs": 2})
    out = io.StringIO()
    view = SweepProgress(space, bar=False, out=out, configs=5)
    view.setup(total_num_samples=2)  # Ray's count: a group of 4 and one trial
    group = trial("g", {"group": [{"params": {"loss.a": a}} for a in (5.0, 10.0, 15.0, 20.0)]})
    alone = trial("t", {"params": {"loss.a": 30.0}})
    for t in (group, alone):
        view.on_trial_start(0, [], t)
    assert view.status().startswith("trials: 5 running, 0 finished") and view.status().endswith("(of 5)")
    view.on_trial_result(0, [], group, {"epoch": 1, "val_acc": 0.5})
    assert view.done == 4 and view.total_epochs == 10
    view.on_trial_result(0, [], group, {"epoch": 2, "val_acc": 0.8})
    group.last_result = {"epoch": 2, "val_acc": 0.8, "done": True}
    view.on_trial_complete(0, [], group)
    assert view.status().startswith("trials: 1 running, 4 finished")
    last = out.getvalue().splitlines()[-1]
    assert last == "dal a=5,10,15,20 (fused, 4): finished 2 epochs, best of the 4: val_acc 0.8"
    pending = trial("p", {"group": [{"params": {"loss.a": 1.0}}, {"params": {"loss.a": 2.0}}]})
    pending.status = "PENDING"
    view.on_step_end(0, [pending, alone])
    assert view.status().startswith("trials: 2 pending, 1 running")
    view.on_experiment_end([])


def test_without_fused_groups_the_counts_are_rays():
    space, _, _ = load_space("quickstart", {"train.epochs": 2})
    view = SweepProgress(space, bar=False, out=io.StringIO())
    view.setup(total_num_samples=3)
    view.on_trial_start(0, [], trial("t", {"params": {"loss.a": 5.0}}))
    assert view.status().startswith("trials: 1 running, 0 finished") and "(of 3)" in view.status()
    assert view.total_epochs == 6
    view.on_experiment_end([])


def test_a_fused_groups_diverged_members_count_as_diverged():
    space, _, _ = load_space("quickstart", {"train.epochs": 2})
    out = io.StringIO()
    view = SweepProgress(space, bar=False, out=out, configs=4)
    view.setup(total_num_samples=1)
    group = trial("g", {"group": [{"params": {"loss.a": a}} for a in (5.0, 10.0, 15.0, 20.0)]})
    view.on_trial_start(0, [], group)
    result = {"epoch": 2, "val_acc": 0.8, "fused": 4, "members_diverged": 1}  # what fused_trial.py reports
    view.on_trial_result(0, [], group, result)
    group.last_result = {**result, "done": True}
    view.on_trial_complete(0, [], group)
    assert view.status().startswith("trials: 0 running, 3 finished, 0 stopped by ASHA, 1 diverged, 0 failed (of 4)")
    assert out.getvalue().splitlines()[-1].endswith("best of the 4: val_acc 0.8, 1 diverged")
    view.on_experiment_end([])
