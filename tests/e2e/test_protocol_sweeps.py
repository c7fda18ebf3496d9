"""The protocols through real sweeps: what selects, what is reported, and what the summary, report and best say."""

import subprocess
import sys

import pytest

from tune_losses import tracking
from tune_losses.reports.best import best_trial, export
from tune_losses.reports.protocol import count_trials, describe_trials, trial_outcomes

from helpers import write_space

BASE = {
    "name": "p",
    "train": {"dataset": {"name": "digits"}, "model": {"name": "mlp"}, "epochs": 2},
    "params": {"loss.a": {"grid": [5.0, 15.0]}},
}


@pytest.mark.slow
def test_a_paper_protocol_sweep_selects_nothing_and_says_so(tmp_path, ray_local, capsys):
    from tune_losses.tuning.runner import print_summary, run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_space(
        tmp_path / "paper.yaml",
        name="paper_e2e",
        protocol="paper",
        search={"metric": "test_acc", "scheduler": {"name": "fifo"}},
    )
    result = run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0)
    assert result.best_config is None and result.report is not None
    c = tracking.client(uri)
    parent = c.get_run(result.parent_run_id)
    assert "best_config" not in parent.data.tags
    p = parent.data.params
    assert (p["protocol"], p["selection.metric"], p["select_on_test"]) == ("paper", "none", "false")
    assert (p["data.n_train"], p["data.n_val"], p["data.n_test"]) == ("898", "0", "899")
    for run in tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id):
        assert "test_acc" in run.data.metrics and not [k for k in run.data.metrics if k.startswith("val_")]
    md = result.report.markdown
    assert "Protocol `paper`" in md and "- Selection: none." in md and "**Best config: none**" in md
    assert "training 898 images, validation 0 images, test 899 images" in md
    assert "per class half train / half test" in md
    print_summary(result, "test_acc")
    out = capsys.readouterr().out
    assert "Selection: none." in out and "Best test_acc" not in out
    with pytest.raises(ValueError, match="selects no config"):
        best_trial("paper_e2e", tracking_uri=uri)


@pytest.mark.slow
def test_summary_report_and_best_state_the_same_facts(tmp_path, ray_local, capsys):
    """ASHA stops the weaker trials: the summary, the report and the tags give the same counts, and each says
    which split chose the best config."""
    from tune_losses.tuning.runner import print_summary, run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_space(
        tmp_path / "asha.yaml",
        name="asha_facts",
        replace=("params",),
        study="dal_a",
        train={"epochs": 3, "repeats": 1},
        params={"optimizer.lr": {"grid": [0.1, 0.05, 0.0001]}},
        search={
            "max_concurrent": 1,
            "scheduler": {"name": "asha", "max_t": 3, "grace_period": 1, "reduction_factor": 2},
        },
    )
    result = run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0)
    c = tracking.client(uri)
    runs = tracking.trial_runs(c, result.parent_run_id, tracking.experiment_id(c))
    counts = count_trials(trial_outcomes(runs))
    assert counts["stopped_early"] >= 1 and counts["completed"] >= 1 and counts["trials"] == 3
    assert {k: result.summary[k] for k in counts} == counts
    sentence = describe_trials(counts)
    assert sentence in result.report.markdown
    print_summary(result, "val_acc")
    out = capsys.readouterr().out
    assert sentence in out
    stated = "Selection: the best config is chosen on `val_acc` (validation split, 360 images)"
    assert stated in result.report.markdown and stated in out
    assert "`test_acc` per value on the test split (359 images)" in result.report.markdown
    best = best_trial("asha_facts", tracking_uri=uri)
    assert best["metric"] == "val_acc" and best["split"] == "validation"
    assert stated in export(best, tmp_path / "best.yaml").read_text()


@pytest.mark.slow
def test_selection_on_test_data_is_recorded_and_printed_with_its_reason(tmp_path, ray_local):
    from tune_losses.tuning.runner import run_sweep

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    reason = "reproduces the paper's own choice of a on its test split"
    path = write_space(
        tmp_path / "opt.yaml",
        name="opt_in",
        train={"epochs": 1, "repeats": 1},
        search={"metric": "test_acc", "select_on_test": True, "select_on_test_reason": reason},
    )
    result = run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0)
    params = tracking.client(uri).get_run(result.parent_run_id).data.params
    assert (params["select_on_test"], params["select_on_test_reason"]) == ("true", reason)
    assert params["selection.split"] == "test" and result.best_config is not None
    assert f"by explicit opt-in (`search.select_on_test`): {reason}" in result.report.markdown
    proc = subprocess.run(
        [sys.executable, "-m", "tune_losses.cli", "best", "opt_in", "--tracking-uri", uri],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and reason in proc.stdout and "(test split, 359 images)" in proc.stdout
