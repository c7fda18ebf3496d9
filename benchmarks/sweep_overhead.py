"""The same trials as a Ray Tune sweep on 2 CPUs and as a plain sequential loop of `train`, in one run.

Prints the parallel efficiency (sequential time / (2 x sweep time); goal >= 0.9 on ~1-second epochs), the
per-trial overhead of the sweep ((2 x sweep time - sequential time) / trials; goal <= 0.3 s), and ASHA's epochs
against the full grid's on the same trials. The report a sweep makes at its end is timed apart (it is the
same work whatever the trials cost). The one-time start-up (sweep start to the first trial's start:
Ray starting the trial processes) is printed apart, and both figures are given with and without it.

    .venv/bin/python benchmarks/sweep_overhead.py [--trials 6] [--epochs 4]
"""

import argparse
import os
import tempfile
import time

from tune_losses.spaces import parse_space, trial_config
from tune_losses.tuning.runner import run_sweep
from tune_losses.training import train


def space(name, trials, epochs, scheduler, width=96):
    return parse_space({
        "name": name,
        "train": {"dataset": {"name": "digits"}, "model": {"name": "small_cnn", "params": {"width": width}},
                  "loss": {"name": "dal", "params": {"a": 10.0}}, "optimizer": {"name": "sgd", "lr": 0.03},
                  "batch_size": 16, "epochs": epochs},
        "params": {"loss.a": {"grid": [float(a) for a in range(4, 4 + 3 * trials, 3)]}},
        "search": {"searcher": "grid", "max_concurrent": 2, "scheduler": scheduler},
        "resources": {"cpu": 1},
    }, name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)  # one CPU per trial, as in the sweep
    fifo = space("bench_fifo", args.trials, args.epochs, {"name": "fifo"})
    start = time.perf_counter()
    epoch_times = []
    for a in fifo.params["loss.a"].grid:
        t0 = time.perf_counter()
        train(trial_config(fifo, {"loss.a": a}))
        epoch_times.append((time.perf_counter() - t0) / args.epochs)
    sequential = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        import ray

        from tune_losses import tracking

        tracking.experiment_id(tracking.client(uri))  # the store's one-time schema creation, outside the timing

        from tune_losses.tuning.workers import init_ray

        init_ray(num_cpus=2, verbose=0)
        wall_start, start = time.time(), time.perf_counter()
        result = run_sweep(fifo, tracking_uri=uri, storage=f"{tmp}/ray", verbose=0, make_report=False)
        swept = time.perf_counter() - start
        from tune_losses.reports.build import build_report

        t0 = time.perf_counter()
        build_report(result.parent_run_id, tracking_uri=uri, out_dir=f"{tmp}/report")
        reporting = time.perf_counter() - t0
        c = tracking.client(uri)
        runs = tracking.trial_runs(c, result.parent_run_id, tracking.experiment_id(c))
        startup = min(r.info.start_time for r in runs) / 1000 - wall_start
        asha = space("bench_asha", args.trials, args.epochs,
                     {"name": "asha", "max_t": args.epochs, "grace_period": 1, "reduction_factor": 2})
        asha_result = run_sweep(asha, tracking_uri=uri, storage=f"{tmp}/ray", verbose=0, make_report=False)
        ray.shutdown()
    n = args.trials
    print(f"{n} trials x {args.epochs} epochs, ~{sorted(epoch_times)[n // 2]:.2f} s per epoch, 2 CPUs")
    print(f"sequential loop: {sequential:.1f} s   sweep (2 concurrent): {swept:.1f} s (incl. MLflow logging; the "
          f"report after it, {reporting:.1f} s, apart)")
    steady = swept - startup
    print(f"one-time start-up (sweep start -> first trial running): {startup:.2f} s")
    print(f"parallel efficiency: {sequential / (2 * swept):.2f} overall, {sequential / (2 * steady):.2f} after "
          f"start-up   per-trial overhead: {(2 * swept - sequential) / n:.2f} s overall, "
          f"{(2 * steady - sequential) / n:.2f} s after start-up")
    print(f"driver tracking cost: {result.summary['tracking_ms_per_epoch']:.3f} ms per epoch")
    s = asha_result.summary
    print(f"ASHA: {s['epochs_run']} epochs of the full grid's {s['epochs_full_budget']} "
          f"({s['epochs_run'] / s['epochs_full_budget']:.2f}); {s['stopped_early']} of {s['trials']} stopped early")


if __name__ == "__main__":
    main()
