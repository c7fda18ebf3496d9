"""K = 16 replicas of the DAL head on a features table of the DAL paper's shape (800 x 32768, 8 classes;
synthetic features here), in one run:
  * loop, full D:   K single runs one after the other, each on the 32768-dim rows (no reduction);
  * loop:           K single runs, each as `train` runs a single run (the row-space reduction where it pays);
  * vectorised:     the K replicas as one stacked model, as `train` runs repeats (the same rule).
Goal (issue #3): vectorised >= 5x faster than the loop of K single runs on CPU, identical per-seed results.

    .venv/bin/python benchmarks/repeats.py [--epochs 20] [--repeats 16] [--device cuda]
"""

import argparse
import statistics
import time

import torch

from tune_losses.data import Split, Splits
from tune_losses.losses import build_loss
from tune_losses.models import build_model
from tune_losses.training.config import OptimizerConfig, TrainConfig
from tune_losses.training.replicas import LoopReplicas, VectorReplicas
from tune_losses.training.rowspace import RowSpace, applies


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    n, dim, classes = 800, 32768, 8
    y = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=g)
    x = (0.05 * centers[y] + torch.randn(n, dim, generator=g)).relu()  # ReLU'd conv features, class signal
    half = n // 2
    splits = Splits(
        Split(x[:half], y[:half]), Split(x[half : half + 1], y[half : half + 1]), Split(x[half:], y[half:]), classes
    )
    seeds = list(range(args.repeats))
    opt = OptimizerConfig(name="sgd", lr=0.001, momentum=0.9)
    make_loss = lambda: build_loss("dal", num_classes=classes, a=15.0)  # noqa: E731
    full = lambda: build_model("mlp", num_classes=classes, in_features=dim, hidden=32)  # noqa: E731

    def run(cls, seed_list, reduced: bool):
        start = time.perf_counter()
        data, make_model = splits, full
        cfg = TrainConfig(model={"name": "mlp"}, epochs=args.epochs, repeats=len(seed_list))
        if reduced and applies(cfg, splits):  # what `train` does, basis included in the timing
            rs = RowSpace(splits)
            data, make_model = rs.reduce(splits), (lambda: rs.reduce_model(full()))
        reps = cls(make_model, make_loss, seed_list, opt, classes, device)
        for _ in range(args.epochs):
            losses, confusion = reps.train_epoch(data.train, args.batch_size)
            reps.update_losses(confusion)
        sync()
        return time.perf_counter() - start, losses

    times = {"loop, full D": [], "loop": [], "vectorised": []}
    for _ in range(args.rounds):
        t, vec_losses = run(VectorReplicas, seeds, True)
        times["vectorised"].append(t)
        for label, reduced in (("loop", True), ("loop, full D", False)):
            total, per_seed = 0.0, []
            for s in seeds:
                t, one = run(LoopReplicas, [s], reduced)
                total += t
                per_seed.append(one[0])
            times[label].append(total)
            if not reduced:
                full_losses = torch.stack(per_seed)
    med = {k: statistics.median(v) for k, v in times.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"K={args.repeats} DAL heads, {half} training rows of {dim} features, {classes} classes, batch "
        f"{args.batch_size}, {args.epochs} epochs, {where}, median of {args.rounds}"
    )
    for label, t in med.items():
        print(f"  {label:<13} {t:7.2f} s")
    print(
        f"vectorised vs loop of {args.repeats} single runs: {med['loop'] / med['vectorised']:.1f}x; "
        f"vs the naive full-D loop: {med['loop, full D'] / med['vectorised']:.1f}x"
    )
    gap = (vec_losses - full_losses).abs().max().item()
    print(f"largest per-seed difference in final training loss, vectorised vs full-D single runs: {gap:.2e}")


if __name__ == "__main__":
    main()
