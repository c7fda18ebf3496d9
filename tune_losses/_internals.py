"""Every use of a private Ray, Ray Tune or torch interface, in one place. Each is checked against the pinned versions
(constraints.txt) by tests/test_internals.py, which fails with a message naming what changed and what to revisit.

* ``ray.tune.execution.class_cache.DEFAULT_ENV_VARS`` (ray 2.60.0: ``{"PL_DISABLE_FORK": "1"}``): the
  environment variables Ray Tune gives every trial actor as its own ``runtime_env``. A trial actor with a
  runtime environment of its own cannot run in a worker that Ray prestarted, so tuning/ray_runtime.py drops the one
  variable (and sets it in the trial process instead): :func:`drop_tune_actor_env_var`.
* ``ray.init(_system_config=...)`` (ray 2.60.0, "testing only" in its docstring) with the key
  ``preload_python_modules``: what a local Ray's prestarted workers import before they take work
  (:func:`init_ray`). A cluster's nodes take the same from ``RAY_preload_python_modules`` in their environment.
* ``ray._private.state.jobs()`` (ray 2.60.0: dicts with ``JobID`` and ``IsDead``): the jobs a local Ray has run,
  and ``NodeManagerService.PrestartWorkers`` (ray.core.generated, the raylet's gRPC service; a channel from
  ``ray._private.grpc_utils.init_grpc_channel``, which adds the cluster's token): tuning/warm_ray.py's keeper asks
  the raylet for new warm workers when a sweep's job has ended (:func:`job_states`, :func:`prestart_workers`),
  ``ray._private.authentication.authentication_utils.is_token_auth_enabled`` says whether the Ray it started
  takes a token (:func:`token_auth_enabled`), and ``authentication_token_setup._enable_token_auth`` turns token
  mode on in a driver that joins it by address after Ray was imported (:func:`enable_token_auth`: Ray turns it on
  itself only for a Ray it finds without an address).
* The text of the warning ``ray.init`` logs outside the main thread ("SIGTERM handler is not set"):
  tuning/ray_runtime.py starts Ray in a thread and sets that handler itself, and drops the warning
  (:class:`NotMainThreadWarning`).

* ``ray._private.worker.print_to_stdstream``, which the driver's thread ``listen_error_messages`` (ray 2.60.0)
  calls for every message the cluster pushes to the driver (a raylet's death with the tail of its log, a node
  marked dead), as ``{"pid": "raylet", "lines": [...]}``: at the default verbosity a sweep sends those to its
  log file instead of the console (tuning/console.py, :func:`route_cluster_messages`).

* ``torch._C._functorch.is_batchedtensor`` (torch 2.14.1): whether a tensor is batched by ``vmap``. A loss
  parameter stacked per replica (a fused group of configs, training/group.py) is batched; one shared by every
  replica is not, and stays a Python float so that a single config keeps its exact path (:func:`is_batched`).

* MLflow's SQLite schema (mlflow 3.x): the table ``experiments`` with the Default experiment as
  ``experiment_id`` 0 and its ``artifact_location``. A new store is a copy of one built once per MLflow version
  (tracking/store.py ``create_sqlite_store``); the copy's Default experiment is pointed beside it
  (:func:`set_default_experiment_location`).

* Python's own exit steps, ``threading._shutdown`` (joins the threads that are not daemons, and runs what
  ``concurrent.futures`` registered to end its pools) and ``atexit._run_exitfuncs`` (Python 3.11): the
  command runs both, in the interpreter's order, then leaves with ``os._exit``, skipping the teardown of every
  module: :func:`exit_without_teardown`. That teardown took 1.9 s after importing torch, Ray and MLflow on the
  2-CPU machine: ``time python -c "import tune_losses.tuning.trial"`` (7.3 s, twice) against the same import
  followed by ``exit_without_teardown(0)`` (5.3-5.5 s).

The fused loss kernels need no private interface: they are ``torch.library.custom_op`` operators with autograd
and vmap rules (losses/fused.py).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

#: The key of Ray's system config (RayConfig, C++) that lists the modules prestarted workers import.
PRELOAD_CONFIG_KEY = "preload_python_modules"


def tune_actor_env_vars() -> dict[str, str] | None:
    """Ray Tune's default environment of trial actors (the dict it copies for each), or None when this Ray has
    none where expected (then trials start in fresh processes: slower, the same results)."""
    try:
        from ray.tune.execution import class_cache
    except ImportError:
        return None
    env = getattr(class_cache, "DEFAULT_ENV_VARS", None)
    return env if isinstance(env, dict) else None


def drop_tune_actor_env_var(name: str) -> bool:
    """Stop Ray Tune from giving trial actors the environment variable ``name``; False where this Ray has no
    such default environment (nothing done)."""
    env = tune_actor_env_vars()
    if env is None:
        return False
    env.pop(name, None)
    return True


def init_ray(*, preload_modules: list[str] | None = None, **kwargs: Any) -> None:
    """``ray.init(**kwargs)``; with ``preload_modules``, a local Ray whose prestarted workers import them."""
    import ray

    system_config = {PRELOAD_CONFIG_KEY: preload_modules} if preload_modules else None
    ray.init(**kwargs, _system_config=system_config)


def job_states() -> dict[str, bool]:
    """{job id: still running} for every job the connected Ray has had (module docstring)."""
    from ray._private import state

    return {job["JobID"]: not job["IsDead"] for job in state.jobs()}


def prestart_workers(node_address: str, node_port: int, count: int, keep_alive_s: int) -> None:
    """Ask the raylet at ``node_address:node_port`` to start ``count`` Python workers that belong to no job yet
    (any job with no runtime environment of its own takes them), kept ``keep_alive_s`` even while idle."""
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2

    request = node_manager_pb2.PrestartWorkersRequest(  # type: ignore[attr-defined]  # generated protobuf
        language=common_pb2.PYTHON,  # type: ignore[attr-defined]
        num_workers=count,
        keep_alive_duration_secs=keep_alive_s,
        runtime_env_info=runtime_environment_pb2.RuntimeEnvInfo(  # type: ignore[attr-defined]
            serialized_runtime_env="{}"  # no runtime environment: what Tune's trial actors ask (ray_runtime.py)
        ),
    )
    channel = init_grpc_channel(f"{node_address}:{node_port}")
    try:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)
    finally:
        channel.close()


def token_auth_enabled() -> bool:
    """Whether this process's Ray uses token authentication (on by default for a Ray that ray.init started)."""
    from ray._private.authentication import authentication_utils

    return bool(authentication_utils.is_token_auth_enabled())


def enable_token_auth() -> None:
    """Send the token (RAY_AUTH_TOKEN, or ~/.ray/auth_token) from here on, as Ray does for a Ray it finds itself:
    RAY_AUTH_MODE=token for this process and its children, and Ray's cached config read again."""
    from ray._private.authentication import authentication_token_setup

    authentication_token_setup._enable_token_auth()


#: What ray.init logs (ray._private.worker) when it runs outside the main thread.
NOT_MAIN_THREAD_WARNING = "SIGTERM handler is not set"


class NotMainThreadWarning(logging.Filter):
    """Drops Ray's warning that ray.init outside the main thread sets no SIGTERM handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        return NOT_MAIN_THREAD_WARNING not in record.getMessage()


def drop_not_main_thread_warning() -> None:
    logger = logging.getLogger("ray._private.worker")
    if not any(isinstance(f, NotMainThreadWarning) for f in logger.filters):
        logger.addFilter(NotMainThreadWarning())


def route_cluster_messages(write, also_print: bool = False):
    """Hand the messages the cluster pushes to this driver to ``write(text)``, instead of printing them unless
    ``also_print`` (module docstring); returns what puts Ray's printer back. Worker output (``log_to_driver``)
    is not affected."""
    from ray._private import worker

    printer = worker.print_to_stdstream

    def routed(data, ignore_prefix):
        cluster = data.get("pid") == "raylet"
        if cluster:
            write("\n".join(str(line) for line in data.get("lines", [])))
        if also_print or not cluster:
            printer(data, ignore_prefix)

    worker.print_to_stdstream = routed
    return lambda: setattr(worker, "print_to_stdstream", printer)


def is_batched(tensor) -> bool:
    """Whether ``tensor`` is batched by ``torch.func.vmap`` here (a value per replica) (module docstring)."""
    import torch

    return bool(torch._C._functorch.is_batchedtensor(tensor))


def set_default_experiment_location(db: Path, location: str) -> None:
    """Point the Default experiment of the MLflow SQLite store ``db`` (closed: no MLflow client has it open) at
    ``location``."""
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        changed = con.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (location,)
        ).rowcount
    if changed != 1:
        raise RuntimeError(f"{db}: no Default experiment (id 0) in this MLflow store's experiments table")


def exit_without_teardown(code: int | None) -> NoReturn:
    """Exit with ``code`` (None: 0, as ``sys.exit``) as the interpreter would, minus the teardown of its modules:
    non-daemon threads are joined, the atexit handlers run (Ray's shutdown of the Ray a sweep started, MLflow's,
    logging's), Python's standard streams and C's stdio buffers are flushed; then ``os._exit``. What is skipped:
    finalizers of objects still alive (``__del__``), so a file the command left open unflushed stays so: the
    package closes what it writes (``with``)."""
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):  # a closed pipe (`... | head`): nothing left to show
            stream.flush()  # type: ignore[union-attr]
    with contextlib.suppress(Exception):  # what C extensions printed through stdio
        ctypes.CDLL(None).fflush(None)
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)
