"""The private interfaces tune_losses/_internals.py uses, checked against the pinned versions (constraints.txt):
each test says what changed and what to revisit when a new Ray or PyTorch changes them. And the fused loss
kernels, which need none: their vmap rule (public torch.library API) gives what a loop over replicas gives."""

import inspect
import logging
import mmap
import os
from pathlib import Path

import pytest
import torch

from tune_losses import _internals
from tune_losses.losses import build_loss, fused

ROOT = Path(__file__).resolve().parents[1]
PINS = dict(
    ln.split("==")
    for ln in (ROOT / "constraints.txt").read_text().splitlines()
    if "==" in ln and not ln.startswith("#")
)


def changed(what: str, package: str = "ray") -> str:
    import importlib

    version = importlib.import_module(package).__version__
    return (
        f"{package} {version} (pinned: {PINS.get(package)}) changed {what}; revisit tune_losses/_internals.py "
        "and the code that calls it"
    )


def test_ray_tune_gives_trial_actors_only_the_environment_variable_workers_py_drops():
    from ray.tune import Trainable
    from ray.tune.execution.class_cache import _ActorClassCache

    env = _internals.tune_actor_env_vars()
    assert env is not None, changed(
        "ray.tune.execution.class_cache.DEFAULT_ENV_VARS (gone, or not a dict): trials start in fresh processes again"
    )
    assert set(env) <= {"PL_DISABLE_FORK"}, changed(f"Tune's default trial environment (now {env})")
    assert _internals.drop_tune_actor_env_var("PL_DISABLE_FORK") and env == {}

    class Probe(Trainable):
        pass

    class Other(Trainable):
        pass

    options = getattr(_ActorClassCache().get(Probe), "_default_options", None)
    assert options is not None and not options.get("runtime_env"), changed(
        f"how Tune makes its trial actors (runtime_env {options and options.get('runtime_env')}, none expected)"
    )
    env["TUNE_LOSSES_PROBE"] = "1"  # the actor class cache reads that very dict (no copy made at import)
    try:
        options = _ActorClassCache().get(Other)._default_options
    finally:
        env.pop("TUNE_LOSSES_PROBE")
    assert options["runtime_env"].get("env_vars") == {"TUNE_LOSSES_PROBE": "1"}, changed(
        "where Tune's actor class cache takes its default environment from (DEFAULT_ENV_VARS is not read)"
    )


def test_ray_init_outside_the_main_thread_logs_the_warning_workers_py_drops():
    """ray_runtime.RayStart runs ray.init in a thread and drops Ray's warning about the SIGTERM handler by its text."""
    from ray._private import worker

    source = inspect.getsource(worker)
    assert _internals.NOT_MAIN_THREAD_WARNING in source, changed("the warning ray.init logs outside the main thread")
    assert "getLogger(__name__)" in source, changed("the logger of ray._private.worker")
    _internals.drop_not_main_thread_warning()
    _internals.drop_not_main_thread_warning()  # once only, however many sweeps a process runs
    filters = logging.getLogger("ray._private.worker").filters
    assert sum(isinstance(f, _internals.NotMainThreadWarning) for f in filters) == 1


def test_ray_init_takes_a_system_config_with_the_preload_key():
    """That the key has its effect (prestarted workers import the trial code) is checked end to end, slowly, by
    tests/e2e/test_sweep.py::test_trials_run_in_prestarted_workers_that_have_the_trial_code_imported."""
    import ray

    assert "_system_config" in inspect.getsource(ray.init), changed("ray.init: it takes no _system_config")
    raylet = Path(ray.__file__).parent / "_raylet.so"
    with open(raylet, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as binary:
        known = binary.find(_internals.PRELOAD_CONFIG_KEY.encode()) >= 0
    assert known, changed(f"Ray's system config: it has no key {_internals.PRELOAD_CONFIG_KEY!r} any more")


@pytest.fixture
def kernels():
    if fused.kernels() is None:
        pytest.skip("the fused kernels could not be built here")
    return fused.kernels()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_losses_under_vmap_equal_a_loop_over_replicas_in_value_and_gradient(kernels, dtype):
    """The vectorised repeats' call (training/replicas.py): buffers, logits, targets and attention batched."""
    from torch.func import functional_call

    k, b, c = 3, 16, 5
    g = torch.Generator().manual_seed(4)
    for name, params in (("dal", {"a": 5.0}), ("beta_gamma", {"beta": 4.0, "gamma": 2.0}), ("cc", {"lam": 1.0})):
        losses = [build_loss(name, num_classes=c, **params).to(dtype) for _ in range(k)]
        for loss in losses:
            loss.update(torch.randint(0, 9, (c, c), generator=g))
        buffers = {n: torch.stack([dict(lo.named_buffers())[n] for lo in losses]) for n, _ in losses[0].named_buffers()}
        z = torch.randn(k, b, c, generator=g, dtype=dtype, requires_grad=True)
        y = torch.randint(0, c, (k, b), generator=g)
        att = torch.rand(k, b, 7, generator=g, dtype=dtype, requires_grad=True)

        def one(bufs, logits, target, attention, base=losses[0]):
            return functional_call(base, bufs, (logits, target), {"attention": attention, "validate": False})

        batched = torch.vmap(one)(buffers, z, y, att)
        grads = torch.autograd.grad(batched.sum(), (z, att), allow_unused=True)
        looped = torch.stack([loss(z[i], y[i], attention=att[i]) for i, loss in enumerate(losses)])
        expected = torch.autograd.grad(looped.sum(), (z, att), allow_unused=True)
        assert "CppNode" in batched.grad_fn.name(), f"{name}: the fused kernel did not run under vmap"
        assert torch.equal(batched, looped), name
        for got, want in zip(grads, expected):
            assert (got is None and want is None) or torch.equal(got, want), name
        # unbatched target and attention (expanded by the vmap rule), and vmap over another dimension
        same = torch.vmap(
            lambda lg, loss=losses[0], t=y[0], a=att[0]: loss(lg, t, attention=a, validate=False), in_dims=1
        )
        want = torch.stack([losses[0](z[i], y[0], attention=att[0]) for i in range(k)])
        assert torch.equal(same(z.transpose(0, 1)), want), name


def test_functorch_tells_a_batched_tensor_from_a_plain_one():
    """_internals.is_batched (torch._C._functorch.is_batchedtensor, private): true for a value vmap stacks per
    replica, false for one every replica shares. If a new torch drops it, fused groups of loss configs
    (training/group.py) lose their per-replica parameters: revisit losses/base.py param_value."""
    import torch

    from tune_losses._internals import is_batched

    seen = []
    torch.vmap(lambda t: seen.append(is_batched(t)) or t)(torch.zeros(3))
    assert seen == [True] and not is_batched(torch.zeros(3))


def test_a_store_copied_from_the_schema_template_equals_one_built_by_mlflow(tmp_path, monkeypatch):
    """tracking/store.py copies one empty store per MLflow version and repoints its Default experiment
    (_internals.set_default_experiment_location): the copy must hold MLflow's schema at its current migration, and
    MLflow must open it, as it opens a store it built."""
    import sqlite3

    from mlflow import MlflowClient

    from tune_losses.tracking.store import create_sqlite_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def schema(db):
        """Each table's and index's definition, its clauses as a set: MLflow's migrations rebuild tables with their
        constraints in an order that varies from one build to the next."""
        con = sqlite3.connect(db)
        try:
            rows = con.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
            tables = {
                (kind, name, frozenset(ln.strip().rstrip(",") for ln in sql.splitlines())) for kind, name, sql in rows
            }
            return tables, con.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            con.close()

    built = tmp_path / "built.db"
    MlflowClient(tracking_uri=f"sqlite:///{built}").search_experiments()
    for name in ("first.db", "copied.db"):  # the first builds the template, the second is a copy of it
        create_sqlite_store(tmp_path / name)
        assert schema(tmp_path / name) == schema(built), changed("its SQLite schema", "mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'copied.db'}")
    default = client.get_experiment("0")
    assert default.artifact_location == (tmp_path / "mlartifacts" / "0").as_uri(), changed("the experiments table")
    assert client.get_run(client.create_run("0").info.run_id).info.artifact_uri.startswith(default.artifact_location)


def test_the_driver_prints_what_the_cluster_pushes_through_the_printer_console_py_routes():
    from ray._private import worker

    source = inspect.getsource(worker.listen_error_messages)
    assert "print_to_stdstream(" in source and '"pid": "raylet"' in source, changed(
        "ray._private.worker.listen_error_messages (no longer prints through print_to_stdstream with pid "
        "'raylet'): a lost node's dumps reach the console again at the default verbosity"
    )
    said = []
    restore = _internals.route_cluster_messages(said.append)
    try:
        worker.print_to_stdstream({"lines": ["a", "b"], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    finally:
        restore()
    assert said == ["a\nb"] and worker.print_to_stdstream.__name__ == "print_to_stdstream"


def test_what_the_warm_rays_keeper_uses_is_there():
    """tuning/warm_ray.py: the job table, the raylet's PrestartWorkers RPC and Ray's token switches."""
    import ray._private.state as state
    from ray._private.authentication import authentication_token_setup, authentication_utils
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc, runtime_environment_pb2

    assert callable(getattr(state, "jobs", None)), changed("ray._private.state.jobs (gone): the keeper sees no job end")
    assert "IsDead" in inspect.getsource(state.GlobalState.job_table), changed("the job table's IsDead")
    fields = set(node_manager_pb2.PrestartWorkersRequest.DESCRIPTOR.fields_by_name)
    assert {"language", "num_workers", "keep_alive_duration_secs", "runtime_env_info"} <= fields, changed(
        f"PrestartWorkersRequest (fields {sorted(fields)}): the keeper cannot start warm workers again"
    )
    stub = node_manager_pb2_grpc.NodeManagerServiceStub(init_grpc_channel("127.0.0.1:1"))
    assert hasattr(stub, "PrestartWorkers"), changed("NodeManagerService (no PrestartWorkers)")
    assert common_pb2.PYTHON is not None and runtime_environment_pb2.RuntimeEnvInfo(serialized_runtime_env="{}")
    assert callable(authentication_token_setup._enable_token_auth), changed("_enable_token_auth (gone)")
    assert callable(authentication_utils.is_token_auth_enabled), changed("is_token_auth_enabled (gone)")


EXIT_SCRIPT = """
import atexit, sys, threading, time
from pathlib import Path
from tune_losses._internals import exit_without_teardown

out = Path(sys.argv[1])
def late():  # a thread that is not a daemon, still writing when the command returns
    time.sleep(0.3)
    (out / "thread").write_text("done")
threading.Thread(target=late).start()
atexit.register(lambda: (out / "atexit").write_text("ran"))
print("printed, not flushed", end="")
exit_without_teardown(3)
"""


def test_the_commands_exit_joins_threads_runs_atexit_and_keeps_the_code(tmp_path):
    """cli.run leaves through exit_without_teardown: Python's own exit steps (threading._shutdown,
    atexit._run_exitfuncs, Python 3.11) must still be there, and do what the interpreter's exit does."""
    import atexit
    import subprocess
    import sys
    import threading

    assert callable(getattr(threading, "_shutdown", None)) and callable(getattr(atexit, "_run_exitfuncs", None)), (
        "Python no longer has threading._shutdown or atexit._run_exitfuncs: revisit _internals.exit_without_teardown"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as piped
    command = [sys.executable, "-c", EXIT_SCRIPT, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "printed, not flushed"
    assert (tmp_path / "thread").read_text() == "done" and (tmp_path / "atexit").read_text() == "ran"
