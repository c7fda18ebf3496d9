"""K = 16 replicas of the DAL head on a features table of the DAL paper's shape (800 x 32768, 8 classes;
synthetic features here): vectorised (one stacked model) vs a loop of K single runs, in one run, with the
per-seed results compared. Goal (issue #3): >= 5x faster on CPU with identical per-seed results.

    .venv/bin/python benchmarks/repeats.py [--epochs 3] [--repeats 16]
"""

import argparse
import statistics
import time

import torch

from tune_losses.data import Split
from tune_losses.losses import build_loss
from tune_losses.models import build_model
from tune_losses.training.config import OptimizerConfig
from tune_losses.training.replicas import LoopReplicas, VectorReplicas


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    n, dim, classes = 800, 32768, 8
    y = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=g)
    x = (0.05 * centers[y] + torch.randn(n, dim, generator=g)).relu()  # ReLU'd conv features, class signal
    split = Split(x, y)
    seeds = list(range(args.repeats))
    opt = OptimizerConfig(name="sgd", lr=0.001, momentum=0.9)
    make_model = lambda: build_model("mlp", num_classes=classes, in_features=dim, hidden=32)  # noqa: E731
    make_loss = lambda: build_loss("dal", num_classes=classes, a=15.0)  # noqa: E731

    def run(cls, seed_list):
        reps = cls(make_model, make_loss, seed_list, opt, classes, torch.device("cpu"))
        start = time.perf_counter()
        for _ in range(args.epochs):
            losses, confusion = reps.train_epoch(split, args.batch_size)
            reps.update_losses(confusion)
        return time.perf_counter() - start, losses

    vec_times, loop_times = [], []
    for _ in range(args.rounds):
        t, vec_losses = run(VectorReplicas, seeds)
        vec_times.append(t)
        total, loop_losses = 0.0, []
        for s in seeds:
            t, one = run(LoopReplicas, [s])
            total += t
            loop_losses.append(one[0])
        loop_times.append(total)
    loop_losses = torch.stack(loop_losses)
    gap = (vec_losses - loop_losses).abs().max().item()
    v, lo = statistics.median(vec_times), statistics.median(loop_times)
    print(f"K={args.repeats} DAL heads, {n}x{dim} features, {classes} classes, batch {args.batch_size}, "
          f"{args.epochs} epochs, {torch.get_num_threads()} threads, median of {args.rounds}")
    print(f"vectorised: {v:.2f} s   loop of {args.repeats} single runs: {lo:.2f} s   speed-up: {lo / v:.2f}x")
    print(f"largest per-seed difference in final training loss: {gap:.2e}")


if __name__ == "__main__":
    main()
