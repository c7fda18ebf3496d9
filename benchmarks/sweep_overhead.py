"""The same trials as a Ray Tune sweep on 2 CPUs and as a plain sequential loop of `train`, in one run.

Prints the parallel efficiency (sequential time / (2 x sweep time); goal >= 0.9 on ~1-second epochs), the
per-trial overhead of the sweep ((2 x sweep time - sequential time) / trials; goal <= 0.3 s), and ASHA's epochs
against the full grid's on the same trials. The report a sweep makes at its end is timed apart (it is the
same work whatever the trials cost). Each round starts a fresh local Ray, as `tune-losses sweep` does, and times
`ray.init` apart; the one-time start-up (sweep start to the first trial's start: Ray's prestarted workers
finishing their imports) is printed apart, and both figures are given with and without it. The sequential loop
runs with the same modules already imported, as a prestarted worker has them.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 6] [--epochs 4] [--rounds 3]
"""

import argparse
import os
import statistics
import tempfile
import time

from tune_losses import tracking
from tune_losses.spaces import parse_space, trial_config
from tune_losses.training import train
from tune_losses.tuning.runner import run_sweep


def space(name, trials, epochs, scheduler, width=96):
    return parse_space(
        {
            "name": name,
            "train": {
                "dataset": {"name": "digits"},
                "model": {"name": "small_cnn", "params": {"width": width}},
                "loss": {"name": "dal", "params": {"a": 10.0}},
                "optimizer": {"name": "sgd", "lr": 0.03},
                "batch_size": 16,
                "epochs": epochs,
            },
            "params": {"loss.a": {"grid": [float(a) for a in range(4, 4 + 3 * trials, 3)]}},
            "search": {"searcher": "grid", "max_concurrent": 2, "scheduler": scheduler},
            "resources": {"cpu": 1},
        },
        name,
    )


def sequential_loop(fifo, epochs):
    start, epoch_times = time.perf_counter(), []
    for a in fifo.params["loss.a"].grid:
        t0 = time.perf_counter()
        train(trial_config(fifo, {"loss.a": a}))
        epoch_times.append((time.perf_counter() - t0) / epochs)
    return time.perf_counter() - start, statistics.median(epoch_times)


def one_sweep(fifo, tmp):
    """(sweep seconds, start-up seconds, report seconds) of one FIFO sweep."""
    from tune_losses.reports.build import build_report

    uri = f"sqlite:///{tmp}/mlflow.db"
    wall_start, start = time.time(), time.perf_counter()
    result = run_sweep(fifo, tracking_uri=uri, storage=f"{tmp}/ray", verbose=0, make_report=False)
    swept = time.perf_counter() - start
    c = tracking.client(uri)
    runs = tracking.trial_runs(c, result.parent_run_id, tracking.experiment_id(c))
    startup = min(r.info.start_time for r in runs) / 1000 - wall_start
    t0 = time.perf_counter()
    build_report(result.parent_run_id, tracking_uri=uri, out_dir=f"{tmp}/report")  # + each trial's figures
    return swept, startup, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="sequential loop and sweep, alternated; medians")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    import torch

    import tune_losses.tuning.trial  # noqa: F401  the loop gets the same warm imports as a prestarted worker
    from tune_losses.tuning.ray_runtime import init_ray

    torch.set_num_threads(1)  # one CPU per trial, as in the sweep
    fifo = space("bench_fifo", args.trials, args.epochs, {"name": "fifo"})
    seq, sweeps, ray_starts = [], [], []
    for r in range(args.rounds):
        seq.append(sequential_loop(fifo, args.epochs))
        with tempfile.TemporaryDirectory() as tmp:
            tracking.experiment_id(tracking.client(f"sqlite:///{tmp}/mlflow.db"))  # the store's schema, untimed
            # a fresh local Ray per sweep, as `tune-losses sweep` starts one, the sweep right after it
            t0 = time.perf_counter()
            init_ray(num_cpus=2, verbose=0)
            ray_starts.append(time.perf_counter() - t0)
            sweeps.append(one_sweep(space(f"bench_fifo_{r}", args.trials, args.epochs, {"name": "fifo"}), tmp))
        ray.shutdown()
    init_ray(num_cpus=2, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        asha = space(
            "bench_asha",
            args.trials,
            args.epochs,
            {"name": "asha", "max_t": args.epochs, "grace_period": 1, "reduction_factor": 2},
        )
        asha_result = run_sweep(
            asha, tracking_uri=f"sqlite:///{tmp}/mlflow.db", storage=f"{tmp}/ray", verbose=0, make_report=False
        )
    ray.shutdown()
    for r, ((sq, _), (sw, st, _)) in enumerate(zip(seq, sweeps)):
        print(f"round {r + 1}: sequential {sq:.1f} s, sweep {sw:.1f} s (start-up {st:.1f} s)")
    med = statistics.median
    sequential, epoch = med(s[0] for s in seq), med(s[1] for s in seq)
    swept, startup, reporting = (med(x[i] for x in sweeps) for i in range(3))
    n = args.trials
    print(f"{n} trials x {args.epochs} epochs, ~{epoch:.2f} s per epoch, 2 CPUs, median of {args.rounds} round(s)")
    print(
        f"sequential loop: {sequential:.1f} s   sweep (2 concurrent): {swept:.1f} s (incl. MLflow logging; the "
        f"report after it, with each trial's figures, {reporting:.1f} s, apart)"
    )
    steady = swept - startup
    print(
        f"one-time start-up (sweep start -> first trial running): {startup:.2f} s; starting Ray before it "
        f"(ray.init, timed apart): {med(ray_starts):.2f} s"
    )
    print(
        f"parallel efficiency: {sequential / (2 * swept):.2f} overall, {sequential / (2 * steady):.2f} after "
        f"start-up   per-trial overhead: {(2 * swept - sequential) / n:.2f} s overall, "
        f"{(2 * steady - sequential) / n:.2f} s after start-up"
    )
    s = asha_result.summary
    print(
        f"ASHA: {s['epochs_run']} epochs of the full grid's {s['epochs_full_budget']} "
        f"({s['epochs_run'] / s['epochs_full_budget']:.2f}); {s['stopped_early']} of {s['trials']} stopped early"
    )


if __name__ == "__main__":
    main()
