"""What faults make Ray, Ray Tune, MLflow and urllib3 say goes to the sweep's log file (tuning/console.py
FaultLog): at the default verbosity only there, with -v on the console as well; a sweep without any leaves no
file. With a real failing MLflow call (a port where nothing listens) and the messages Ray's own loggers and its
driver-side printer give on a lost node."""

import logging

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tune_losses.tracking.ledger import retrying
from tune_losses.tuning.console import FaultLog

from helpers import free_port

TRACEBACK = "ray.exceptions.ActorUnavailableError: The actor 7acd72 is unavailable"
DEAD = "The node with node id: 404e2022 and address: 192.0.2.2 has been marked dead"


def fault(monkeypatch):
    """A tracking call against a store that is down, a trial's traceback from Ray Tune, a node marked dead."""
    from ray._private import worker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    client = MlflowClient(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(MlflowException, match="Connection refused"):
        retrying(client.search_experiments, seconds=0.3)
    try:
        raise RuntimeError(TRACEBACK)
    except RuntimeError as exc:
        logging.getLogger("ray.tune.execution.tune_controller").error("Trial task failed for trial t", exc_info=exc)
    worker.print_to_stdstream({"lines": [DEAD], "pid": "raylet", "is_err": False}, ignore_prefix=False)


@pytest.mark.parametrize("verbose", [0, 1])
def test_fault_messages_go_to_the_log_and_to_the_console_only_with_v(tmp_path, capfd, monkeypatch, verbose):
    from ray._private import worker

    printer, ray_handlers = worker.print_to_stdstream, list(logging.getLogger("ray").handlers)
    root_handlers = list(logging.getLogger().handlers)
    path = tmp_path / "logs" / "s.log"
    with FaultLog(path, verbose) as log:
        assert FaultLog.active is log
        logging.getLogger("ray").handlers.clear()  # what ray.init(configure_logging=False) does
        fault(monkeypatch)
        logging.getLogger("tune_losses.tracking.callback").error("could not record the end of trial t in MLflow")
        assert log.written
    shown = capfd.readouterr()
    console = shown.out + shown.err
    text = path.read_text()
    assert "could not record the end of trial t" in console  # the package's own errors: always on the console
    for said in ("Connection refused", "MLflow call search_experiments failed", "Trial task failed", TRACEBACK):
        assert said in text, said
        assert (said in console) == (verbose >= 1), (said, console)
    assert DEAD in text and (DEAD in console) == (verbose >= 1)  # Ray prints it itself with -v
    # as they were: Ray's handler and printer, no handler of ours
    assert FaultLog.active is None and worker.print_to_stdstream is printer
    assert logging.getLogger("ray").propagate is False
    logging.getLogger("ray").handlers[:] = ray_handlers
    assert logging.getLogger().handlers == root_handlers


def test_a_sweep_without_faults_leaves_no_log_file(tmp_path):
    with FaultLog(tmp_path / "logs" / "s.log", 0) as log:
        logging.getLogger("tune_losses.x").info("not a warning")
    assert not log.written and not (tmp_path / "logs").exists()
