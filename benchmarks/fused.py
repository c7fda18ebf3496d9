"""Fused groups against one training per config, side by side in one run (issue 22), at the training level: for
each group that tuning/fusion.py plans, ``train_group`` of the whole group against ``train`` of each of its
configs alone, with the same data, seeds and epochs.

1. DAL Table II's grid (the bundled space ``dal_a_table2``: ``a`` in {5, 8, 10, 11, 13, 15, 16, 20}, the 32-unit
   head, SGD lr 0.001 momentum 0.9, batch 32) with 16 seeds per value, on synthetic features of the paper's shape
   (benchmarks/paper_protocol.py ``synthetic_features``: 400 training and 400 test rows of 512 x 8 x 8 values),
   in the groups the planner makes for the sweep's 2 CPUs (2 groups of 4 values; ``--cpus``).
2. CC-Loss's lambda, 6 values x 4 seeds, on the quickstart's training setup (the small CNN on digits, its
   optimizer and batch size; search_spaces/quickstart.yaml) with loss ``cc``.

Each round times every group fused and every config alone, one after the other, each the whole call as a trial
makes it (the set-up, the row-space basis where it applies, training, every epoch's evaluation; the data set is
built once before, as a sweep ships it to its trials). The ratio is the median over rounds of the time of all
configs alone over that of all groups: on a sweep's CPUs both run as many trials at once. Records equal: every
config's per-epoch report, fused against alone: the same keys and test confusion matrix, every number within
``--rel`` (default 1e-4; accuracies are equal only if every prediction is). Timings on a shared machine vary with
the other processes' load: the load average is printed before and after.

    PYTHONPATH=. .venv/bin/python benchmarks/fused.py [--epochs 30] [--repeats 16] [--rounds 3] [--cc-epochs 2]
        [--cc-repeats 4] [--threads 1] [--cpus 2] [--device cpu] [--skip-cc]

Its last line: ``fused vs unfused: <X.X>x (records equal: yes|no)``, the DAL grid's ratio and records. Through
real sweeps (Ray, MLflow, one run per config) once the runner runs fused trials.

Measured with ``PYTHONPATH=. .venv/bin/python benchmarks/fused.py`` (the defaults: 30 epochs, 3 rounds) on the
2-CPU development machine while other processes kept it busy (load average 5-6 on 2 CPUs; rounds varied by up to
2x): DAL grid fused 14.1 s, alone 26.6 s, 1.9x, records equal; CC-Loss grid fused 2.07 s, alone 2.92 s, 1.4x,
records equal. Where it comes from (cProfile of one group of 4 values x 16 seeds against one value alone, same
machine): the row-space basis is computed once per group instead of once per value, and a seed's initial model
once per group; per replica the head's training is compute-bound on CPU already at 16 replicas (fit 4.2 s for 64
replicas, 1.5 s for 16), and so is the small CNN at 4, so the CPU gains little more at the training level; the
sweep-level costs (tracking, start-up, one trial per config) are what fusing saves besides.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from paper_protocol import synthetic_features  # noqa: E402  (the features table of the paper's shape)

from tune_losses.spaces import load_space, parse_space, trial_config  # noqa: E402
from tune_losses.training import TrainConfig, train  # noqa: E402
from tune_losses.training.group import train_group  # noqa: E402
from tune_losses.training.setup import load_splits  # noqa: E402
from tune_losses.tuning.fusion import plan_fusion  # noqa: E402

CC_LAMBDAS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]


def dal_groups(args, tmp: Path):
    """The DAL grid's groups of train configs (as the planner splits the space) and its data set."""
    table = synthetic_features(tmp / "synthetic-vgg16shape.parquet", args.signal)
    space, _, _ = load_space(
        "dal_a_table2",
        {
            "train.dataset": {"name": "features", "options": {"path": str(table)}},
            "train.epochs": args.epochs,
            "train.repeats": args.repeats,
            "train.device": args.device,
        },
    )
    return space, plan_fusion(space, cpus=args.cpus)


def cc_groups(args):
    """CC-Loss's lambda grid on the quickstart's training setup, in the planner's groups."""
    train_cfg = load_space("quickstart")[0].train.model_dump()
    train_cfg.update(
        loss={"name": "cc", "params": {"lambda": 1.0}},
        epochs=args.cc_epochs,
        repeats=args.cc_repeats,
        device=args.device,
    )
    data = {
        "name": "fused_cc",
        "train": train_cfg,
        "params": {"loss.lambda": {"grid": CC_LAMBDAS}},
        "search": {"searcher": "grid", "scheduler": {"name": "fifo"}, "metric": "val_acc", "max_concurrent": 2},
    }
    space = parse_space(data, "benchmarks/fused.py")
    return space, plan_fusion(space, cpus=args.cpus)


def run_fused(groups, splits):
    """Every group as one model: seconds, and each config's per-epoch reports (in the groups' order)."""
    records, start = [], time.perf_counter()
    for group in groups:
        seen: list[list[dict]] = [[] for _ in group]

        def report(per, state, seen=seen):
            for mine, metrics in zip(seen, per):
                if metrics is not None:
                    mine.append(metrics)

        train_group(group, report=report, splits=splits)
        records += seen
    return time.perf_counter() - start, records


def run_alone(groups, splits):
    """Every config on its own, as a trial of an unfused sweep: seconds, and each config's per-epoch reports."""
    records, start = [], time.perf_counter()
    for cfg in (c for group in groups for c in group):
        seen: list[dict] = []
        train(cfg, report=lambda m, state, seen=seen: seen.append(m), splits=splits)
        records.append(seen)
    return time.perf_counter() - start, records


def differences(fused, alone, rel: float) -> list[str]:
    """Where the fused records differ from those alone (empty: equal): config, epoch and key."""
    out = []
    for c, (mine, solo) in enumerate(zip(fused, alone)):
        if len(mine) != len(solo):
            out.append(f"config {c}: {len(mine)} epochs fused, {len(solo)} alone")
        for m, s in zip(mine, solo):
            if set(m) != set(s) or m["test_confusion"] != s["test_confusion"]:
                out.append(f"config {c} epoch {s['epoch']}: keys or test confusion")
                continue
            for key, value in s.items():
                if isinstance(value, float) and abs(m[key] - value) > rel * abs(value) + 1e-9:
                    out.append(f"config {c} epoch {s['epoch']} {key}: {m[key]!r} fused, {value!r} alone")
    return out


def warm_up() -> None:
    """Untimed: the fused loss kernels load, vmap's and the optimizers' first calls."""
    cfgs = [
        {"model": {"name": "mlp"}, "loss": {"name": "dal", "params": {"a": a}}, "epochs": 1, "repeats": 2}
        for a in (5.0, 10.0)
    ]
    train_group(cfgs)
    train(cfgs[0])


def compare(name: str, space, plan, args) -> tuple[float, bool]:
    """Time the case's groups fused and alone over the rounds; print the medians, the ratio and the records."""
    if not plan.fused:
        raise SystemExit(f"{name}: the planner does not fuse this space: {plan.reason}")
    groups = [[TrainConfig.model_validate(trial_config(space, t["params"])) for t in g] for g in plan.groups]
    splits = load_splits(groups[0][0])
    fused_s, alone_s, equal = [], [], None
    for _ in range(args.rounds):
        seconds, fused_records = run_fused(groups, splits)
        fused_s.append(seconds)
        seconds, alone_records = run_alone(groups, splits)
        alone_s.append(seconds)
        if equal is None:
            equal = differences(fused_records, alone_records, args.rel)
    fused_m, alone_m = statistics.median(fused_s), statistics.median(alone_s)
    n = sum(len(g) for g in groups)
    print(
        f"{name}: {n} configs x {groups[0][0].repeats} seeds x {groups[0][0].epochs} epochs, "
        f"{len(groups)} fused groups of {[len(g) for g in groups]} configs"
    )
    print(f"  fused:   median {fused_m:8.2f} s over {args.rounds} rounds {[round(s, 2) for s in fused_s]}")
    print(f"  alone:   median {alone_m:8.2f} s over {args.rounds} rounds {[round(s, 2) for s in alone_s]}")
    print(f"  ratio:   {alone_m / fused_m:.1f}x")
    print(f"  records: {'equal' if not equal else f'{len(equal or [])} differences, first: {(equal or [])[:3]}'}")
    return alone_m / fused_m, not equal


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="DAL grid: epochs (the paper: 300)")
    parser.add_argument("--repeats", type=int, default=16, help="DAL grid: seeds per value of a")
    parser.add_argument("--cc-epochs", type=int, default=2, help="CC-Loss grid: epochs")
    parser.add_argument("--cc-repeats", type=int, default=4, help="CC-Loss grid: seeds per value of lambda")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a trial's: 1 per CPU)")
    parser.add_argument("--cpus", type=int, default=2, help="the sweep's CPUs, for the planner's groups")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--signal", type=float, default=0.07, help="class signal of the synthetic features")
    parser.add_argument("--rel", type=float, default=1e-4, help="records equal: relative tolerance of numbers")
    parser.add_argument("--skip-cc", action="store_true", help="only the DAL grid")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f}; torch threads {args.threads}; device {args.device}")
    warm_up()
    with tempfile.TemporaryDirectory() as tmp:
        dal = compare("DAL a grid", *dal_groups(args, Path(tmp)), args)
    if not args.skip_cc:
        compare("CC-Loss lambda grid", *cc_groups(args), args)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print(f"fused vs unfused: {dal[0]:.1f}x (records equal: {'yes' if dal[1] else 'no'})")


if __name__ == "__main__":
    main()
