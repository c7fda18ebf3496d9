"""Forward+backward time per batch of each loss, as a ratio to CE, measured side by side in one run.

Batch 128, C = 10 and 100, median over repeats (the rounds interleave the losses so that machine noise hits
all alike). Two columns:
  * loss:      logits -> loss -> backward (what the loss itself costs);
  * with CAM:  features -> CAM -> linear classifier -> loss -> backward, the step CC-Loss needs; CE, DAL and
               beta/gamma run through the same CAM head, so the ratio is the loss's share of a real step.
Goals (issue #2): DAL and beta/gamma within 1.1x of CE; CC-Loss within 1.5x of CE with the CAM forward.

    .venv/bin/python benchmarks/losses.py [--rounds 30] [--device cuda]
"""

import argparse
import statistics
import time

import torch
from torch import nn

from tune_losses.losses import build_loss
from tune_losses.models import ChannelAttention

BATCH, CHANNELS, SPATIAL = 128, 256, 4
LOSSES = [
    ("ce", {}),
    ("focal", {"gamma": 2.0}),
    ("dal", {"a": 15.0}),
    ("beta_gamma", {"beta": 4.0, "gamma": 5.0}),
    ("cc", {"lam": 1.0}),
]


class CAMHead(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.cam, self.fc = ChannelAttention(CHANNELS), nn.Linear(CHANNELS, classes)

    def forward(self, f):
        f, w = self.cam(f)
        return self.fc(f.mean(dim=(2, 3))), w


def timed(fn, inner, sync):
    sync()
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    sync()
    return (time.perf_counter() - start) / inner


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--inner", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"torch {torch.__version__}, {where}, batch {BATCH}, median of {args.rounds}")
    print(f"{'C':>4} {'loss':>11} {'loss us':>8} {'ratio':>6} {'CAM step us':>12} {'ratio':>6}")
    for classes in (10, 100):
        target = torch.randint(0, classes, (BATCH,), device=dev)
        logits = torch.randn(BATCH, classes, requires_grad=True, device=dev)
        attention = torch.rand(BATCH, CHANNELS, requires_grad=True, device=dev)
        feats = torch.randn(BATCH, CHANNELS, SPATIAL, SPATIAL, device=dev)
        head = CAMHead(classes).to(dev)
        losses = {}
        for name, params in LOSSES:
            loss = build_loss(name, num_classes=classes, **params).to(dev)
            if name == "dal":
                loss.update(torch.randint(0, 50, (classes, classes), device=dev))
            losses[name] = loss

        def loss_only(loss):
            def step():
                loss(logits, target, attention=attention).backward()  # noqa: B023 (called in this iteration)

            return step

        def cam_step(loss):
            def step():
                out, w = head(feats)  # noqa: B023 (called in this iteration)
                loss(out, target, attention=w).backward()  # noqa: B023

            return step

        samples = {(n, kind): [] for n in losses for kind in ("loss", "cam")}
        for _ in range(args.rounds):
            for n, loss in losses.items():
                samples[(n, "loss")].append(timed(loss_only(loss), args.inner, sync))
                samples[(n, "cam")].append(timed(cam_step(loss), args.inner // 5 or 1, sync))
        med = {k: statistics.median(v) for k, v in samples.items()}
        for n in losses:
            lo, cam = med[(n, "loss")], med[(n, "cam")]
            print(
                f"{classes:>4} {n:>11} {lo * 1e6:8.1f} {lo / med[('ce', 'loss')]:6.2f} "
                f"{cam * 1e6:12.1f} {cam / med[('ce', 'cam')]:6.2f}"
            )


if __name__ == "__main__":
    main()
