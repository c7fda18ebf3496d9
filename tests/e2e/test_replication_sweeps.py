"""End to end: real sweeps (Ray, MLflow on SQLite, training on digits) whose reports carry the replication
verdict, the per-class diagnostics, the baseline paired by seed, and the common-epoch table after ASHA."""

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tune_losses.cli import main
from tune_losses.reports.build import build_report
from tune_losses.tracking.replicas import read_table
from tune_losses.tuning.runner import run_sweep

from helpers import write_space

pytestmark = pytest.mark.slow


def _cli_sweep(home: Path, monkeypatch, *extra: str) -> Path:
    """The done-when command (the CLI's main, in this process: its Ray is the tests' shared one), in a home of its
    own; returns the report folder."""
    monkeypatch.setenv("TUNE_LOSSES_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the home's own store, whatever a test left set
    args = ["sweep", "dal_a_table2", "--dataset", "digits", "--set", "train.epochs=3", "--set", "train.repeats=3"]
    assert main([*args, *extra]) == 0
    return home / "reports" / "dal_a_table2"


@pytest.mark.parametrize("baseline", [None, "ce"])
def test_the_table2_sweep_on_digits_writes_the_verdict_and_per_class(tmp_path, monkeypatch, ray_local, baseline):
    out = _cli_sweep(tmp_path, monkeypatch, *(["--set", f"baseline={baseline}"] if baseline else []))
    verdict = pd.read_csv(out / "replication.csv")
    values = verdict[verdict["row"] == "value"]
    assert sorted(values["value"].astype(float)) == [5.0, 8.0, 10.0, 11.0, 13.0, 15.0, 16.0, 20.0]
    assert (values["n"] == 3).all() and values["paper_%"].notna().all()  # LabelMe's Table II beside ours
    assert {"kendall_tau", "best_verdict", "effect_size_%"} <= set(verdict["row"])
    assert verdict["label"].iloc[0].startswith("trend on `digits`, not the paper's LabelMe")
    recall = pd.read_csv(out / "per_class.csv")
    assert list(recall["class"]) == list(range(10))
    page = (out / "report.html").read_text()
    assert "Replication: test_acc vs loss.a" in page and "Per-class recall against" in page
    assert "per_class_gain" in page and "Most confused class pairs" in page
    if baseline:  # each value's gain over CE on the same 3 seeds
        assert (values["gain_pairs"] == 3).all() and "the <code>ce</code> baseline" in page
    _shown_in_chromium(out / "report.html", ["Replication: test_acc vs loss.a", "Most confused class pairs"])


def _shown_in_chromium(page_path: Path, headings: list[str]) -> None:
    """The sections render in headless Chromium with their figures (where Chromium and Playwright are here)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return
    if not Path("/usr/bin/chromium").exists():
        return
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(page_path.as_uri())
        for heading in headings:
            assert page.get_by_role("heading", name=heading).first.is_visible()
        widths = page.eval_on_selector_all("img", "els => els.map(e => [e.alt, e.naturalWidth])")
        assert dict(widths).get("per_class_gain", 0) > 0
        browser.close()


def test_the_baseline_trial_trains_ce_and_pairs_by_seed(tmp_path, ray_local):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_space(tmp_path / "b.yaml", name="base", baseline="ce", study="dal_a")
    result = run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, make_report=False)
    assert result.best_config is not None and "baseline" not in result.best_config  # a reference, not a choice
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs(
        [client.get_experiment_by_name("tune_losses").experiment_id], "tags.`tune_losses.role` = 'trial'"
    )
    base = [r for r in runs if r.data.tags.get("tune_losses.baseline") == "ce"]
    assert len(runs) == 3 and len(base) == 1
    assert base[0].data.params["loss.name"] == "ce" and base[0].data.params["seed"] == runs[0].data.params["seed"]
    report = build_report("base", uri, tmp_path / "report", log=False)
    values = report.tables["replication"]
    values = values[values["row"] == "value"]
    assert (values["gain_pairs"] == 2).all()  # 2 replicas each, paired with the baseline's


def test_an_asha_sweeps_report_adds_the_table_at_a_common_epoch(tmp_path, ray_local):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    path = write_space(
        tmp_path / "asha.yaml",
        name="asha_rep",
        study="dal_a",
        train={"epochs": 4},
        params={"optimizer.lr": {"grid": [0.3, 0.1, 0.03, 1e-4, 3e-5, 1e-5]}},
        search={
            "scheduler": {"name": "asha", "max_t": 4, "grace_period": 1, "reduction_factor": 2},
            "max_concurrent": 1,
        },
    )
    run_sweep(path, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0, make_report=False)
    report = build_report("asha_rep", uri, tmp_path / "report", log=False)
    df = report.trials
    assert df["stopped_early"].any()  # the precondition: ASHA stopped some of the poor learning rates
    common = report.tables["common_epoch_lr_test_acc"]
    epoch = common.attrs["epoch"]
    assert epoch == min(int(e) for e in df.loc[df["stopped_early"], "epochs"])
    client = mlflow.MlflowClient(uri)
    for lr, group in df.groupby("optimizer.lr"):  # each mean is the replicas' mean at that epoch
        tables = {rid: read_table(client, rid).set_index(["epoch", "replica"]) for rid in set(group["run_id"])}
        at = [tables[rid].loc[(epoch, r), "test_acc"] for rid, r in zip(group["run_id"], group["replica"])]
        assert common.set_index("optimizer.lr").loc[lr, "mean_%"] == pytest.approx(100 * sum(at) / len(at))
    main = report.tables["lr_test_acc"].set_index("optimizer.lr")
    assert main["stopped_early"].to_dict() == df.groupby("optimizer.lr")["stopped_early"].any().to_dict()
    assert f"epoch {epoch}, the last every trial of this scan reached" in report.markdown
