"""Fused trials against one trial per config, through real sweeps side by side in one run (issue 22).

Two grids, each run as two real sweeps on one local Ray in this process (``run_sweep``: the parent run, one MLflow
run per config with its params, per-epoch metrics, replica table and confusion matrix, checkpoints; no report):
``search.fuse: auto`` (the planner's groups, one vectorised model each) and ``search.fuse: off``.

1. DAL's ``a``: the bundled ``dal_a_table2`` (``a`` in {5, 8, 10, 11, 13, 15, 16, 20}, the 32-unit head, SGD lr
   0.001 momentum 0.9, batch 32) with ``--repeats`` seeds (16) per value, on synthetic features of the paper's
   shape (benchmarks/paper_protocol.py ``synthetic_features``: 400 training and 400 test rows of 512 x 8 x 8).
2. CC-Loss's ``lambda``: 6 values x ``--cc-repeats`` seeds (4) on the quickstart's training setup (the small CNN
   on digits, its optimizer and batch size) with loss ``cc``, searcher grid, scheduler fifo.

Rounds alternate which sweep goes first; a ratio is the median of unfused over fused wall time. Records equal:
each config's run holds, fused and unfused, the same metrics at the same epochs and the same replica table (every
seed's values per epoch), every number within ``--rel``. The defaults keep it short (a shared machine: DAL 3
epochs, CC 2); the issue's size is ``--epochs 30 --cc-epochs 8`` and the paper's ``--epochs 300``.

    PYTHONPATH=. .venv/bin/python benchmarks/fused.py [--epochs 3] [--repeats 16] [--cc-epochs 2]
        [--cc-repeats 4] [--rounds 2] [--cpus 2] [--device cpu] [--skip-cc]

Its last line: ``fused vs unfused: <X.X>x (records equal: yes|no)``, the DAL grid's. Timings on a shared machine
vary with the other processes' load: the load average is printed before and after.

Measured with the defaults (``PYTHONPATH=. .venv/bin/python benchmarks/fused.py``: DAL 3 epochs, CC 2, 2 rounds)
on the 2-CPU development machine shared with other sessions (load average 8-11; one sweep's time varied up to
5x between rounds, so these ratios are not figures to quote): DAL grid fused 114.4 / 49.0 s, unfused 186.5 /
244.0 s, medians 2.6x, records equal; CC-Loss grid fused 44.4 / 22.4 s, unfused 35.4 / 184.9 s, 3.3x, records
equal. With one round (the fused sweep first, paying the workers' first imports) the same machine gave 0.6x and
0.7x. Measure on an idle machine, ``--rounds 3`` or more, before quoting a ratio.

Quiet (load average 0.1 before, 1.8 after), ``PYTHONPATH=. .venv/bin/python benchmarks/fused.py --rounds 3`` at
6234ec3: DAL grid fused 6.7 / 7.2 / 7.6 s, unfused 11.2 / 10.6 / 11.3 s, medians 1.6x, records equal; CC-Loss grid
fused 6.5 / 5.9 / 5.9 s, unfused 6.4 / 6.5 / 6.5 s, 1.1x, records equal. Issue 22's goal (4x on 2 CPUs) is not met:
the CPUs train the same replicas either way, and at 3 epochs a sweep's fixed costs are most of its time.
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

from paper_protocol import synthetic_features  # noqa: E402  (the features table of the paper's shape)

CC_LAMBDAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]


def dal_case(args, work: Path) -> tuple[str, dict, str]:
    """(space, overrides, swept param) of the DAL grid on features of the paper's shape."""
    table = synthetic_features(work / "features" / "synthetic-vgg16shape.parquet", args.signal)
    over = {
        "train.dataset": {"name": "features", "options": {"path": str(table)}},
        "train.epochs": args.epochs,
        "train.repeats": args.repeats,
        "train.device": args.device,
    }
    return "dal_a_table2", over, "swept.loss.a"


def cc_case(args) -> tuple[str, dict, str]:
    """(space, overrides, swept param) of CC-Loss's lambda grid on the quickstart's training setup."""
    over = {
        "train.loss": {"name": "cc", "params": {"lambda": 1.0}},
        "train.epochs": args.cc_epochs,
        "train.repeats": args.cc_repeats,
        "train.device": args.device,
        "params": {"loss.lambda": {"grid": CC_LAMBDAS}},
        "search.scheduler": {"name": "fifo"},
    }
    return "quickstart", over, "swept.loss.lambda"


def sweep(space: str, over: dict, name: str, fuse: str, work: Path, args) -> tuple[float, str]:
    """One real sweep; its wall time and parent run id."""
    from tune_losses.tuning.runner import run_sweep

    start = time.perf_counter()
    result = run_sweep(
        space,
        name=name,
        tracking_uri=f"sqlite:///{work}/mlflow.db",
        storage=str(work / "ray"),
        overrides={**over, "search.fuse": fuse, "search.max_concurrent": args.cpus},
        verbose=0,
        num_cpus=args.cpus,
        make_report=False,
    )
    return time.perf_counter() - start, result.parent_run_id


def records(c, parent_run_id: str, swept: str) -> dict:
    """Each config's run, by its swept value: every metric's (epoch, value) history (timings aside), and its
    replica table as {column: values} in (epoch, replica) order."""
    from tune_losses import tracking
    from tune_losses.tracking.replicas import read_table

    exp = c.get_run(parent_run_id).info.experiment_id
    out = {}
    for run in tracking.trial_runs(c, parent_run_id, exp):
        keys = [k for k in run.data.metrics if not k.startswith("seconds_")]
        got = {k: [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, k)] for k in keys}
        table = read_table(c, run.info.run_id)
        if table is not None:
            got.update({f"table.{col}": list(enumerate(table[col].tolist())) for col in table.columns})
        out[run.data.params[swept]] = got
    return out


def differences(fused: dict, alone: dict, rel: float) -> list[str]:
    """Where the fused records differ from the unfused (empty: equal): config, key, epochs or values."""
    found = [] if fused.keys() == alone.keys() else [f"configs {sorted(fused)} vs {sorted(alone)}"]
    for value in fused.keys() & alone.keys():
        a, b = fused[value], alone[value]
        if a.keys() != b.keys():
            found.append(f"{value}: keys {sorted(a.keys() ^ b.keys())}")
        for key in a.keys() & b.keys():
            if [s for s, _ in a[key]] != [s for s, _ in b[key]]:
                found.append(f"{value} {key}: steps differ")
            elif not all(math.isclose(x, y, rel_tol=rel, abs_tol=1e-6) for (_, x), (_, y) in zip(a[key], b[key])):
                found.append(f"{value} {key}: values differ")
    return found


def compare(label: str, case: tuple[str, dict, str], work: Path, args) -> tuple[float, bool]:
    """Both sweeps of a case over the rounds; print the medians, the ratio and whether the records are equal."""
    from tune_losses import tracking

    space, over, swept = case
    times: dict[str, list[float]] = {"auto": [], "off": []}
    parents: dict[str, str] = {}
    for r in range(args.rounds):
        for fuse in ("auto", "off") if r % 2 == 0 else ("off", "auto"):
            name = f"{label.split()[0].lower().replace('-', '')}_{fuse}_{r}"  # e.g. dal_auto_0
            took, parents[fuse] = sweep(space, over, name, fuse, work, args)
            times[fuse].append(took)
            print(f"  {label} round {r + 1}: fuse {fuse}: {took:.1f} s", flush=True)
    c = tracking.client(f"sqlite:///{work}/mlflow.db")
    found = differences(records(c, parents["auto"], swept), records(c, parents["off"], swept), args.rel)
    fused, alone = statistics.median(times["auto"]), statistics.median(times["off"])
    print(f"{label}: fused median {fused:.1f} s; unfused median {alone:.1f} s; {alone / fused:.1f}x")
    print(f"{label}: records {'equal' if not found else f'differ in {len(found)} places, first: {found[:3]}'}")
    return alone / fused, not found


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="DAL grid: epochs (the issue: 30, the paper: 300)")
    parser.add_argument("--repeats", type=int, default=16, help="DAL grid: seeds per value of a")
    parser.add_argument("--cc-epochs", type=int, default=2, help="CC-Loss grid: epochs (the quickstart: 8)")
    parser.add_argument("--cc-repeats", type=int, default=4, help="CC-Loss grid: seeds per value of lambda")
    parser.add_argument("--rounds", type=int, default=2, help="each goes first in every other round")
    parser.add_argument("--cpus", type=int, default=2, help="the local Ray's CPUs (one per trial or group)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--signal", type=float, default=0.07, help="class signal of the synthetic features")
    parser.add_argument("--rel", type=float, default=1e-4, help="records equal: relative tolerance of numbers")
    parser.add_argument("--skip-cc", action="store_true", help="only the DAL grid")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from tune_losses.tuning.ray_runtime import init_ray

    print(f"load average before: {os.getloadavg()[0]:.2f}; {args.cpus} CPUs; device {args.device}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["TUNE_LOSSES_HOME"] = str(work / "home")
        init_ray(num_cpus=args.cpus, verbose=0)  # one Ray for every sweep: none pays its start
        dal = compare("DAL a grid", dal_case(args, work), work, args)
        if not args.skip_cc:
            compare("CC-Loss lambda grid", cc_case(args), work, args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"fused vs unfused: {dal[0]:.1f}x (records equal: {'yes' if dal[1] else 'no'})")


if __name__ == "__main__":
    main()
