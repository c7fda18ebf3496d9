"""The Ray Tune Tuner of a sweep: the trainable with its resources, the search, the schedule, the callbacks."""

from __future__ import annotations

from typing import Any

from tune_losses.tracking.callback import LedgerCallback
from tune_losses.tracking.ledger import Ledger

from . import search
from .budgets import Budget


def build_tuner(sweep) -> tuple[Any, Budget]:
    """The Tuner for a claimed sweep (tuning/sweep.py ``Sweep``), and the sweep's budgets."""
    from ray import tune

    from .ray_runtime import run_trial

    o, parent = sweep.options, sweep.parent
    space, s = o.space, o.space.search
    budget = Budget(s, seconds_before=parent.seconds_run(), finished=sweep.done)
    experiment = sweep.experiment_id
    trial_sweep = {
        "tracking_uri": o.uri,
        "experiment_id": experiment,
        "parent_run_id": parent.run_id,
        "checkpoints": sweep.checkpoints,
    }
    # the splits go once into Ray's object store; trials on every node read them from there
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, space_json=space.model_dump(mode="json"), sweep=trial_sweep, data=sweep.data),
        {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
    )
    sweep.fusion = _fusion(sweep)
    ps = search.param_space(space, sweep.fusion.groups)
    tuner = tune.Tuner(
        trainable,
        param_space=ps,
        tune_config=tune.TuneConfig(
            metric=s.metric,
            mode=s.mode,
            scheduler=search.scheduler(space),
            search_alg=search.searcher(space, ps, sweep.done, sweep.todo, sweep.warm),
            num_samples=1 if s.searcher != "optuna" else max(s.num_samples - len(sweep.done), 0),
            # grid and random: the generator holds the limit (search.searcher); Ray Tune warns if given it too
            max_concurrent_trials=s.max_concurrent if s.searcher == "optuna" else None,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="tune",
            # Ray Tune's own files under the sweep's identity too (a resume never reads them: MLflow is the ledger)
            storage_path=f"{o.storage.rstrip('/')}/{o.name}/{parent.run_id}",
            callbacks=_callbacks(sweep, Ledger(sweep.client, experiment, parent.run_id), budget),
            verbose=o.verbose,
            stop=sweep.interrupt.stopper(budget.stopper),
            failure_config=tune.FailureConfig(max_failures=s.max_failures),
        ),
    )
    return tuner, budget


def _callbacks(sweep, ledger: Ledger, budget: Budget) -> list:
    from .progress import SweepProgress

    o = sweep.options
    callback = LedgerCallback(ledger, o.space.train.epochs, sweep.interrupt.event)
    callback.budget, callback.scheduler = budget, o.space.search.scheduler.name
    sweep.interrupt.budget = budget
    bar = None if o.verbose == 0 else False
    configs = sum(len(g) for g in sweep.fusion.groups) if sweep.fusion.fused else None  # the header's count
    view = SweepProgress(o.space, budget, bar=bar, checkpoints=sweep.checkpoints, configs=configs)
    extra = [view] if o.progress else []
    return [callback, sweep.interrupt.callback(), budget, *extra]


def _fusion(sweep):
    """Which configs train fused (tuning/fusion.py), for the CPUs and GPUs the sweep's Ray has; the header says
    how, or why not."""
    import ray

    from .fusion import plan_fusion

    have = ray.cluster_resources()
    plan = plan_fusion(sweep.options.space, have.get("CPU"), have.get("GPU"))
    if sweep.options.progress:
        if plan.fused:
            fused = [g for g in plan.groups if len(g) > 1]  # a group of one (the baseline) is a plain trial
            n, alone = sum(len(g) for g in fused), len(plan.groups) - len(fused)
            print(
                f"Fused: {n} trials as {len(fused)} vectorised groups (one MLflow run per trial)"
                + (f", and {alone} baseline trial{'s' * (alone > 1)} alone" if alone else ""),
                flush=True,
            )
        else:
            print(f"Not fused: {plan.reason}", flush=True)
    return plan
