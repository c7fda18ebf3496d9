"""Fused trials through real sweeps (issue 22): the DAL Table II grid (the bundled ``dal_a_table2``: 8 values of
``a``, the 32-unit head, SGD) with ``--repeats`` seeds per value on synthetic features of the paper's shape
(benchmarks/paper_protocol.py ``synthetic_features``), run as two real sweeps side by side in one process on
one local Ray: ``search.fuse: auto`` (the planner's groups, one vectorised model each) and ``search.fuse: off``
(one trial per config). Rounds alternate which goes first; the ratio is the median of unfused over fused wall
time (each ``run_sweep`` whole: the parent run, every trial's run, params, per-epoch metrics, checkpoints, no
report). Records equal: every config's run holds, per epoch and per seed, the same metrics in both (``--rel``).

    PYTHONPATH=. .venv/bin/python benchmarks/fused_sweeps.py [--epochs 30] [--repeats 16] [--rounds 1] [--cpus 2]

Its last line: ``fused vs unfused: <X.X>x (records equal: yes|no)``. benchmarks/fused.py compares the same grid
at the training level (no Ray, no MLflow).
"""

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from paper_protocol import synthetic_features  # noqa: E402


def sweep(name: str, fuse: str, table: Path, work: Path, args) -> tuple[float, str]:
    """One real sweep of the grid; its wall time and parent run id."""
    from tune_losses.tuning.runner import run_sweep

    overrides = {
        "train.dataset": {"name": "features", "options": {"path": str(table)}},
        "train.epochs": args.epochs,
        "train.repeats": args.repeats,
        "search.fuse": fuse,
        "search.max_concurrent": args.cpus,
    }
    start = time.perf_counter()
    result = run_sweep(
        "dal_a_table2",
        name=name,
        tracking_uri=f"sqlite:///{work}/mlflow.db",
        storage=str(work / "ray"),
        overrides=overrides,
        verbose=0,
        num_cpus=args.cpus,
        make_report=False,
    )
    return time.perf_counter() - start, result.parent_run_id


def histories(c, parent_run_id: str) -> dict:
    """Each config's run, by its swept value: every metric's (epoch, value) history, timings aside."""
    from tune_losses import tracking

    exp = c.get_run(parent_run_id).info.experiment_id
    out = {}
    for run in tracking.trial_runs(c, parent_run_id, exp):
        keys = [k for k in run.data.metrics if not k.startswith("seconds_")]
        out[run.data.params["swept.loss.a"]] = {
            k: [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, k)] for k in keys
        }
    return out


def differences(fused: dict, alone: dict, rel: float) -> list[str]:
    found = [] if fused.keys() == alone.keys() else [f"configs {sorted(fused)} vs {sorted(alone)}"]
    for value in fused.keys() & alone.keys():
        a, b = fused[value], alone[value]
        if a.keys() != b.keys():
            found.append(f"a={value}: metrics {sorted(a.keys() ^ b.keys())}")
        for key in a.keys() & b.keys():
            if [s for s, _ in a[key]] != [s for s, _ in b[key]]:
                found.append(f"a={value} {key}: epochs {[s for s, _ in a[key]]} vs {[s for s, _ in b[key]]}")
            elif not all(math.isclose(x, y, rel_tol=rel, abs_tol=1e-6) for (_, x), (_, y) in zip(a[key], b[key])):
                found.append(f"a={value} {key}: values differ")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=16, help="seeds per value of a")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cpus", type=int, default=2, help="the local Ray's CPUs (one per trial or group)")
    parser.add_argument("--rel", type=float, default=1e-4, help="records equal: relative tolerance")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tune_losses import tracking
    from tune_losses.tuning.ray_runtime import init_ray

    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.cpus} CPUs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["TUNE_LOSSES_HOME"] = str(work / "home")
        table = synthetic_features(work / "features" / "synthetic-vgg16shape.parquet", 0.07)
        init_ray(num_cpus=args.cpus, verbose=0)  # one Ray for both: neither pays its start
        times: dict[str, list[float]] = {"auto": [], "off": []}
        parents: dict[str, str] = {}
        for r in range(args.rounds):
            for fuse in ("auto", "off") if r % 2 == 0 else ("off", "auto"):
                took, parents[fuse] = sweep(f"{fuse}_{r}", fuse, table, work, args)
                times[fuse].append(took)
                print(f"round {r + 1}: fuse {fuse}: {took:.1f} s", flush=True)
        c = tracking.client(f"sqlite:///{work}/mlflow.db")
        found = differences(histories(c, parents["auto"]), histories(c, parents["off"]), args.rel)
    fused, alone = statistics.median(times["auto"]), statistics.median(times["off"])
    print(f"fused: median {fused:.1f} s; unfused: median {alone:.1f} s ({args.rounds} rounds)")
    print(f"records: {'equal' if not found else f'{len(found)} differences, first: {found[:3]}'}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"fused vs unfused: {alone / fused:.1f}x (records equal: {'yes' if not found else 'no'})")


if __name__ == "__main__":
    main()
