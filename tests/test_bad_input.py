"""Bad input, table-driven: each case is one `tune-losses sweep` call that must fail before anything starts, with
one message naming the file (or option), the field and what is allowed, exit code 2, no Ray started and
nothing written (no MLflow store, no Ray Tune directory).

All cases run in one child process (one import of the package instead of one per case); the child reports,
per case, the exit code, what went to stderr and whether Ray was started.
"""

import json
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

# id: (space overrides, or raw YAML text, or None for a missing file; extra CLI args; what the message says
#      [; environment variables for that call])
CASES = {
    "malformed_yaml": ("name: t\nparams: {loss.a: [1, 2\n", [], ["malformed YAML"]),
    "not_a_mapping": ("- name\n- t\n", [], ["(top level): must be a mapping"]),
    "no_such_file": (None, [], ["no such search space", "bundled ones: "]),
    "unknown_key": ({"serch": {}}, [], ["serch: unknown field"]),
    "unknown_nested_key": ({"train": {"optimizer": {"name": "sgd", "lrr": 0.1}}}, [],
                           ["train.optimizer.lrr: unknown field"]),
    "wrong_type_epochs": ({"train": {"epochs": "ten"}}, [], ["train.epochs: Input should be a valid integer"]),
    "wrong_type_cpu": ({"resources": {"cpu": "two"}}, [], ["resources.cpu: Input should be a valid number"]),
    "a_le_1": ({"params": {"loss.a": {"grid": [0.5, 5]}}}, [], ["params.loss.a: a=0.5 is not allowed", "> 1"]),
    "lambda_lt_0": ({"train": CC, "params": {"loss.lambda": {"grid": [-0.5, 1.0]}}}, [],
                    ["params.loss.lambda: lambda=-0.5 is not allowed", ">= 0"]),
    "gamma_lt_0": ({"train": FOCAL, "params": {"loss.gamma": {"uniform": [-1.0, 2.0]}}}, [],
                   ["params.loss.gamma: gamma=-1.0 is not allowed", ">= 0"]),
    "batch_0": ({"params": {"batch_size": {"grid": [0, 8]}}}, [],
                ["params.batch_size: value 0", "greater than or equal to 1"]),
    "epochs_0": ({"train": {"epochs": 0}}, [], ["train.epochs: Input should be greater than or equal to 1"]),
    "reduction_factor_le_1": ({"search": {**ASHA, "scheduler": {"name": "asha", "reduction_factor": 1}}}, [],
                              ["search.scheduler.reduction_factor: Input should be greater than 1"]),
    "grace_gt_max_t": ({"search": {**ASHA, "scheduler": {"name": "asha", "max_t": 2, "grace_period": 5}}}, [],
                       ["search.scheduler.grace_period: must be <= max_t (2)"]),
    "unknown_loss": ({"train": {"loss": {"name": "nope"}}}, [], ["train.loss.name: unknown loss 'nope'", "'dal'"]),
    "unknown_model": ({"train": {"model": {"name": "resnet1000"}}}, [],
                      ["train.model.name: unknown model 'resnet1000'", "'resnet18'"]),
    "unknown_dataset": ({"train": {"dataset": {"name": "imagenet22k"}}}, [],
                        ["train.dataset.name: unknown dataset 'imagenet22k'", "'digits'"]),
    "unknown_searcher": ({"search": {"searcher": "hyperopt"}}, [],
                         ["search.searcher: Input should be 'grid', 'random' or 'optuna'"]),
    "unknown_scheduler": ({"search": {"scheduler": {"name": "pbt"}}}, [],
                          ["search.scheduler.name: Input should be 'asha' or 'fifo'"]),
    "unknown_metric": ({"search": {"metric": "accuracy"}}, [], ["search.metric: Input should be 'val_acc'"]),
    "empty_grid": ({"params": {"loss.a": {"grid": []}}}, [], ["params.loss.a.grid: List should have at least 1"]),
    "grid_with_optuna": ({"search": {"searcher": "optuna"}}, [], ["params.loss.a: grid domains need searcher grid"]),
    "unknown_domain": ({"params": {"loss.a": {"between": [2, 9]}}}, [], ["params.loss.a.between: unknown field"]),
    "loguniform_le_0": ({"params": {"loss.a": {"loguniform": [0, 9]}}}, [], ["loguniform needs low > 0"]),
    "unknown_loss_param": ({"params": {"loss.b": {"grid": [1]}}}, [], ["params.loss.b: bad parameters", "'dal'"]),
    "unknown_model_param": ({"params": {"model.widht": {"grid": [3]}}}, [],
                            ["params.model.widht: model 'mlp' takes no parameter ['widht']; allowed:"]),
    "unknown_plugin": ({"train": {"plugins": ["no_such_plugin"]}}, [],
                       ["train.plugins: cannot import 'no_such_plugin'"]),
    "gpu_on_cpu_machine": ({"resources": {"cpu": 1, "gpu": 0.5}}, [],
                           ["resources.gpu: 0.5 GPU per trial", "0 (no"]),
    "missing_data_files": ({"train": {"dataset": {"name": "cifar10", "root": "/nonexistent/data"}}}, [],
                           ["train.dataset: dataset='cifar10': cifar-10-batches-py/",
                            "is not in root='/nonexistent/data'"]),
    "unreachable_tracking_uri": ({}, ["--tracking-uri", "http://user:secret@127.0.0.1:{port}"],
                                 ["--tracking-uri='http://***@127.0.0.1:{port}': no MLflow server answers"]),
    "unreachable_ray_address": ({}, ["--address", "127.0.0.1:{port}"],
                                ["--address='127.0.0.1:{port}': no Ray cluster answers", "ray start --head"]),
    "resume_missing_sweep": ({}, ["--resume"], ["--resume: no sweep named 't'"]),
    "unreachable_RAY_ADDRESS": ({}, [], ["RAY_ADDRESS='127.0.0.1:{port}': no Ray cluster answers"],
                                {"RAY_ADDRESS": "127.0.0.1:{port}"}),
    "malformed_address": ({}, ["--address", "head-without-port"], ["--address='head-without-port' is not allowed"]),
}
OPTION_CASES = {"unreachable_tracking_uri", "unreachable_ray_address", "resume_missing_sweep",
                "unreachable_RAY_ADDRESS", "malformed_address"}

CHILD = r"""
import contextlib, io, json, os, sys
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
    calls, files = {}, {}
    for case, (space, extra, _, *env) in CASES.items():
        d = root / case
        d.mkdir()
        path = d / "space.yaml"
        if isinstance(space, dict):
            write_space(path, **space)
        elif isinstance(space, str):
            path.write_text(space)
        files[case] = path
        calls[case] = (["sweep", str(path), "--tracking-uri", f"sqlite:///{d}/mlflow.db", "--storage",
                        str(d / "ray")] + [a.format(port=port) for a in extra],
                       {k: v.format(port=port) for k, v in (env[0] if env else {}).items()})
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(calls)], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "RAY_ADDRESS": ""})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS")), None)
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(line.removeprefix("RESULTS")), files, port


def test_there_are_at_least_20_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_before_anything_starts(outcomes, case):
    results, files, port = outcomes
    got, path = results[case], files[case]
    assert got["rc"] == 2, got
    message = got["stderr"]
    if case not in OPTION_CASES:
        assert str(path) in message  # the file
    for expected in CASES[case][2]:
        assert expected.format(port=port) in message, message
    assert "secret" not in message
    assert not got["ray"], "Ray was started"
    assert sorted(p.name for p in path.parent.iterdir()) == (["space.yaml"] if path.exists() else []), \
        "something was written"
