"""At the default verbosity a sweep keeps MLflow's "View run ... / View experiment ..." lines (printed after every
run ended against an MLflow server) off the console; -v shows them again. Against a real `mlflow server`."""

import pytest
from mlflow.tracking import MlflowClient

from tune_losses import tracking
from tune_losses.tuning import console

from helpers import sqlite_mlflow_server

KEYS = ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "RAY_AIR_NEW_OUTPUT")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from sqlite_mlflow_server(tmp_path_factory.mktemp("mlflow"))


@pytest.mark.slow
@pytest.mark.parametrize("verbose, shown", [(0, False), (1, True)])
def test_view_run_lines_only_with_v(server, verbose, shown, monkeypatch, capsys):
    for key in KEYS:
        monkeypatch.delenv(key, raising=False)  # restored after the test
    console.quiet(verbose)
    c = MlflowClient(server)
    run = c.create_run(tracking.experiment_id(c))
    capsys.readouterr()
    c.set_terminated(run.info.run_id)
    out = capsys.readouterr().out
    assert ("View run" in out and "View experiment" in out) == shown, out
