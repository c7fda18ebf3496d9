"""One sweep, one identity (issue 21): everything a sweep writes is under its parent run id, a resume is the same
sweep, one trial has one record, and the parent run ends once whichever way the sweep ends. Each test calls a
phase of tuning/sweep.py (or the CLI), as a user's command would."""

import json
import time

import pytest
from mlflow import MlflowClient

from tune_losses import tracking
from tune_losses.cli import main
from tune_losses.spaces import SpaceError, load_space
from tune_losses.tracking import record
from tune_losses.tracking.ledger import Ledger, Superseded
from tune_losses.tracking.parent import ParentRun

from helpers import sweep_phases, write_space


def _claimed(tmp_path, name="s", **over):
    """A new sweep of ``name`` claimed (its parent created and recorded), then left as a kill would leave it."""
    path = write_space(tmp_path / f"{name}.yaml", name=name, **over)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = sweep_phases(path, uri, tmp_path / "ray")
    sweep.claim()
    sweep.lock.release()  # the driver is gone
    return path, uri, sweep


@pytest.mark.parametrize(
    "grid, twice",
    [([5.0, 5, 10.0], "5"), (["1e-5", 0.00001], "1e-05"), ([[1.0, 2.0], [3.0, 4.0], [1, 2.0]], "[1, 2.0]")],
)
def test_a_value_given_twice_is_refused_before_anything_starts(tmp_path, capsys, grid, twice):
    """5 and 5.0 (or 1e-5 and 0.00001, or a pair twice) would be two trials writing one run and one checkpoint."""
    pairs = isinstance(grid[0], list)
    params = {"loss.beta,loss.gamma" if pairs else "loss.a": {"grid": grid}}
    train = {"loss": {"name": "beta_gamma"}} if pairs else {}
    path = write_space(tmp_path / "s.yaml", params=params, train=train, replace=("params",))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["sweep", str(path), "--tracking-uri", uri, "--storage", str(tmp_path / "ray")])
    err = capsys.readouterr().err
    assert code == 2 and f"grid lists the value {twice}" in err and "each value once" in err, err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray").exists()


def test_a_resume_with_another_grid_is_refused_naming_the_field(tmp_path):
    """Grid [5, 15] run, then the file edited to [5, 12] and resumed: an error naming the field, nothing written."""
    from tune_losses.tuning.resume import check_resumable

    path, uri, sweep = _claimed(tmp_path)
    c = sweep.client
    before = c.get_run(sweep.parent.run_id)
    write_space(path, name="s", params={"loss.a": {"grid": [5.0, 12.0]}})
    changed, _, _ = load_space(path)
    with pytest.raises(SpaceError, match=r"params\.loss\.a\.grid: \[5\.0, 15\.0\] in the sweep, \[5\.0, 12\.0\] now"):
        check_resumable(c, before, changed, uri, str(path))
    write_space(path, name="s", search={"max_failures": 5}, resources={"cpu": 2})  # what a resume may change
    check_resumable(c, before, load_space(path)[0], uri, str(path))
    after = c.get_run(sweep.parent.run_id).data
    assert after.params == before.data.params and after.tags == before.data.tags


def test_a_new_sweep_of_the_same_name_never_reads_an_older_sweeps_checkpoints(tmp_path):
    """Same name and storage, a new tracking store (runs/mlflow.db deleted to start over): the new sweep's
    checkpoints live under its own parent run id, out of reach of the old one's."""
    (tmp_path / "a").mkdir()
    _, _, old = _claimed(tmp_path / "a")
    (tmp_path / "b").mkdir()
    path = write_space(tmp_path / "b" / "s.yaml", name="s")
    new = sweep_phases(path, f"sqlite:///{tmp_path}/b/mlflow.db", tmp_path / "a" / "ray")
    new.claim()
    new.lock.release()
    assert old.checkpoints != new.checkpoints
    assert new.checkpoints == f"{tmp_path}/a/ray/s/{new.parent.run_id}/checkpoints"
    tags = new.client.get_run(new.parent.run_id).data.tags
    assert tags[record.CHECKPOINTS] == new.checkpoints


def test_an_older_sweeps_checkpoints_move_under_its_parent_run_on_resume(tmp_path):
    """A sweep of an older version kept its checkpoints at <storage>/<name>/checkpoints: a resume moves them
    under its parent run id (one rename) and records where."""
    path, uri, sweep = _claimed(tmp_path)
    c = sweep.client
    c.delete_tag(sweep.parent.run_id, record.CHECKPOINTS)  # as an older version left it
    c.delete_tag(sweep.parent.run_id, record.LAYOUT)
    legacy = tmp_path / "ray" / "s" / "checkpoints" / "abc"
    legacy.mkdir(parents=True)
    (legacy / "state.pt").write_bytes(b"x")
    resumed = sweep_phases(path, uri, tmp_path / "ray", resume=True)
    resumed.claim()
    resumed.lock.release()
    moved = tmp_path / "ray" / "s" / sweep.parent.run_id / "checkpoints" / "abc" / "state.pt"
    assert moved.read_bytes() == b"x" and not legacy.exists()
    assert c.get_run(sweep.parent.run_id).data.tags[record.CHECKPOINTS] == str(moved.parent.parent)


def test_an_optuna_run_killed_before_its_params_is_dropped_on_resume(tmp_path):
    """A trial killed between creating its run and logging its params: the resume deletes that run (it holds no
    epoch) and its trial starts again, instead of failing on the missing params after the claim."""
    search = {"searcher": "optuna", "num_samples": 3, "scheduler": {"name": "fifo"}}
    path, uri, sweep = _claimed(tmp_path, params={"loss.a": {"uniform": [5.0, 20.0]}}, search=search)
    c = sweep.client
    exp = sweep.parent.client.get_run(sweep.parent.run_id).info.experiment_id
    ledger = Ledger(c, exp, sweep.parent.run_id)
    orphan = ledger.find_or_create("k1", "dal a=?", {record.ROLE: "trial"})
    sweep.parent.end("interrupted")
    resumed = sweep_phases(path, uri, tmp_path / "ray", resume=True)
    resumed.claim()
    resumed.lock.release()
    assert resumed.todo == [] and resumed.done == []
    assert c.get_run(orphan.run_id).info.lifecycle_stage == "deleted"


def test_a_superseded_attempt_stops_before_it_writes_again(tmp_path):
    """Two live attempts of one trial (a retry whose first process still runs): the later takes the run, and the
    earlier one's next check raises before it logs or checkpoints; the driver records nothing of that error."""
    from tune_losses.tracking import outcome

    _, _, sweep = _claimed(tmp_path)
    exp = sweep.client.get_run(sweep.parent.run_id).info.experiment_id
    ledger = Ledger(sweep.client, exp, sweep.parent.run_id)
    run_id = ledger.find_or_create("k", "t", {record.ROLE: "trial"}).run_id
    first = ledger.take_run(run_id, {record.STATUS: "running"})
    ledger.check_owner(run_id, first)
    second = ledger.take_run(run_id, {record.STATUS: "running"})
    with pytest.raises(Superseded, match=outcome.SUPERSEDED):
        ledger.check_owner(run_id, first)
    ledger.check_owner(run_id, second)


def test_deleting_a_tag_twice_is_no_error(tmp_path):
    """A delete retried after its first try reached the store finds the tag gone: that is success."""
    _, _, sweep = _claimed(tmp_path)
    exp = sweep.client.get_run(sweep.parent.run_id).info.experiment_id
    ledger = Ledger(sweep.client, exp, sweep.parent.run_id)
    run_id = ledger.find_or_create("k", "t", {record.ROLE: "trial", record.REASON: "x"}).run_id
    ledger.delete_tag(run_id, record.REASON)
    ledger.delete_tag(run_id, record.REASON)
    assert record.REASON not in sweep.client.get_run(run_id).data.tags


@pytest.mark.parametrize("where", ["recording the space", "after the claim"])
def test_ctrl_c_at_any_moment_ends_the_parent_interrupted(tmp_path, monkeypatch, where):
    """A Ctrl-C while the claim records the space, or between the claim and the fit: the parent run ends once,
    KILLED with ended_by interrupted (resumable), never left RUNNING."""
    path = write_space(tmp_path / "s.yaml", name="s")
    sweep = sweep_phases(path, f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "ray")
    try:
        if where == "recording the space":

            def ctrl_c(self, *args, **kwargs):
                raise KeyboardInterrupt

            monkeypatch.setattr(MlflowClient, "log_artifact", ctrl_c)
            with pytest.raises(KeyboardInterrupt):
                sweep.claim()
            monkeypatch.undo()
        else:
            sweep.claim()
            sweep.abandon(KeyboardInterrupt())
            sweep.abandon(KeyboardInterrupt())  # once: a second end writes nothing
    finally:
        sweep.lock.release()
    parent = sweep.client.get_run(sweep.parent.run_id)
    assert parent.info.status == "KILLED" and parent.data.tags[record.ENDED_BY] == "interrupted"
    assert float(parent.data.tags[record.SECONDS_RUN]) >= 0


def test_the_time_budget_and_the_plateau_count_the_sweeps_whole_life(tmp_path):
    """A resumed sweep's budgets go on from where its earlier drivers left them: the time it ran is recorded on
    the parent run and read back by the resume; the plateau counts the trials it finished before."""
    from tune_losses.tracking.ledger import TrialRecord
    from tune_losses.tuning.budgets import Budget

    path, uri, sweep = _claimed(tmp_path, search={"time_budget_s": 100, "plateau": {"patience": 2}})
    c = sweep.client
    c.set_tag(sweep.parent.run_id, record.SECONDS_RUN, "70.0")
    resumed = ParentRun(c, sweep.parent.run_id, "s")
    resumed.resume(c.get_run(sweep.parent.run_id), "")
    assert 70.0 <= resumed.seconds_run() < 75.0
    space = load_space(path)[0]
    finished = [
        TrialRecord("r1", "a", "FINISHED", metrics={"val_acc": 0.8}, end_time=1),
        TrialRecord("r2", "b", "FINISHED", metrics={"val_acc": 0.7}, end_time=2),
        TrialRecord("r3", "c", "FINISHED", metrics={"val_acc": 0.6}, end_time=3),
    ]
    budget = Budget(space.search, seconds_before=resumed.seconds_run(), finished=finished)
    assert budget.plateaued() and budget.best == 0.8
    assert 25.0 <= budget.time_left_s <= 30.0
    resumed.end("completed")
    beat = resumed.beat_tags()
    assert float(beat[record.SECONDS_RUN]) >= 70.0 and abs(float(beat[record.HEARTBEAT]) - time.time()) < 5


def test_the_space_recorded_on_the_parent_is_json(tmp_path):
    """The resolved space a resume compares with is the space as JSON, and its hash a param of the parent."""
    _, _, sweep = _claimed(tmp_path)
    params = sweep.client.get_run(sweep.parent.run_id).data.params
    assert len(params[record.SPACE_SHA]) == 16
    local = sweep.client.download_artifacts(sweep.parent.run_id, "space/resolved_space.json", str(tmp_path))
    assert json.loads(open(local).read())["params"]["loss.a"]["grid"] == [5.0, 15.0]


def test_status_of_a_stopped_halving_sweep_says_it_cannot_be_resumed(tmp_path):
    """A halving sweep's rung decisions are its driver's only: its status offers no --resume (which would be
    refused) but says what to do, and its parent records no resume command."""
    from tune_losses.tracking.sweeps import format_status, sweep_status

    halving = {"scheduler": {"name": "halving", "max_t": 3, "grace_period": 1}}
    _, uri, sweep = _claimed(tmp_path, name="h", search=halving)
    sweep.parent.end("interrupted")
    text = format_status(sweep_status("h", uri))
    assert "cannot be resumed" in text and "another --name" in text and "--resume`" not in text, text
    assert sweep.client.get_run(sweep.parent.run_id).data.tags[record.RESUME_COMMAND] == ""


def test_a_sweep_killed_before_its_checkpoints_tag_never_takes_an_older_sweeps(tmp_path):
    """Killed between its parent's creation and the tag that says where its checkpoints live: its layout tag,
    written with the run, tells the resume that they live under its own id, so an older sweep's
    <storage>/<name>/checkpoints is left alone."""
    from helpers import cut_after_creation

    path, uri, c = cut_after_creation(tmp_path)
    parent = tracking.find_sweep(c, "cut")
    assert record.CHECKPOINTS not in parent.data.tags and parent.data.tags[record.LAYOUT] == record.LAYOUT_VERSION
    older = tmp_path / "ray" / "cut" / "checkpoints" / "k"
    older.mkdir(parents=True)
    resumed = sweep_phases(path, uri, tmp_path / "ray", resume=True)
    resumed.claim()
    resumed.lock.release()
    assert older.is_dir() and resumed.checkpoints == f"{tmp_path}/ray/cut/{parent.info.run_id}/checkpoints"


def test_an_end_cut_short_is_finished_by_the_next_call(tmp_path, monkeypatch):
    """A Ctrl-C (or a store down past its bound) in the middle of ending the parent: a later call (the sweep's
    abandon) finishes it, instead of leaving the run RUNNING."""
    _, _, sweep = _claimed(tmp_path)
    real = MlflowClient.set_terminated

    def cut(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(MlflowClient, "set_terminated", cut)
    with pytest.raises(KeyboardInterrupt):
        sweep.parent.end("completed")
    monkeypatch.setattr(MlflowClient, "set_terminated", real)
    assert sweep.client.get_run(sweep.parent.run_id).info.status == "RUNNING"
    sweep.abandon(KeyboardInterrupt())
    parent = sweep.client.get_run(sweep.parent.run_id)
    assert parent.info.status == "KILLED" and parent.data.tags[record.ENDED_BY] == "interrupted"


def test_an_error_ends_the_parent_with_its_reason_and_it_stays_resumable(tmp_path):
    _, _, sweep = _claimed(tmp_path)
    sweep.abandon(RuntimeError("the store refused a write"))
    parent = sweep.client.get_run(sweep.parent.run_id)
    assert parent.info.status == "KILLED" and parent.data.tags[record.ENDED_BY] == "error"
    assert "RuntimeError: the store refused a write" in parent.data.tags[record.REASON]


def test_a_space_recorded_by_an_older_schema_resumes_when_its_shared_fields_agree(tmp_path):
    """A sweep of a version before space_sha256 recorded a resolved space without the fields added since: those
    are not changes; a field both have that differs still is."""
    from tune_losses.tuning.resume import check_resumable

    path, uri, sweep = _claimed(tmp_path)
    c = sweep.client
    run_id = sweep.parent.run_id
    doc = json.loads(open(c.download_artifacts(run_id, "space/resolved_space.json", str(tmp_path))).read())
    del doc["search"]["plateau"]  # a field the older schema did not have
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "resolved_space.json").write_text(json.dumps(doc))
    c.log_artifact(run_id, str(tmp_path / "old" / "resolved_space.json"), "space")
    c.delete_tag(run_id, record.LAYOUT)
    old = c.get_run(run_id)
    old.data.params.pop(record.SPACE_SHA)  # as that version recorded it (MLflow cannot delete a param)
    check_resumable(c, old, load_space(path)[0], uri, str(path))
    write_space(path, name="s", train={"epochs": 4})
    with pytest.raises(SpaceError, match="epochs"):
        check_resumable(c, old, load_space(path)[0], uri, str(path))
