"""Starting Ray for a sweep: locally (all of this machine's CPUs, or num_cpus) or by address.

Trials start in warm processes. Ray prestarts one worker process per CPU when it starts; with
``preload_python_modules`` those processes import the trial code (torch, Ray Tune, the package) while the
driver is still setting up, instead of after the first trial is scheduled. The sweep's start-up with them (its
start to the first trial's MLflow run, the "one-time start-up" line of ``.venv/bin/python
benchmarks/sweep_overhead.py``, a local Ray with 2 CPUs) measured about 4 s on an otherwise idle 2-CPU machine
(the run reported in issue 13), and 58 s with ``--trials 4 --epochs 2`` on the same machine at a load average of
about 20. On a cluster started with ``ray start``, give every node the same list through the environment:
``RAY_preload_python_modules=tune_losses.tuning.trial`` (docker/compose.yaml does).
"""

from __future__ import annotations

import os

from tune_losses import _internals

#: What a prestarted worker imports before it takes work: everything a trial needs (see trial.py).
PRELOAD_MODULES = ["tune_losses.tuning.trial"]


def use_prestarted_workers() -> None:
    """Let Ray Tune's trial actors run in the prestarted workers.

    Ray Tune gives its trial actors ``runtime_env={"env_vars": {"PL_DISABLE_FORK": "1"}}`` (a PyTorch
    Lightning workaround, ray-project/ray#28197). Ray reuses a prestarted worker only for the job's own runtime
    environment, so that one variable makes every sweep start fresh processes and import torch again. The
    variable is set in the trial process instead (trial.py); nothing else of Tune's environment changes (AWS
    credentials and Ray Train's variables are still passed on, at the price of fresh processes).
    """
    _internals.drop_tune_actor_env_var("PL_DISABLE_FORK")  # another Ray: fresh processes, slower but the same


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: int = 1) -> None:
    import ray

    use_prestarted_workers()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # A local Ray takes the preload list as system config; a cluster's nodes take it from their environment.
    _internals.init_ray(
        preload_modules=None if address else PRELOAD_MODULES,
        address=address,
        num_cpus=None if address else num_cpus,
        include_dashboard=False,
        log_to_driver=verbose > 1,
        configure_logging=verbose > 1,
    )


def trial_environment() -> None:
    """What Ray Tune's runtime environment would have set in a trial process (see use_prestarted_workers)."""
    os.environ.setdefault("PL_DISABLE_FORK", "1")
