"""Bad input, table-driven: each case is one `tune-losses sweep` call (or `train`, `report`, `best`, as COMMANDS
says) that must fail before anything starts, with one message naming the file (or option), the field and what is
allowed, in the project's words (no traceback, no pydantic URL), exit code 2, no Ray started and nothing written
(no MLflow store, no Ray Tune directory, no output file).

All cases run in one child process (one import of the package instead of one per case); the child reports,
per case, the exit code, what went to stderr and whether Ray was started.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from helpers import write_space


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


CC = {"dataset": {"name": "digits"}, "model": {"name": "small_cnn"}, "loss": {"name": "cc"}, "epochs": 2}
FOCAL = {"dataset": {"name": "digits"}, "model": {"name": "mlp"}, "loss": {"name": "focal"}, "epochs": 2}
ASHA = {"searcher": "grid", "scheduler": {"name": "asha", "max_t": 3, "grace_period": 1, "reduction_factor": 2}}
INF, NAN = float("inf"), float("nan")
NESTED_DUPLICATE = "name: t\ntrain:\n  dataset: {name: digits}\n  optimizer:\n    lr: 0.1\n    lr: 0.5\n"
TRAIN = "dataset: {name: digits}\nmodel: {name: mlp}\nepochs: 1\n"

# id: (space overrides, or raw YAML text, or None for a missing file; extra CLI args; what the message says
#      [; environment variables for that call])
CASES = {
    "malformed_yaml": ("name: t\nparams: {loss.a: [1, 2\n", [], ["malformed YAML"]),
    "not_a_mapping": ("- name\n- t\n", [], ["(top level): must be a mapping"]),
    "no_such_file": (None, [], ["no such search space", "bundled ones: "]),
    "unknown_key": ({"serch": {}}, [], ["serch: unknown field"]),
    "unknown_nested_key": (
        {"train": {"optimizer": {"name": "sgd", "lrr": 0.1}}},
        [],
        ["train.optimizer.lrr: unknown field"],
    ),
    "wrong_type_epochs": ({"train": {"epochs": "ten"}}, [], ["train.epochs: Input should be a valid integer"]),
    "wrong_type_cpu": ({"resources": {"cpu": "two"}}, [], ["resources.cpu: Input should be a valid number"]),
    "a_le_1": ({"params": {"loss.a": {"grid": [0.5, 5]}}}, [], ["params.loss.a: a=0.5 is not allowed", "> 1"]),
    "lambda_lt_0": (
        {"train": CC, "params": {"loss.lambda": {"grid": [-0.5, 1.0]}}},
        [],
        ["params.loss.lambda: lambda=-0.5 is not allowed", ">= 0"],
    ),
    "gamma_lt_0": (
        {"train": FOCAL, "params": {"loss.gamma": {"uniform": [-1.0, 2.0]}}},
        [],
        ["params.loss.gamma: gamma=-1.0 is not allowed", ">= 0"],
    ),
    "batch_0": (
        {"params": {"batch_size": {"grid": [0, 8]}}},
        [],
        ["params.batch_size: value 0", "greater than or equal to 1"],
    ),
    "epochs_0": ({"train": {"epochs": 0}}, [], ["train.epochs: Input should be greater than or equal to 1"]),
    "reduction_factor_le_1": (
        {"search": {**ASHA, "scheduler": {"name": "asha", "reduction_factor": 1}}},
        [],
        ["search.scheduler.reduction_factor: Input should be greater than 1"],
    ),
    "grace_gt_max_t": (
        {"search": {**ASHA, "scheduler": {"name": "asha", "max_t": 2, "grace_period": 5}}},
        [],
        ["search.scheduler.grace_period: must be <= max_t (2)"],
    ),
    "unknown_loss": ({"train": {"loss": {"name": "nope"}}}, [], ["train.loss.name: unknown loss 'nope'", "'dal'"]),
    "unknown_model": (
        {"train": {"model": {"name": "resnet1000"}}},
        [],
        ["train.model.name: unknown model 'resnet1000'", "'resnet18'"],
    ),
    "unknown_dataset": (
        {"train": {"dataset": {"name": "imagenet22k"}}},
        [],
        ["train.dataset.name: unknown dataset 'imagenet22k'", "'digits'"],
    ),
    "unknown_searcher": (
        {"search": {"searcher": "hyperopt"}},
        [],
        ["search.searcher: Input should be 'grid', 'random' or 'optuna'"],
    ),
    "unknown_scheduler": (
        {"search": {"scheduler": {"name": "pbt"}}},
        [],
        ["search.scheduler.name: Input should be 'asha', 'fifo' or 'halving'"],
    ),
    "unknown_metric": ({"search": {"metric": "accuracy"}}, [], ["search.metric: Input should be 'val_acc'"]),
    "empty_grid": ({"params": {"loss.a": {"grid": []}}}, [], ["params.loss.a.grid: List should have at least 1"]),
    "grid_with_optuna": ({"search": {"searcher": "optuna"}}, [], ["params.loss.a: grid domains need searcher grid"]),
    "unknown_domain": ({"params": {"loss.a": {"between": [2, 9]}}}, [], ["params.loss.a.between: unknown field"]),
    "loguniform_le_0": ({"params": {"loss.a": {"loguniform": [0, 9]}}}, [], ["loguniform needs low > 0"]),
    "unknown_loss_param": ({"params": {"loss.b": {"grid": [1]}}}, [], ["params.loss.b: bad parameters", "'dal'"]),
    "unknown_model_param": (
        {"params": {"model.widht": {"grid": [3]}}},
        [],
        ["params.model.widht: model 'mlp' takes no parameter ['widht']; allowed:"],
    ),
    "unknown_plugin": (
        {"train": {"plugins": ["no_such_plugin"]}},
        [],
        ["train.plugins: cannot import 'no_such_plugin'"],
    ),
    "gpu_on_cpu_machine": ({"resources": {"cpu": 1, "gpu": 0.5}}, [], ["resources.gpu: 0.5 GPU per trial", "0 (no"]),
    "missing_data_files": (
        {"train": {"dataset": {"name": "cifar10", "root": "/nonexistent/data"}}},
        [],
        ["train.dataset: dataset='cifar10': cifar-10-batches-py/", "is not in root='/nonexistent/data'"],
    ),
    "unreachable_tracking_uri": (
        {},
        ["--tracking-uri", "http://user:secret@127.0.0.1:{port}"],
        ["--tracking-uri='http://***@127.0.0.1:{port}': no MLflow server answers"],
    ),
    "unreachable_ray_address": (
        {},
        ["--address", "127.0.0.1:{port}"],
        ["--address='127.0.0.1:{port}': no Ray cluster answers", "ray start --head"],
    ),
    "resume_missing_sweep": ({}, ["--resume"], ["--resume: no sweep named 't'"]),
    "unreachable_RAY_ADDRESS": (
        {},
        [],
        ["RAY_ADDRESS='127.0.0.1:{port}': no Ray cluster answers"],
        {"RAY_ADDRESS": "127.0.0.1:{port}"},
    ),
    "malformed_address": ({}, ["--address", "head-without-port"], ["--address='head-without-port' is not allowed"]),
    # resources one trial asks for that no node has: Ray would queue the trial forever
    "cpu_more_than_machine": (
        {"resources": {"cpu": 100000}},
        [],
        ["resources.cpu: 100000 CPU per trial is more than the machine has", "allowed: > 0"],
    ),
    # the sweep's name is a directory under --storage
    "name_is_path": ({}, ["--name", "../../x"], ["--name='../../x' is not allowed", "allowed: letters, digits"]),
    "name_empty": ({}, ["--name", ""], ["--name='' is not allowed", "allowed: letters, digits"]),
    "space_name_hidden": ({"name": ".t"}, [], ["name: '.t' is not allowed", "not starting with '.'"]),
    "space_name_dotdot": ({"name": "a..b"}, [], ["name: 'a..b' is not allowed", "no '..'"]),
    # non-finite numbers
    "inf_lr": (
        {"train": {"optimizer": {"name": "sgd", "lr": INF}}},
        [],
        ["train.optimizer.lr: Input should be a finite number"],
    ),
    "inf_loss_param": (
        {"train": {"loss": {"name": "dal", "params": {"a": INF}}}},
        [],
        ["train.loss.params: a=inf is not allowed; allowed: finite numbers"],
    ),
    "nan_grid_value": (
        {"params": {"loss.a": {"grid": [5.0, NAN]}}},
        [],
        ["params.loss.a: grid[1]=nan is not allowed; allowed: finite numbers"],
    ),
    "inf_uniform_bound": (
        {"params": {"optimizer.lr": {"uniform": [0.01, INF]}}},
        [],
        ["params.optimizer.lr.uniform.1: Input should be a finite number"],
    ),
    "inf_fixed_value": (
        {"params": {"optimizer.weight_decay": {"value": INF}}},
        [],
        ["params.optimizer.weight_decay: value=inf is not allowed; allowed: finite numbers"],
    ),
    # a key given twice (YAML keeps the last one silently)
    "duplicate_key": (
        "name: t\nname: u\n",
        [],
        ["duplicate key 'name' at line 2 (first at line 1)", "allowed: each key once"],
    ),
    "duplicate_nested_key": (NESTED_DUPLICATE, [], ["duplicate key 'lr' at line 6 (first at line 5)"]),
    "train_duplicate_key": (TRAIN + "epochs: 3\n", [], ["duplicate key 'epochs' at line 4 (first at line 3)"]),
    # tracking URIs MLflow cannot serve
    "tracking_uri_unknown_scheme": (
        {},
        ["--tracking-uri", "foo://x"],
        ["--tracking-uri='foo://x': MLflow cannot serve", "allowed: ", "sqlite:", "http:"],
    ),
    "tracking_uri_typo": (
        {},
        ["--tracking-uri", "htp://127.0.0.1:{port}"],
        ["--tracking-uri='htp://127.0.0.1:{port}': MLflow cannot serve", "https:"],
    ),
    "tracking_uri_bad_database": (
        {},
        ["--tracking-uri", "mysql2://u:secret@127.0.0.1:{port}/db"],
        ["--tracking-uri='mysql2://***@127.0.0.1:{port}/db': MLflow cannot serve"],
    ),
    "tracking_uri_unknown_driver": (
        {},
        ["--tracking-uri", "postgresql+nodriver://127.0.0.1:{port}/db"],
        ["its database driver cannot be loaded", "allowed: SCHEME+DRIVER://"],
    ),
    "MLFLOW_TRACKING_URI_unknown_scheme": (
        {},
        [],
        ["MLFLOW_TRACKING_URI='foo://x': MLflow cannot serve", "sqlite:"],
        {"MLFLOW_TRACKING_URI": "foo://x"},
    ),
    "train_tracking_uri_unknown_scheme": (
        TRAIN,
        ["--tracking-uri", "foo://x"],
        ["--tracking-uri='foo://x': MLflow cannot serve"],
    ),
    # read-only commands on a store that does not exist
    "report_missing_store": (None, [], ["--tracking-uri='sqlite:///{dir}/mlflow.db': no MLflow store exists there"]),
    "best_missing_store": (None, [], ["--tracking-uri='sqlite:///{dir}/mlflow.db': no MLflow store exists there"]),
    # `train` errors read as the project's own
    "train_epochs_0": (
        "dataset: {name: digits}\nepochs: 0\n",
        [],
        ["invalid training config", "  epochs: Input should be greater than or equal to 1"],
    ),
    "train_nested_inf_lr": (
        "train: {epochs: 2, optimizer: {lr: .inf}}\n",
        [],
        ["invalid training config", "  train.optimizer.lr: Input should be a finite number"],
    ),
    "train_not_a_mapping": ("- dataset\n- epochs\n", [], ["invalid training config", "(top level): must be a mapping"]),
    # more kinds, found trying the CLI as a new user
    "set_through_a_value": (
        {},
        ["--set", "train.epochs.x=3"],
        ["--set train.epochs.x: train.epochs is 3, not a mapping", "allowed: a path to a field"],
    ),
    "set_malformed_value": ({}, ["--set", "train.epochs=[1"], ["--set 'train.epochs=[1': malformed YAML"]),
    "not_utf8": (
        "name: t\ndescription: caf\xe9\n".encode("latin-1"),
        [],
        ["not UTF-8 text (byte 0xe9 at line 2)", "allowed: a YAML file in UTF-8"],
    ),
    "space_is_a_directory": (None, [], ["is a directory; allowed: a YAML file"]),
    "empty_file": ("", [], ["(top level): must be a mapping"]),
    "sqlite_path_is_a_directory": (
        {},
        ["--tracking-uri", "sqlite:///{dir}/store"],
        ["--tracking-uri='sqlite:///{dir}/store': {dir}/store is a directory", "allowed: the path of a SQLite file"],
    ),
    "negative_data_seed": (
        {"train": {"data_seed": -1}},
        [],
        ["train.data_seed: Input should be greater than or equal to 0"],
    ),
    "best_export_missing_dir": (
        None,
        ["--export", "{dir}/missing/best.yaml"],
        ["--export='{dir}/missing/best.yaml': the directory {dir}/missing does not exist"],
    ),
    "report_out_is_a_file": (None, ["--out", "{dir}/out"], ["--out='{dir}/out' is a file; allowed: a directory"]),
    "max_concurrent_0": (
        {"search": {"max_concurrent": 0}},
        [],
        ["search.max_concurrent: Input should be greater than or equal to 1"],
    ),
}
COMMANDS = {case: case.split("_")[0] for case in CASES if case.split("_")[0] in ("train", "report", "best")}
SETUP = {
    "space_is_a_directory": lambda d: (d / "space.yaml").mkdir(),
    "sqlite_path_is_a_directory": lambda d: (d / "store").mkdir(),
    "report_out_is_a_file": lambda d: (d / "out").write_text(""),
}
OPTION_CASES = {
    "unreachable_tracking_uri",
    "unreachable_ray_address",
    "resume_missing_sweep",
    "unreachable_RAY_ADDRESS",
    "malformed_address",
    "name_is_path",
    "name_empty",
    "tracking_uri_unknown_scheme",
    "tracking_uri_typo",
    "tracking_uri_bad_database",
    "tracking_uri_unknown_driver",
    "MLFLOW_TRACKING_URI_unknown_scheme",
    "train_tracking_uri_unknown_scheme",
    "report_missing_store",
    "best_missing_store",
    "set_malformed_value",
    "sqlite_path_is_a_directory",
    "best_export_missing_dir",
    "report_out_is_a_file",
}

CHILD = r"""
import contextlib, io, json, os, sys, traceback
import ray
from tune_losses.cli import main
out = {}
for case, (args, env) in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    with contextlib.redirect_stderr(err):
        try:
            rc = main(args)
        except SystemExit as exc:
            rc = exc.code
        except Exception:  # a traceback: this case fails, the others still run
            traceback.print_exc()
            rc = "traceback"
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    out[case] = {"rc": rc, "stderr": err.getvalue(), "ray": ray.is_initialized()}
    if ray.is_initialized():
        ray.shutdown()
print("RESULTS" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    port = closed_port()
    calls, files, before = {}, {}, {}
    for case, (space, extra, _, *env) in CASES.items():
        d = root / case
        d.mkdir()
        path = d / "space.yaml"
        if isinstance(space, dict):
            write_space(path, **space)
        elif isinstance(space, str):
            path.write_text(space)
        elif isinstance(space, bytes):
            path.write_bytes(space)
        SETUP.get(case, lambda d: None)(d)
        files[case], before[case] = path, tree(d)
        fmt = {"port": port, "dir": d}
        env = {k: v.format(**fmt) for k, v in (env[0] if env else {}).items()}
        command = COMMANDS.get(case, "sweep")
        args = [command, str(path) if command in ("sweep", "train") else "t"]
        if "MLFLOW_TRACKING_URI" not in env:
            args += ["--tracking-uri", f"sqlite:///{d}/mlflow.db"]
        if command == "sweep":
            args += ["--storage", str(d / "ray")]
        calls[case] = (args + [a.format(**fmt) for a in extra], env)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RAY_ADDRESS": "", "MLFLOW_TRACKING_URI": ""},
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(line.removeprefix("RESULTS")), files, before, port


def tree(d) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_there_are_at_least_20_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_before_anything_starts(outcomes, case):
    results, files, before, port = outcomes
    got, path = results[case], files[case]
    assert got["rc"] == 2, got
    message = got["stderr"]
    if case not in OPTION_CASES:
        assert str(path) in message  # the file
    for expected in CASES[case][2]:
        assert expected.format(port=port, dir=path.parent) in message, message
    assert message.startswith("error: ") and "Traceback" not in message and "pydantic.dev" not in message, message
    assert "secret" not in message
    assert not got["ray"], "Ray was started"
    assert tree(path.parent) == before[case], "something was written"


def test_mlflow_tracking_schemes_come_from_its_registry():
    """tracking_schemes() reads MLflow's private registry of tracking stores (there is no public list): if MLflow
    moves it, this fails here instead of the check silently falling back to a fixed list."""
    from tune_losses.tracking.store import _store_registry, tracking_schemes

    assert hasattr(_store_registry(), "get_store_builder")
    assert {"file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks"} <= set(tracking_schemes())
