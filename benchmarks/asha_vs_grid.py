"""Early stopping on a paper's grid: the same grid with FIFO (every trial to max_t), ASHA (the grid visited in a
seeded random order, runner.grid_order) and synchronous successive halving (scheduler `halving`, every config to
a rung, the best 1/eta go on), as real sweeps (Ray, MLflow in a tmp SQLite store), in one run, on two studies:

* dal_a: DAL's `a` over 12 values in ascending order, the DAL paper's 32-unit mlp head on digits, SGD lr 0.1,
  3 repeats, 27 epochs;
* cc_lambda: CC-Loss's `lambda` over 12 values in [0, 4], small_cnn (width 8) with its channel attention module
  on digits, SGD lr 0.05 (``--cc-lr``), 3 repeats, 27 epochs.

ASHA and halving: grace 3, reduction factor 3, max_t 27 (rungs 3, 9, 27). Every sweep selects on val_acc
(protocol standard); test accuracy is printed beside it. For each method: the epochs it trained (and their share
of the full grid's), the config it chose, and that config's full-grid (FIFO) val / test accuracy against the full
grid's best. Goal: within 0.5 points of the full grid's best val_acc at <= 35% of its epochs. Each sweep's MLflow
record is audited (one run per trial, every epoch logged once: halving pauses and resumes trials).
``--seeds 1 2 3`` repeats everything with each seed (training seeds and ASHA's order) and prints medians.

    PYTHONPATH=. .venv/bin/python benchmarks/asha_vs_grid.py [--studies dal_a cc_lambda] [--seeds 0] [--cc-lr 0.05]

Measured on 2 CPUs shared with other jobs (wall times are not comparable; epochs and choices are), with
``benchmarks/asha_vs_grid.py --seeds 0`` and, for dal_a, ``--seeds 1`` (epochs as a share of the grid's 324;
gap: the chosen config's full-grid val_acc below the grid's best):

    dal_a     seed 0: asha 31%, gap 0.1 pts   halving 30%, gap 0.0 pts
              seed 1: asha 33%, gap 0.0 pts   halving 30%, gap 0.0 pts
    cc_lambda seed 0: asha 41%, gap 0.0 pts   halving 30%, gap 20.6 pts (chose lambda 2: 75.7 vs 96.4)
              seed 1: asha 67%, gap 0.0 pts   halving 30%, gap 0.8 pts (stopped lambda 0, the best, at rung 3)
                      (``--studies cc_lambda --seeds 1``, the same machine idle but for a test run)

The goal is met on dal_a (both methods) and not on cc_lambda (ASHA: the right config, but 41% of the epochs;
halving: 30%, a worse config); on cc_lambda the best lambdas (0, 0.25) are slow starters, which both rules
punish: ASHA by promoting more of the early leaders, halving by stopping the slow best.

The choice: ASHA over the grid in a seeded random order stays the default. Synchronous halving saves as much on
dal_a but fails cc_lambda: at rung 3 the large lambdas lead (about 65% against 46% for lambda 0) and collapse
later, and halving keeps only the rung's top 4, so lambda 0, 0.25 and 0.5 (the grid's best at epoch 27) never
reach rung 9; ASHA's asynchronous rule promotes a trial against those seen before it and kept them. Halving
also waits at every rung for the slowest trial and restarts each promoted trial's process. It stays available
as scheduler ``halving`` (grid and random searchers) for comparison.
"""

import argparse
import os
import statistics
import tempfile
import time

from tune_losses import tracking
from tune_losses.spaces import parse_space
from tune_losses.tracking.ledger import audit
from tune_losses.tuning.runner import run_sweep

EPOCHS, GRACE, ETA = 27, 3, 3
METHODS = ("fifo", "asha", "halving")


def study_space(study: str, method: str, seed: int, cc_lr: float):
    if study == "dal_a":
        path, grid = "loss.a", [3.0, 5.0, 8.0, 10.0, 11.0, 13.0, 15.0, 16.0, 20.0, 25.0, 30.0, 40.0]
        train = {
            "model": {"name": "mlp", "params": {"hidden": 32}},
            "loss": {"name": "dal", "params": {"a": 15.0}},
            "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        }
    else:
        path, grid = "loss.lambda", [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0]
        train = {
            "model": {"name": "small_cnn", "params": {"width": 8, "cam": True}},
            "loss": {"name": "cc", "params": {"lambda": 1.0}},
            "optimizer": {"name": "sgd", "lr": cc_lr, "momentum": 0.9},
        }
    scheduler = {"name": method}
    if method != "fifo":
        scheduler.update(max_t=EPOCHS, grace_period=GRACE, reduction_factor=ETA)
    name = f"{study}_{method}_s{seed}"
    space = parse_space(
        {
            "name": name,
            "train": {"dataset": {"name": "digits"}, "batch_size": 32, "epochs": EPOCHS, "repeats": 3, "seed": seed}
            | train,
            "params": {path: {"grid": grid}},
            "search": {"searcher": "grid", "metric": "val_acc", "max_concurrent": 2, "scheduler": scheduler},
            "resources": {"cpu": 1},
        },
        name,
    )
    return space, path


def one(study: str, method: str, seed: int, cc_lr: float, tmp: str) -> dict:
    space, path = study_space(study, method, seed, cc_lr)
    uri = f"sqlite:///{tmp}/mlflow.db"
    t0 = time.perf_counter()
    result = run_sweep(space, tracking_uri=uri, storage=f"{tmp}/ray", verbose=0, make_report=False)
    wall = time.perf_counter() - t0
    c = tracking.client(uri)
    problems = audit(c, result.parent_run_id, tracking.experiment_id(c), EPOCHS)
    final = {}
    for r in result.results:
        m = r.metrics or {}
        final[r.config["params"][path]] = (m.get("val_acc"), m.get("test_acc"), int(m.get("epoch", 0) or 0))
    return {
        "epochs": result.summary["epochs_run"],
        "full": result.summary["epochs_full_budget"],
        "chosen": result.best_config[path],
        "final": final,
        "wall": wall,
        "problems": problems,
        "path": path,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", nargs="+", default=["dal_a", "cc_lambda"], choices=["dal_a", "cc_lambda"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="train.seed of each run (ASHA's order too)")
    parser.add_argument("--cc-lr", type=float, default=0.05, help="SGD learning rate of the cc_lambda study")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray

    from tune_losses.tuning.ray_runtime import init_ray

    init_ray(num_cpus=2, verbose=0)
    goal_met: dict = {}
    for study in args.studies:
        rows: dict = {m: [] for m in METHODS}
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                runs = {m: one(study, m, seed, args.cc_lr, tmp) for m in METHODS}
            grid = runs["fifo"]["final"]
            best = max(grid, key=lambda v: grid[v][0])
            print(
                f"\n{study}, seed {seed}: {runs['fifo']['path']} on the full grid (val/test %, FIFO, epoch {EPOCHS}): "
                + ", ".join(f"{v:g}: {100 * grid[v][0]:.1f}/{100 * grid[v][1]:.1f}" for v in grid)
            )
            for m in METHODS:
                r = runs[m]
                val, test, _ = grid[r["chosen"]]
                gap = 100 * (grid[best][0] - val)
                share = r["epochs"] / runs["fifo"]["full"]
                stopped = {v: e for v, (_, _, e) in r["final"].items() if e < EPOCHS}
                rows[m].append((share, gap, 100 * (grid[best][1] - test), r["wall"]))
                print(
                    f"  {m:8s} epochs {r['epochs']:4d} ({100 * share:3.0f}% of the grid's)  chose {r['chosen']:g}: "
                    f"full-grid val {100 * val:.1f} (best {100 * grid[best][0]:.1f} at {best:g}, gap {gap:.1f} pts), "
                    f"test {100 * test:.1f} (best's {100 * grid[best][1]:.1f})  {r['wall']:.0f} s  "
                    f"stopped {len(stopped)}: {dict(sorted(stopped.items()))}  "
                    f"MLflow audit: {'ok' if not r['problems'] else r['problems']}"
                )
        print(f"\n{study}: medians over seeds {args.seeds}")
        for m in METHODS:
            med = [statistics.median(x[i] for x in rows[m]) for i in range(4)]
            met = sum(share <= 0.35 and gap <= 0.5 for share, gap, _, _ in rows[m])
            goal_met[(study, m)] = met
            print(
                f"  {m:8s} epochs {100 * med[0]:3.0f}% of the grid's, val gap {med[1]:.1f} pts, test gap "
                f"{med[2]:.1f} pts, {med[3]:.0f} s; goal (<= 0.5 pts at <= 35%) met on {met} of {len(rows[m])} seeds"
            )
    ray.shutdown()


if __name__ == "__main__":
    main()
