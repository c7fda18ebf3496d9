"""A Ray Tune callback that records every trial as a nested MLflow run under the sweep's parent run.

Everything is logged from the driver, by one background thread that takes events from a queue: a trial never
waits for MLflow, and the driver's cost per epoch is one queue put. Per-epoch metrics go in one ``log_batch``
per result. A restored trial (``--resume``, or a retry after a failure) continues its own run: the run is found
by its ``ray_trial_id`` tag, and epochs already logged are not logged again. Every MLflow call is retried, so a
tracking server that is down for a while loses nothing.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from ray.tune import Callback

from . import store

log = logging.getLogger(__name__)
STOP = object()


def trial_name(loss: str, values: dict) -> str:
    """A readable run name from the swept values, e.g. 'dal a=15 bs=32'."""
    short = {"batch_size": "bs", "optimizer.lr": "lr"}
    parts = []
    for path, value in values.items():
        key = short.get(path, path.split(".")[-1].replace(",", "_"))
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    return " ".join([loss] + parts)


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def error_text(trial, limit: int = 2000) -> str:
    """The end of the traceback Ray wrote for a trial that raised (its last line names the exception)."""
    path = getattr(trial, "error_file", None)
    try:
        return Path(path).read_text()[-limit:].strip() if path else "trial raised"
    except OSError:
        return f"trial raised (traceback in {path})"


class RetryingClient:
    """An MlflowClient whose every call is retried (0.5 s, doubling to 5 s) until ``seconds`` have passed: a
    tracking server that is down for a while delays the writer thread, it does not lose what it had to write.
    Retrying each call (not each event) means a half-done event is finished, never done twice."""

    def __init__(self, client, seconds: float):
        self._client, self._seconds = client, seconds

    def __getattr__(self, name):
        fn = getattr(self._client, name)
        if not callable(fn):
            return fn

        def call(*args, **kwargs):
            deadline, delay = time.monotonic() + self._seconds, 0.5
            while True:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if time.monotonic() > deadline:
                        raise
                    log.warning("MLflow %s failed (%s); retrying in %.1f s", name, exc, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)
        return call


class MlflowTrialLogger(Callback):
    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, space_json: dict,
                 retry_seconds: float = 120.0):
        self.tracking_uri, self.experiment_id, self.parent_run_id = tracking_uri, experiment_id, parent_run_id
        self.space_json, self.retry_seconds = space_json, retry_seconds
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self.enqueue_seconds: list[float] = []

    # --- Ray Tune hooks (driver thread): only enqueue ---------------------------------------------------------
    def _put(self, *event):
        start = time.perf_counter()
        if self._thread is None:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="mlflow-trial-logger", daemon=True)
            self._thread.start()
        self._queue.put(event)
        self.enqueue_seconds.append(time.perf_counter() - start)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._put("start", trial.trial_id, dict(trial.config))

    def on_trial_restore(self, iteration, trials, trial, **info):
        self._put("start", trial.trial_id, dict(trial.config))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._put("result", trial.trial_id, dict(result))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._put("end", trial.trial_id, "FINISHED", None)

    def on_trial_recover(self, iteration, trials, trial, **info):  # it raised; Ray retries it from its checkpoint
        self._put("recover", trial.trial_id, error_text(trial))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._put("end", trial.trial_id, "FAILED", error_text(trial))

    def on_experiment_end(self, trials, **info):
        self.close()

    def close(self):
        if self._thread is not None:
            self._queue.put((STOP,))
            self._thread.join()
            self._thread = None

    def __getstate__(self):  # Ray pickles callbacks with the experiment state
        state = dict(self.__dict__)
        state.update(_queue=None, _thread=None, enqueue_seconds=[])
        return state

    # --- the writer thread ------------------------------------------------------------------------------------
    def _work(self):
        self.client = RetryingClient(store.client(self.tracking_uri), self.retry_seconds)
        self.runs: dict[str, str] = {}
        self.last_step: dict[str, int] = {}
        self.last: dict[str, dict] = {}
        self.retries: dict[str, int] = {}
        self.nodes: dict[str, list[str]] = {}
        while True:
            event = self._queue.get()
            if event[0] is STOP:
                return
            try:
                getattr(self, f"_on_{event[0]}")(*event[1:])
            except Exception as exc:  # gave up after retry_seconds: say so, keep the other trials' records
                log.error("MLflow logging of %s for trial %s gave up after %.0f s: %s", event[0], event[1],
                          self.retry_seconds, exc)

    def _on_start(self, trial_id: str, config: dict):
        from tune_losses.spaces import Space, trial_config
        from tune_losses.training.config import weights_used

        if trial_id in self.runs:
            self.client.update_run(self.runs[trial_id], status="RUNNING")
            return
        existing = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' "
            f"and tags.ray_trial_id = '{trial_id}'", max_results=1)
        if existing:
            run = existing[0]
            self.runs[trial_id] = run.info.run_id
            steps = [m.step for m in self.client.get_metric_history(run.info.run_id, "val_acc")]
            self.last_step[trial_id] = max(steps, default=0)
            self.nodes[trial_id] = [n for n in run.data.tags.get("ray_nodes", "").split(",") if n]
            self.client.update_run(run.info.run_id, status="RUNNING")
            self.client.set_tag(run.info.run_id, "status", "running")
            return
        space = Space.model_validate(self.space_json)
        given = config.get("params", {})
        values = {p: given[p] for p in space.params if p in given}  # in the space's order
        cfg = trial_config(space, values)
        name = trial_name(space.train.loss.name, values)
        tags = {"mlflow.parentRunId": self.parent_run_id, "mlflow.runName": name, "ray_trial_id": trial_id,
                "tune_losses.sweep": space.name, "tune_losses.role": "trial", "status": "running"}
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.runs[trial_id] = run.info.run_id
        self.last_step[trial_id] = 0
        params = [Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                  for k, v in flatten(cfg).items()]
        params += [Param(f"swept.{k}", json.dumps(v)) for k, v in values.items()]
        params.append(Param("weights", weights_used(cfg)))
        self.client.log_dict(run.info.run_id, cfg, "config.json")
        for i in range(0, len(params), 100):
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])

    def _on_result(self, trial_id: str, result: dict):
        run_id = self.runs.get(trial_id)
        step = int(result.get("epoch", 0) or 0)
        if run_id is None or step <= self.last_step.get(trial_id, 0):
            return  # an epoch re-run after a restore: already logged
        ts = int(time.time() * 1000)
        metrics = [Metric(k, float(v), ts, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in
                   ("epoch", "training_iteration", "time_this_iter_s", "time_total_s", "timestamp", "pid",
                    "time_since_restore", "iterations_since_restore", "done")]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[i:i + 500])
        node = result.get("node_id")
        nodes = self.nodes.setdefault(trial_id, [])
        if node and node not in nodes:  # the first epoch, or the trial moved (a retry on another node)
            nodes.append(node)
            tags = [RunTag("ray_node_id", node), RunTag("ray_nodes", ",".join(nodes))]
            self.client.log_batch(run_id, tags=tags)
        self.last_step[trial_id] = step
        self.last[trial_id] = result

    def _on_recover(self, trial_id: str, error: str):
        run_id = self.runs.get(trial_id)
        if run_id is None:
            return
        self.retries[trial_id] = self.retries.get(trial_id, 0) + 1
        self.client.log_batch(run_id, tags=[RunTag("retries", str(self.retries[trial_id])),
                                            RunTag("status", "retrying"), RunTag("last_error", error[:5000])])

    def _on_end(self, trial_id: str, status: str, error):
        run_id = self.runs.get(trial_id)
        if run_id is None:
            return
        last = self.last.get(trial_id, {})
        space_epochs = self.space_json.get("train", {}).get("epochs")
        epoch = int(last.get("epoch", 0) or 0)
        trial_status = last.get("trial_status") or ("error" if status == "FAILED" else "completed")
        tags = [RunTag("status", trial_status), RunTag("ray_status", status)]
        if trial_status == "completed" and space_epochs and epoch < space_epochs:
            tags += [RunTag("stopped_early", "true"), RunTag("stopped_at_epoch", str(epoch))]
        else:
            tags.append(RunTag("stopped_early", "false"))
        if last.get("reason") or error:
            tags.append(RunTag("reason", str(last.get("reason") or error)[:5000]))
        self.client.log_batch(run_id, tags=tags)
        if last.get("test_confusion") is not None:
            # the figures (confusion matrix and learning curves as PNG) are drawn from this and the metric
            # histories after the sweep, with its report: drawn here, they took the CPU the other trials train on
            self.client.log_dict(run_id, last["test_confusion"], "confusion_matrix.json")
        self.client.set_terminated(run_id, status="FAILED" if status == "FAILED" else "FINISHED")
