"""The function each Ray Tune trial runs: the one `train`, with checkpoints and results through Ray."""

from __future__ import annotations

import tempfile

import ray
import torch
# torch.optim imports torch._dynamo when the first optimizer is made (~1.8 s on 2 cores): imported here, a
# prestarted worker (workers.py) pays for it before the sweep starts, not during a trial's first epoch.
import torch._dynamo  # noqa: F401
from ray import tune

from tune_losses.spaces import Space, trial_config
from tune_losses.training import save_checkpoint, train

from .workers import trial_environment


def run_trial(config: dict, space_json: dict, data=None) -> None:
    """One trial. ``data`` is the sweep's Splits, from Ray's object store (None: the trial builds its own)."""
    trial_environment()
    space = Space.model_validate(space_json)
    # Use exactly the CPUs this trial reserved: torch otherwise starts one thread per core of the node, and
    # concurrent trials oversubscribe the cores (two 1-CPU trials on 2 cores ran ~5x slower).
    torch.set_num_threads(max(1, int(space.resources.cpu)))
    cfg = trial_config(space, config.get("params", {}))
    node = ray.get_runtime_context().get_node_id()  # which node of the cluster ran each epoch
    last: dict = {}

    def report(metrics: dict, state: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(state, tmp)
            tune.report({**metrics, "node_id": node}, checkpoint=tune.Checkpoint.from_directory(tmp))
        last.clear()
        last.update(metrics)

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            result = train(cfg, report=report, resume_from=directory, splits=data, gpu_ids=ray.get_gpu_ids())
    else:
        result = train(cfg, report=report, splits=data, gpu_ids=ray.get_gpu_ids())
    if result.get("status") == "diverged":
        # Stop with a status and a reason, not NaN metrics: the metric keeps its last finite value (or the worst
        # possible one when the first epoch diverged) so schedulers and searchers can rank the trial.
        metric, mode = space.search.metric, space.search.mode
        worst = float("-inf") if mode == "max" else float("inf")
        final = {k: v for k, v in last.items() if k != "test_confusion"}
        final.update({metric: last.get(metric, worst), "epoch": result["epoch"], "trial_status": "diverged",
                      "reason": result["reason"]})
        tune.report(final)
