"""`tune-losses sweep`: a Ray Tune Tuner over `train`, ASHA and Optuna, every trial recorded in MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag

from tune_losses import tracking
from tune_losses.spaces import Space, SpaceError, load_space

from . import preflight
from .domains import grid_size, to_tune


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    best_config: dict | None
    best_metric: float | None
    summary: dict = field(default_factory=dict)
    results: object = None  # ray.tune.ResultGrid
    report: object = None  # tune_losses.reports.build.Report


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _scheduler(space: Space):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    s = space.search.scheduler
    if s.name == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epoch", max_t=s.max_t or space.train.epochs, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor)


def _searcher(space: Space, warm=None):
    if space.search.searcher != "optuna":
        return None  # Ray's BasicVariantGenerator: grids are expanded, ranges sampled at random
    from ray.tune.search.optuna import OptunaSearch

    if warm is not None:  # --warm-start: the earlier sweep's trials enter the study with their results
        return OptunaSearch(seed=space.train.seed, points_to_evaluate=warm.points, evaluated_rewards=warm.rewards)
    return OptunaSearch(seed=space.train.seed)


def _start_parent(client, exp_id: str, space: Space, path: Path, text: str, name: str, uri: str):
    tags = {"tune_losses.sweep": name, "tune_losses.role": "sweep", "mlflow.runName": name,
            "git_commit": git_commit(), "space_file": str(path), "study": space.study or ""}
    run = client.create_run(exp_id, run_name=name, tags=tags)
    rid = run.info.run_id
    s = space.search
    params = {"searcher": s.searcher, "scheduler": s.scheduler.name, "num_samples": s.num_samples,
              "metric": s.metric, "mode": s.mode, "max_concurrent": s.max_concurrent,
              "swept": ",".join(space.params), "loss": space.train.loss.name, "dataset": space.train.dataset.name,
              "model": space.train.model.name, "repeats": space.train.repeats, "epochs": space.train.epochs,
              "tracking_uri": tracking.redact(uri)}
    if s.scheduler.name == "asha":
        params.update({"asha.max_t": s.scheduler.max_t or space.train.epochs,
                       "asha.grace_period": s.scheduler.grace_period,
                       "asha.reduction_factor": s.scheduler.reduction_factor})
    client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / path.name).write_text(text)
        (Path(tmp) / "resolved_space.json").write_text(json.dumps(space.model_dump(), indent=2, default=str))
        client.log_artifact(rid, str(Path(tmp) / path.name), "space")
        client.log_artifact(rid, str(Path(tmp) / "resolved_space.json"), "space")
    return rid


def summarize(results, space: Space) -> dict:
    completed = stopped = failed = diverged = epochs_run = 0
    for r in results:
        m = r.metrics or {}
        epoch = int(m.get("epoch", 0) or 0)
        epochs_run += epoch
        if r.error is not None:
            failed += 1
        elif m.get("trial_status") == "diverged":
            diverged += 1
        elif epoch < space.train.epochs:
            stopped += 1
        else:
            completed += 1
    n = len(results)
    return {"trials": n, "completed": completed, "stopped_early": stopped, "failed": failed, "diverged": diverged,
            "epochs_run": epochs_run, "epochs_full_budget": n * space.train.epochs}


def run_sweep(space_or_path, name: str | None = None, address: str | None = None, tracking_uri: str | None = None,
              storage: str | None = None, resume: bool = False, dataset: str | None = None,
              overrides: dict | None = None, verbose: int = 1, num_cpus: int | None = None,
              make_report: bool = True, progress: bool = False, warm_start: str | None = None) -> SweepResult:
    """Validate the space, start (or join) Ray, run the Tuner, record everything in MLflow, return a summary.
    ``progress``: show the live view (tuning/progress.py); ``warm_start``: an earlier sweep (tuning/warm_start.py)."""
    from . import warm_start as warm_starts
    from .console import header, quiet

    quiet(verbose)
    overrides = dict(overrides or {})
    if dataset:
        overrides["train.dataset"] = {"name": dataset}
    if "train.dataset" in overrides:
        overrides["paper_dataset"] = None  # another data set: a report must not compare with the paper
    if isinstance(space_or_path, Space):
        space, path, text = space_or_path, Path(f"{space_or_path.name}.yaml"), json.dumps(space_or_path.model_dump())
    else:
        space, path, text = load_space(space_or_path, overrides)
    name = name or space.name
    address_option = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    uri = tracking_uri or tracking.default_tracking_uri()
    storage_path = str(Path(storage).resolve()) if storage and "://" not in storage else (
        storage or str(tracking.run_dir() / "ray"))
    experiment_dir = Path(storage_path) / name if "://" not in storage_path else None
    # Everything that can be wrong is found here, before Ray starts or MLflow is written to.
    if experiment_dir is not None:
        preflight.check_writable(Path(storage_path), "--storage")
    preflight.check_tracking(uri, resume, name)
    preflight.check_ray_address(address, address_option)
    if not address:
        preflight.check_gpus(space, str(path), _local_gpus(), "machine")
    if resume and experiment_dir is not None and not experiment_dir.is_dir():
        raise SpaceError(f"--resume: no Ray Tune state for sweep {name!r} under {storage_path}")
    data = preflight.load_data(space, str(path))
    warm = warm_starts.load(warm_start, space, uri) if warm_start else None
    if progress:
        print(header(space, name), flush=True)  # Ray takes seconds to start
    client = tracking.client(uri)  # opening a SQLite store creates it: only once all else is known to be fine
    parent = tracking.find_sweep(client, name) if resume else None
    if resume and parent is None:
        raise SpaceError(f"--resume: no sweep named {name!r} in the tracking store {tracking.redact(uri)}")

    from ray import tune

    from .workers import init_ray

    init_ray(address, num_cpus, verbose)
    if address:
        import ray

        preflight.check_gpus(space, str(path), ray.cluster_resources().get("GPU", 0), "cluster")

    from .trial import run_trial

    exp_id = tracking.experiment_id(client)
    parent_id = parent.info.run_id if resume else _start_parent(client, exp_id, space, path, text, name, uri)
    if warm is not None:
        client.set_tag(parent_id, "tune_losses.warm_start", warm_start)
        print("\n".join(warm.describe()), flush=True)
    from .budgets import Budget
    from .progress import SweepProgress

    budget = Budget(space.search)
    extra = [budget] + ([SweepProgress(space, budget, bar=None if verbose == 0 else False)] if progress else [])
    if resume:
        client.update_run(parent_id, status="RUNNING")
    space_json = space.model_dump(mode="json")
    logger = tracking.callback.MlflowTrialLogger(uri, exp_id, parent_id, space_json)
    # the splits go once into Ray's object store; trials on every node read them from there
    trainable = tune.with_resources(tune.with_parameters(run_trial, space_json=space_json, data=data),
                                    {"cpu": space.resources.cpu, "gpu": space.resources.gpu})
    param_space = {"params": {p: to_tune(d) for p, d in space.params.items()}}
    if "://" not in storage_path:
        # Ray Tune snapshots its state whenever a trial has checkpointed num_to_keep times; with second-long epochs
        # it then warns, many times a sweep, that snapshots "may become a bottleneck". On local storage a snapshot
        # is one small file write (benchmarks/sweep_overhead.py: 0.03-0.09 s per trial in all); on s3:// etc. the
        # warning stays. A value the user set wins.
        os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if resume:
        tuner = tune.Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space)
        tuner._local_tuner._run_config.callbacks = [logger] + extra  # the logger is made anew for this driver
        tuner._local_tuner._run_config.stop = budget.stopper  # budgets as the space says now (the clock restarts)
    else:
        s = space.search
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric=s.metric, mode=s.mode, scheduler=_scheduler(space),
                                        search_alg=_searcher(space, warm), num_samples=s.num_samples,
                                        max_concurrent_trials=s.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=[logger] + extra,
                                      verbose=verbose, stop=budget.stopper,
                                      failure_config=tune.FailureConfig(max_failures=s.max_failures),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    try:
        results = tuner.fit()
    except BaseException:
        client.log_batch(parent_id, tags=[RunTag("status", "interrupted"), RunTag("ended_by", "interrupted")])
        raise
    finally:
        logger.close()
    summary = summarize(results, space)
    summary["grid_points"] = grid_size(space)
    summary["tracking_ms_per_epoch"] = 1000 * (sum(logger.enqueue_seconds) / max(len(logger.enqueue_seconds), 1))
    best_config = best_metric = None
    try:
        best = results.get_best_result(metric=space.search.metric, mode=space.search.mode, scope="last")
        best_config, best_metric = best.config.get("params", {}), best.metrics.get(space.search.metric)
    except RuntimeError:
        pass
    metrics = [Metric(f"sweep.{k}", float(v), int(time.time() * 1000), 0) for k, v in summary.items()]
    tags = [RunTag("status", "interrupted" if budget.ended_by == "interrupted" else "completed"),
            RunTag("ended_by", budget.ended_by)]
    if best_metric is not None:
        metrics.append(Metric(f"best_{space.search.metric}", float(best_metric), int(time.time() * 1000), 0))
        tags.append(RunTag("best_config", json.dumps(best_config)))
    client.log_batch(parent_id, metrics=metrics, tags=tags)  # one round trip to the store
    client.set_terminated(parent_id, "FINISHED")
    report = None
    if make_report:
        from tune_losses.reports.build import build_report

        try:
            report = build_report(parent_id, tracking_uri=uri, out_dir=tracking.run_dir() / "reports" / name)
        except Exception as exc:  # a report must never cost the sweep's results
            client.set_tag(parent_id, "report_error", str(exc)[:1000])
    out = SweepResult(name, parent_id, uri, best_config, best_metric, summary, results)
    out.report = report
    return out


def print_summary(result: SweepResult, metric: str) -> None:
    s = result.summary
    print(f"\nSweep {result.name!r}: {s['trials']} trials: {s['completed']} completed, {s['stopped_early']} stopped "
          f"early by ASHA, {s['diverged']} diverged, {s['failed']} failed")
    print(f"Epochs run: {s['epochs_run']} of a full budget of {s['epochs_full_budget']} "
          f"({100 * s['epochs_run'] / max(s['epochs_full_budget'], 1):.0f}%)")
    print(f"Best {metric}: {result.best_metric} with {result.best_config}")
    print(f"MLflow: {tracking.redact(result.tracking_uri)}, parent run {result.parent_run_id} "
          f"(browse with `tune-losses ui`)")
    if result.report is not None:
        print(f"Report: {result.report.directory / 'report.md'} (also in the parent run's report/ artifacts)")
    if os.environ.get("TUNE_LOSSES_DEBUG"):
        print(f"tracking cost on the driver: {s['tracking_ms_per_epoch']:.3f} ms per reported epoch")
