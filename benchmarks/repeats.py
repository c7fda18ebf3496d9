"""Vectorised repeats against the loop of single runs, side by side in one run, with per-seed results compared.

1. K = 16 replicas of the DAL head on a features table of the DAL paper's shape (800 x 32768, 8 classes;
   synthetic features here):
     * vectorised:   the K replicas as one stacked model, as `train` runs repeats (the row-space reduction
                     where `rowspace.applies` says it pays: basis and reduction included in the time);
     * loop:         K single runs one after the other, each as `train` runs a single run (the same rule);
     * loop, full D: K single runs on the 32768-dim rows (no reduction); timed only where a single run uses
                     the reduction, otherwise it is the loop itself.
   Then the cost rule checked both ways: a single run and a run of 2 repeats, each with and without the
   reduction.
2. The quickstart's training setup (tune_losses/search_spaces/quickstart.yaml: the small CNN on digits, DAL,
   its optimizer, batch size and epochs) at K = 4 and K = 16: vectorised vs the loop of K single runs.

Each configuration is timed from building the replicas to the last epoch's loss update (``train_epoch`` and
``update_losses``, as `train` runs them; evaluation, the same per replica either way, is not timed). Before
anything is timed, every path runs once (the fused loss kernels load, vmap's first call). Per seed, the
vectorised replica and the single run are compared: the final training loss (largest absolute difference) and
the test-set predictions after training (how many seeds predict every test sample identically).
Goal (issue #15): vectorised >= 5x faster than the loop of K single runs on CPU, identical per-seed results.

    PYTHONPATH=. .venv/bin/python benchmarks/repeats.py [--rounds 3] [--threads N] [--epochs 20] [--repeats 16]
        [--cnn-repeats 4 16] [--cnn-epochs E] [--device cuda]
"""

import argparse
import os
import statistics
import time

import torch

from tune_losses.data import Split, Splits, build_dataset
from tune_losses.losses import build_loss
from tune_losses.models import build_model
from tune_losses.spaces import load_space
from tune_losses.training.config import OptimizerConfig, TrainConfig
from tune_losses.training.loop import model_params
from tune_losses.training.replicas import LoopReplicas, VectorReplicas
from tune_losses.training.rowspace import RowSpace, applies


class Setup:
    """One training setup: data, model and loss builders, optimizer, batch size, epochs."""

    def __init__(self, splits, make_model, make_loss, optimizer, batch_size, epochs, cfg=None):
        self.splits, self.make_model, self.make_loss = splits, make_model, make_loss
        self.optimizer, self.batch_size, self.epochs, self.cfg = optimizer, batch_size, epochs, cfg
        self.device = torch.device("cpu")

    def run(self, cls, seeds, reduce: bool | None = None):
        """Train ``seeds`` as ``cls`` replicas; ``reduce``: the row-space reduction (None: where `train` uses it).
        Returns (seconds, final training loss per seed, test predictions (K, N_test), reduced or not)."""
        start = time.perf_counter()
        data, make_model = self.splits, self.make_model
        if reduce is None:
            reduce = self.cfg is not None and applies(self.cfg.model_copy(update={"repeats": len(seeds)}), data)
        if reduce:  # what `train` does, basis included in the timing
            rs = RowSpace(data)
            data, make_model = rs.reduce(data), (lambda: rs.reduce_model(self.make_model()))
        reps = cls(make_model, self.make_loss, seeds, self.optimizer, self.splits.num_classes, self.device)
        for _ in range(self.epochs):
            losses, confusion = reps.train_epoch(data.train, self.batch_size)
            reps.update_losses(confusion)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        return elapsed, losses, reps.predict(data.test), reduce

    def loop(self, seeds, reduce=None):
        """K single runs: total seconds, losses (K,), predictions (K, N_test), whether they used the reduction."""
        runs = [self.run(LoopReplicas, [s], reduce) for s in seeds]
        return sum(r[0] for r in runs), torch.cat([r[1] for r in runs]), torch.cat([r[2] for r in runs]), runs[0][3]


def compare(vec, loop) -> str:
    _, vec_losses, vec_preds, _ = vec
    _, loop_losses, loop_preds, _ = loop
    same = int((vec_preds == loop_preds).all(dim=1).sum())
    flips = int((vec_preds != loop_preds).sum())
    return (
        f"per seed, vectorised vs single run: final training loss differs by at most "
        f"{(vec_losses - loop_losses).abs().max().item():.1e}; test predictions identical for {same} of "
        f"{len(vec_losses)} seeds ({flips} of {vec_preds.numel()} predictions differ)"
    )


def warm_up(setups) -> None:
    """Every path once, untimed: the fused loss kernels load (and compile, the first time on a machine)."""
    for setup in setups:
        small = Setup(setup.splits, setup.make_model, setup.make_loss, setup.optimizer, setup.batch_size, 1)
        small.device = setup.device
        small.splits = Splits(*(Split(s.x[:64], s.y[:64]) for s in (setup.splits.train,) * 3), setup.splits.num_classes)
        small.run(VectorReplicas, [0, 1], reduce=False)
        small.run(LoopReplicas, [0], reduce=False)


def dal_head_setup(epochs: int) -> Setup:
    g = torch.Generator().manual_seed(0)
    n, dim, classes = 800, 32768, 8
    y = torch.arange(n) % classes
    centers = torch.randn(classes, dim, generator=g)
    x = (0.05 * centers[y] + torch.randn(n, dim, generator=g)).relu()  # ReLU'd conv features, class signal
    half = n // 2
    splits = Splits(
        Split(x[:half], y[:half]), Split(x[half : half + 1], y[half : half + 1]), Split(x[half:], y[half:]), classes
    )
    opt = OptimizerConfig(name="sgd", lr=0.001, momentum=0.9)
    cfg = TrainConfig(model={"name": "mlp"}, optimizer=opt, epochs=epochs)
    return Setup(
        splits,
        lambda: build_model("mlp", num_classes=classes, in_features=dim, hidden=32),
        lambda: build_loss("dal", num_classes=classes, a=15.0),
        opt,
        32,
        epochs,
        cfg,
    )


def quickstart_setup(epochs: int | None) -> Setup:
    cfg = load_space("quickstart")[0].train
    splits = build_dataset(cfg.dataset.name, seed=cfg.data_seed, **cfg.dataset.options)
    c, params = splits.num_classes, model_params(cfg, splits.input_shape)
    return Setup(
        splits,
        lambda: build_model(cfg.model.name, num_classes=c, **params),
        lambda: build_loss(cfg.loss.name, num_classes=c, **cfg.loss.params),
        cfg.optimizer,
        cfg.batch_size,
        epochs or cfg.epochs,
        cfg,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="DAL head: epochs")
    parser.add_argument("--repeats", type=int, default=16, help="DAL head: K")
    parser.add_argument("--cnn-repeats", type=int, nargs="*", default=[4, 16], help="quickstart CNN: K values")
    parser.add_argument("--cnn-epochs", type=int, default=None, help="quickstart CNN: epochs (default: its own)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, medians printed")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (the goal's device) or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    head, cnn = dal_head_setup(args.epochs), quickstart_setup(args.cnn_epochs)
    head.device = cnn.device = torch.device(args.device)
    warm_up([head, cnn])
    seeds = list(range(args.repeats))
    times: dict[str, list[float]] = {}
    notes: dict[str, str] = {}

    def record(label, result):
        times.setdefault(label, []).append(result[0])
        return result

    for _ in range(args.rounds):
        vec = record("head vectorised", head.run(VectorReplicas, seeds))
        loop = record("head loop", head.loop(seeds))
        notes["head"] = compare(vec, loop)
        notes["head reduced"] = f"vectorised: row space {vec[3]}; single runs: row space {loop[3]}"
        if loop[3]:
            full = record("head loop, full D", head.loop(seeds, reduce=False))
            notes["head full"] = "vs full-D single runs: " + compare(vec, full)
        for k in (1, 2):  # the cost rule, both ways
            for reduce in (False, True):
                label = f"rule K={k} {'row space' if reduce else 'full D'}"
                record(label, head.run(LoopReplicas if k == 1 else VectorReplicas, seeds[:k], reduce))
        for k in args.cnn_repeats:
            vec = record(f"cnn K={k} vectorised", cnn.run(VectorReplicas, list(range(k))))
            loop = record(f"cnn K={k} loop", cnn.loop(list(range(k))))
            notes[f"cnn K={k}"] = compare(vec, loop)
    med = {k: statistics.median(v) for k, v in times.items()}

    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    where = torch.cuda.get_device_name(head.device) if head.device.type == "cuda" else "CPU"
    print(
        f"{where}, {torch.get_num_threads()} torch threads, median of {args.rounds} round(s), load average at the end "
        f"{load}"
    )
    print(
        f"\nDAL head: K={args.repeats}, {len(head.splits.train)} training rows of {head.splits.train.x.shape[1]} "
        f"features, {head.splits.num_classes} classes, batch {head.batch_size}, {head.epochs} epochs "
        f"({notes['head reduced']})"
    )
    for label in ("head vectorised", "head loop", "head loop, full D"):
        if label in med:
            print(f"  {label[5:]:<13} {med[label]:7.2f} s")
    print(f"  vectorised vs loop of {args.repeats} single runs: {med['head loop'] / med['head vectorised']:.1f}x")
    if "head loop, full D" in med:
        print(f"  vectorised vs full-D loop: {med['head loop, full D'] / med['head vectorised']:.1f}x")
    else:
        print("  (a single run does not use the row space: the loop is the full-D loop)")
    print(f"  {notes['head']}")
    if "head full" in notes:
        print(f"  {notes['head full']}")
    rule = {k: applies(head.cfg.model_copy(update={"repeats": k}), head.splits) for k in (1, 2)}
    print(f"  cost rule (rowspace.applies) at {head.epochs} epochs, full D vs row space:")
    for k in (1, 2):
        full, reduced = med[f"rule K={k} full D"], med[f"rule K={k} row space"]
        faster = "row space" if reduced < full else "full D"
        chosen = "row space" if rule[k] else "full D"
        print(
            f"    K={k}: full D {full:6.2f} s, row space {reduced:6.2f} s: faster {faster}, rule chooses {chosen}"
            f"{'' if faster == chosen else '  <-- rule wrong here'}"
        )
    print(
        f"\nQuickstart CNN ({cnn.cfg.model.name} {cnn.cfg.model.params}, {cnn.cfg.dataset.name}: "
        f"{len(cnn.splits.train)} training images, {cnn.cfg.loss.name} {cnn.cfg.loss.params}, batch "
        f"{cnn.batch_size}, {cnn.epochs} epochs)"
    )
    for k in args.cnn_repeats:
        v, lo = med[f"cnn K={k} vectorised"], med[f"cnn K={k} loop"]
        print(f"  K={k:<3} vectorised {v:6.2f} s, loop {lo:6.2f} s: {lo / v:.1f}x")
        print(f"    {notes[f'cnn K={k}']}")


if __name__ == "__main__":
    main()
