"""Starting Ray for a sweep: locally (all of this machine's CPUs, or num_cpus) or by address.

Trials start in warm processes. Ray prestarts one worker process per CPU when it starts; with
``preload_python_modules`` those processes import the trial code (torch, Ray Tune, MLflow, the package) while the
driver is still setting up, instead of after the first trial is scheduled. The driver itself never imports the
trial module: it hands Ray Tune :func:`run_trial` below, which imports it in the trial process (the driver saves
torch's compiler stack, which torch.optim imports and only trials use).

Ray starts in a thread (:class:`RayStart`) while the driver checks the tracking store, loads the data set and
writes the parent run, so the workers' imports overlap the driver's work. Where the time goes before the first
trial runs: ``.venv/bin/python benchmarks/startup.py`` (per step and per process).

Between commands, ``tune-losses up`` keeps such a Ray running, its workers warm (tuning/warm_ray.py); a sweep
joins it when no address is given.

On a cluster started with ``ray start``, give every node the same list through the environment:
``RAY_preload_python_modules=tune_losses.tuning.trial`` (docker/compose.yaml does).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from tune_losses import _internals

#: What a prestarted worker imports before it takes work: everything a trial needs (see trial.py).
PRELOAD_MODULES = ["tune_losses.tuning.trial"]


def run_trial(config: dict, space_json: dict, sweep: dict, data=None) -> None:
    """The trainable the driver gives Ray Tune: tuning/trial.py's ``run_trial``, imported in the trial process
    (a prestarted worker has it already)."""
    from tune_losses.tracking.ledger import as_trial

    config = as_trial(config)  # a group of one (the baseline) runs as its unfused trial
    if "group" in config:  # a fused group of configs (tuning/fusion.py, fused_trial.py)
        from .fused_trial import run_group

        run_group(config, space_json, sweep, data)
        return
    from .trial import run_trial as run

    run(config, space_json, sweep, data)


def use_prestarted_workers() -> None:
    """Let Ray Tune's trial actors run in the prestarted workers.

    Ray Tune gives its trial actors ``runtime_env={"env_vars": {"PL_DISABLE_FORK": "1"}}`` (a PyTorch
    Lightning workaround, ray-project/ray#28197). Ray reuses a prestarted worker only for the job's own runtime
    environment, so that one variable makes every sweep start fresh processes and import torch again. The
    variable is set in the trial process instead (trial.py ``trial_environment``); nothing else of Tune's
    environment changes (AWS credentials and Ray Train's variables are still passed on, at the price of fresh
    processes).
    """
    _internals.drop_tune_actor_env_var("PL_DISABLE_FORK")  # another Ray: fresh processes, slower but the same


def init_ray(address: str | None = None, num_cpus: int | None = None, verbose: int = 1) -> None:
    import ray

    use_prestarted_workers()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = address in (None, "local")  # "local": a new Ray even where `ray start` left an address (warm_ray.py)
    # A local Ray takes the preload list as system config; a cluster's nodes take it from their environment.
    _internals.init_ray(
        preload_modules=PRELOAD_MODULES if local else None,
        address=address,
        num_cpus=num_cpus if local else None,
        include_dashboard=False,
        log_to_driver=verbose > 1,
        configure_logging=verbose > 1,
    )


class RayStart:
    """``init_ray`` in a thread, started at once: ``wait()`` returns when Ray is up (or raises what ray.init
    raised); ``cancel()`` waits for the start to end and shuts down what it started, for a sweep that stops
    before its trials (bad input found meanwhile, Ctrl-C). ray.init sets a SIGTERM handler only in the main
    thread: ``wait()`` sets the same one there (exit, so that Ray's atexit hook shuts it down).

    The thread lives as long as the process: Ray's processes are started with a parent-death signal
    (PR_SET_PDEATHSIG), which Linux sends when the *thread* that started them ends."""

    def __init__(self, address: str | None, num_cpus: int | None, verbose: int):
        import ray

        self._already = ray.is_initialized()
        self._error: BaseException | None = None
        self._started, self._hold = threading.Event(), threading.Event()
        if self._already:  # nothing to start (tests, notebooks): no thread either
            use_prestarted_workers()
            self._started.set()
            return
        _internals.drop_not_main_thread_warning()
        self._thread = threading.Thread(target=self._run, args=(address, num_cpus, verbose), daemon=True)
        self._thread.start()

    def _run(self, address, num_cpus, verbose) -> None:
        try:
            init_ray(address, num_cpus, verbose)
        except BaseException as exc:  # handed to the main thread by wait()
            self._error = exc
        finally:
            self._started.set()
        self._hold.wait()  # see the class's docstring

    def wait(self) -> None:
        self._started.wait()
        if self._error is not None:
            raise self._error
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
            signal.SIG_DFL,
            None,
        ):
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))

    def cancel(self) -> None:
        import ray

        self._started.wait()
        if not self._already and ray.is_initialized():
            ray.shutdown()
        self._hold.set()
