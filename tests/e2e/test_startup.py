"""A sweep's start: Ray starts in a thread while the driver sets up (tuning/ray_runtime.py RayStart), and the driver
never imports the trial module (torch's compiler stack, imported by torch.optim, is the trials' cost)."""

import json
import subprocess
import sys

import pytest

from helpers import write_space

CHILD = r"""
import json, sys
import ray
from tune_losses.tuning.runner import run_sweep
result = run_sweep(sys.argv[1], tracking_uri=sys.argv[2], storage=sys.argv[3], verbose=0, num_cpus=2,
                   make_report=False)
# the Ray that RayStart started in its thread still answers after the sweep (its processes outlive nothing)
answer = ray.get(ray.remote(lambda: 42).remote(), timeout=60)
print("RESULT" + json.dumps({
    "trials": result.summary["trials"], "answer": answer,
    "driver_imported": sorted(m for m in ("tune_losses.tuning.trial", "torch._dynamo") if m in sys.modules),
}))
"""


@pytest.mark.slow
def test_a_sweep_starts_ray_in_a_thread_and_the_driver_skips_the_trial_module(tmp_path):
    space = write_space(tmp_path / "s.yaml", train={"epochs": 1, "repeats": 1})
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(space), f"sqlite:///{tmp_path}/m.db", str(tmp_path / "ray")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, out.stderr[-3000:]
    got = json.loads(line.removeprefix("RESULT"))
    assert got == {"trials": 2, "answer": 42, "driver_imported": []}
