"""Reports rebuilt from MLflow: tables against the replica tables and metric histories, figures, significance,
best -> train."""

import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tune_losses import tracking
from tune_losses.reports.best import best_trial, export
from tune_losses.reports.build import build_report
from tune_losses.reports.stats import versus_best
from tune_losses.tracking.replicas import REPLICA_KEY, read_table
from tune_losses.tuning.runner import run_sweep

from helpers import free_port, start_mlflow_server, stop_server

pytestmark = pytest.mark.slow
A_VALUES = [3.0, 8.0, 20.0]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, ray_local):
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp}/mlflow.db"
    space = tmp / "rep.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "name": "report_e2e",
                "study": "dal_a",
                "train": {
                    "dataset": {"name": "digits"},
                    "model": {"name": "mlp"},
                    "loss": {"name": "dal"},
                    "optimizer": {"name": "sgd", "lr": 0.05},
                    "batch_size": 64,
                    "epochs": 3,
                    "repeats": 3,
                },
                "params": {"loss.a": {"grid": A_VALUES}},
                "search": {"searcher": "grid", "scheduler": {"name": "fifo"}, "max_concurrent": 2},
            },
            sort_keys=False,
        )
    )
    result = run_sweep(space, tracking_uri=uri, storage=str(tmp / "ray"), verbose=0)
    return tmp, uri, result


def test_tables_equal_the_numbers_in_the_metric_histories(swept):
    tmp, uri, result = swept
    report = result.report
    assert report is not None and (report.directory / "report.md").is_file()
    table = report.tables["a_test_acc"]
    c = tracking.client(uri)
    parent = tracking.find_sweep(c, "report_e2e")
    for run in tracking.trial_runs(c, parent.info.run_id, parent.info.experiment_id):
        a = float(run.data.params["loss.params.a"])
        replicas = read_table(c, run.info.run_id)  # every replica's values, every epoch once
        assert list(replicas["epoch"]) == [e for e in (1, 2, 3) for _ in range(3)]
        assert not any(REPLICA_KEY.match(k) for k in run.data.metrics)  # not as metrics any more
        for key in ("test_acc", "val_acc", "train_loss"):  # the table agrees with the per-epoch summary metrics
            per_epoch = replicas.groupby("epoch")[key]
            for stat, want in (("", per_epoch.mean()), ("_min", per_epoch.min()), ("_max", per_epoch.max())):
                if stat and key == "train_loss":
                    continue
                got = {h.step: h.value for h in c.get_metric_history(run.info.run_id, key + stat)}
                assert got == pytest.approx(want.to_dict(), rel=1e-6), key + stat
        finals = list(replicas.loc[replicas["epoch"] == 3, "test_acc"])
        row = table[table["loss.a"] == a].iloc[0]
        assert row["mean_%"] == pytest.approx(100 * np.mean(finals))
        assert row["std_%"] == pytest.approx(100 * np.std(finals, ddof=1))
        assert row["min_%"] == pytest.approx(100 * min(finals)) and row["max_%"] == pytest.approx(100 * max(finals))
        assert row["n"] == 3
    assert list(table["loss.a"]) == A_VALUES and table["is_best"].sum() == 1
    # The same table as CSV and Parquet, and every file logged to the parent run under report/.
    assert pd.read_parquet(report.directory / "a_test_acc.parquet").shape == table.shape
    logged = {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/a_test_acc.csv", "report/a_test_acc.parquet"} <= logged
    assert "not the data set of the paper's table" in report.markdown  # digits, not LabelMe: no published column


def test_figures_are_valid_pngs(swept):
    report = swept[2].report
    names = {f.name for f in report.figures}
    assert {"a_test_acc_box.png", "a_test_acc_errorbar.png", "learning_curves_best_worst.png"} <= names
    for f in report.figures:
        with Image.open(f) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 200


def test_significance_flags_on_constructed_data():
    rng = np.random.default_rng(0)
    same = rng.normal(0.8, 0.01, 30)
    table = versus_best({"best": same + 0.0001, "same": same, "far": rng.normal(0.5, 0.01, 30)}).set_index("value")
    assert bool(table.loc["best", "is_best"]) and table.loc["best", "distinguishable"] is None
    assert table.loc["same", "distinguishable"] == False  # noqa: E712  (identical distributions)
    assert table.loc["far", "distinguishable"] == True  # noqa: E712
    assert versus_best({"x": [0.5], "y": [0.6]})["distinguishable"].tolist() == [None, None]  # no repeats


def test_paper_numbers_beside_a_reproduction():
    from tune_losses.reports.tables import with_paper

    ours = pd.DataFrame({"a": [5.0, 15.0], "mean": [0.88, 0.89], "max": [0.9, 0.91], "min": [0.86, 0.87]})
    table, source = with_paper(ours, "a", "dal_a", "LabelMe")
    assert source == "paper: LabelMe"
    assert table["paper_mean_%"].tolist() == [88.8417, 88.8921]
    assert table["diff_mean_%"].iloc[1] == pytest.approx(89 - 88.8921)
    assert with_paper(ours, "a", "dal_a", None)[1] == ""


def test_best_exports_a_config_that_train_runs(swept, tmp_path):
    tmp, uri, result = swept
    best = best_trial("report_e2e", tracking_uri=uri)
    assert best["train"]["loss"]["params"]["a"] in A_VALUES and best["train"]["repeats"] == 3
    path = export(best, tmp_path / "best.yaml")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tune_losses.cli",
            "train",
            str(path),
            "--tracking-uri",
            uri,
            "--set",
            "epochs=2",
            "--set",
            "repeats=1",
            "--register",
            "dal_best",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = tracking.client(uri)
    runs = c.search_runs([tracking.experiment_id(c)], "tags.`tune_losses.role` = 'train'")
    assert len(runs) == 1 and runs[0].data.tags["tune_losses.from_sweep"] == best["sweep_run_id"]
    assert runs[0].data.params["epochs"] == "2" and runs[0].info.status == "FINISHED"
    assert len(c.get_metric_history(runs[0].info.run_id, "test_acc")) == 2
    import mlflow.pytorch
    import torch

    model = mlflow.pytorch.load_model(f"runs:/{runs[0].info.run_id}/model")
    assert model(torch.zeros(4, 1, 8, 8)).shape == (4, 10)
    assert c.get_latest_versions("dal_best")[0].run_id == runs[0].info.run_id


def test_report_from_a_server_uri_equals_the_local_one(swept, tmp_path):
    tmp, uri, result = swept
    port = free_port()
    server = start_mlflow_server(uri, port, tmp / "mlartifacts")
    try:
        remote = build_report("report_e2e", tracking_uri=f"http://127.0.0.1:{port}", out_dir=tmp_path / "r", log=False)
    finally:
        stop_server(server)
    local = build_report("report_e2e", tracking_uri=uri, out_dir=tmp_path / "l", log=False)
    assert remote.tables.keys() == local.tables.keys()
    for key in local.tables:
        pd.testing.assert_frame_equal(remote.tables[key], local.tables[key])


def test_continuous_sweeps_get_fanova_importance_and_a_slice_plot(tmp_path):
    from tune_losses.reports import plots
    from tune_losses.reports.build import importance

    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {"run_id": [str(i) for i in range(30)], "loss.a": rng.uniform(3, 30, 30), "batch_size": rng.uniform(8, 128, 30)}
    )
    df["val_acc"] = 0.5 + 0.01 * df["loss.a"] + rng.normal(0, 0.001, 30)  # only a matters
    scores = importance(df, ["loss.a", "batch_size"], "val_acc", "max").set_index("parameter")
    assert scores.loc["loss.a", "fanova_importance"] > 0.8 > scores.loc["batch_size", "fanova_importance"]
    plots.slice_png(df, ["loss.a", "batch_size"], "val_acc", tmp_path / "slice.png")
    with Image.open(tmp_path / "slice.png") as img:
        assert img.format == "PNG"


def test_a_continuous_sweeps_report_ranks_its_trials_with_importance_and_a_slice_plot(tmp_path, ray_local):
    """Random search over a range: nine trials, each its own `a`, as dal_a_search's TPE gives. Two epochs: DAL is
    CE until its first update, so after one epoch every `a` has the same accuracy (and fANOVA no variance)."""
    space = tmp_path / "cont.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "name": "report_continuous",
                "train": {
                    "dataset": {"name": "digits"},
                    "model": {"name": "mlp"},
                    "loss": {"name": "dal"},
                    "optimizer": {"name": "sgd", "lr": 0.05},
                    "batch_size": 128,
                    "epochs": 2,
                },
                "params": {"loss.a": {"uniform": [3, 30]}},
                "search": {"searcher": "random", "num_samples": 9, "scheduler": {"name": "fifo"}, "max_concurrent": 2},
            },
            sort_keys=False,
        )
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_sweep(space, tracking_uri=uri, storage=str(tmp_path / "ray"), verbose=0)
    report = result.report
    assert report is not None, tracking.client(uri).get_run(result.parent_run_id).data.tags.get("report_error")
    trials = report.tables["trials"]
    assert len(trials) == 9 and trials["run_id"].nunique() == 9
    assert list(trials["val_acc"]) == sorted(trials["val_acc"], reverse=True)
    assert set(report.tables["importance"]["parameter"]) == {"loss.a"}
    assert any(f.name == "slice.png" for f in report.figures)


def test_ui_serves_the_store_on_localhost(swept):
    tmp, uri, result = swept
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "tune_losses.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert f"http://127.0.0.1:{port}" in ui.stdout.readline()
        for _ in range(120):
            try:
                body = (
                    urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10", timeout=1
                    )
                    .read()
                    .decode()
                )
                break
            except OSError:
                time.sleep(0.5)
        assert "tune_losses" in body
    finally:
        ui.terminate()
        ui.wait(timeout=30)
