"""An exact speed-up for the DAL head on a fixed features table (N rows of D >> N values, e.g. 800 x 32768).

Every gradient of the first layer's weight W (H x D) is dH^T X_batch, a combination of the table's rows, so
with plain SGD (momentum allowed, no weight decay) W only ever moves inside the row space of X. With Q (D x r)
an orthonormal basis of that space and z = x Q the rows' coordinates, training W' = W Q on z gives the same
logits, the same gradients (grad_W' = grad_W Q) and the same trajectory as training W on x, in r <= N
dimensions instead of D; the part of W outside the row space keeps its initial value and is added back when the
model is exported. Used only when that holds (model ``mlp``, SGD, weight_decay 0, D > 2N) and when it pays:
the basis costs about 4 N^2 D (float64), training about 6 N_train D H per epoch and replica (D cancels).

Checkpoints: the reduced weights mean something only with the basis they were trained in, and a trial resumed on
another node recomputes the basis, whose rotation (within eigenspaces of equal eigenvalues) or rank (at the
cut-off) can differ with the linear-algebra library. A checkpoint therefore also holds the first layer's
weight and momentum as combinations of the data rows, A = W' G^+ with G = X Q the rows' coordinates (so that
the in-span full weight W' Q^T = A X; the same A in any basis of that span), and the basis's digest. A resumed
trial with the same basis (the same digest) loads the reduced weights bit for bit; with another one it loads
W' = A G' in its own basis.
"""

from __future__ import annotations

import hashlib
from typing import cast

import torch
from torch import nn

from tune_losses.data import Split, Splits


def applies(cfg, splits: Splits) -> bool:
    n = len(splits.train) + len(splits.val) + len(splits.test)
    d = int(torch.tensor(splits.input_shape).prod())
    exact = (
        cfg.model.name == "mlp"
        and cfg.optimizer.name == "sgd"
        and cfg.optimizer.weight_decay == 0
        and d > 2 * n
        and splits.train.x.is_floating_point()
    )
    hidden = int(cfg.model.params.get("hidden", 32))
    return exact and 6 * len(splits.train) * hidden * cfg.epochs * cfg.repeats > 4 * n * n


WEIGHT = "1.weight"  # the reduced model's first-layer weight W' (H x r)


def row_basis(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An orthonormal basis Q (D x r) of the row space of X (N x D, float64) and the rows' coordinates G = X Q."""
    evals, evecs = torch.linalg.eigh(x @ x.T)  # Gram matrix N x N: X = U S V^T, Q = V = X^T U / S, G = U S
    keep = evals > evals.max() * 1e-10
    evecs = evecs * torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))  # canonical signs
    s = evals[keep].sqrt()
    return (x.T @ evecs[:, keep]) / s, evecs[:, keep] * s


class RowSpace:
    def __init__(self, splits: Splits):
        x = torch.cat([s.x.flatten(1) for s in (splits.train, splits.val, splits.test)]).double()
        basis, self.rows = row_basis(x)  # (D, r) with orthonormal columns, (N, r) float64
        self.basis = basis.float()
        self.digest = hashlib.sha256(str(tuple(self.basis.shape)).encode() + self.basis.numpy().tobytes()).hexdigest()
        self._rows_pinv: torch.Tensor | None = None

    def to_rows(self, w: torch.Tensor) -> torch.Tensor:
        """W' (..., H, r) in this basis -> A (..., H, N), float64, with A X = W' Q^T (independent of the basis)."""
        if self._rows_pinv is None:
            self._rows_pinv = torch.linalg.pinv(self.rows)  # (r, N); G has full column rank
        return w.detach().cpu().double() @ self._rows_pinv

    def from_rows(self, a: torch.Tensor) -> torch.Tensor:
        """A (..., H, N) -> W' = A G (..., H, r) in this basis."""
        return (a.double() @ self.rows).float()

    def checkpoint(self, replicas, state: dict) -> dict:
        """What a checkpoint holds besides the replicas' reduced state: the basis's digest and the first layer's
        weight and momentum as combinations of the data rows."""
        return {"basis_sha256": self.digest, "replicas": replicas.map_param(state, WEIGHT, self.to_rows)}

    def restore(self, replicas, state: dict) -> dict:
        """The replicas' state from a checkpoint, in this basis."""
        saved = state.get("rowspace")
        if saved is None or saved["basis_sha256"] == self.digest:  # the same basis (or a checkpoint without one)
            return state["replicas"]
        return replicas.map_param(saved["replicas"], WEIGHT, self.from_rows)

    def reduce(self, splits: Splits) -> Splits:
        def coords(s: Split) -> Split:
            return Split(s.x.flatten(1) @ self.basis, s.y)  # flatten(1): an empty split too

        return Splits(
            coords(splits.train),
            coords(splits.val),
            coords(splits.test),
            splits.num_classes,
            splits.class_names,
            {**splits.info, "rowspace_rank": self.basis.shape[1]},
        )

    def reduce_model(self, model: nn.Sequential) -> nn.Sequential:
        """The DAL head (Flatten, Linear(D, H), ReLU, Linear(H, C)) with its first weight W replaced by W Q."""
        first = cast(nn.Linear, model[1])
        reduced = nn.Linear(self.basis.shape[1], first.out_features)
        with torch.no_grad():
            reduced.weight.copy_(first.weight @ self.basis)
            reduced.bias.copy_(first.bias)
        return nn.Sequential(model[0], reduced, *list(model)[2:])

    def expand_model(self, reduced: nn.Sequential, initial: nn.Sequential) -> nn.Sequential:
        """Back to D inputs: W = W' Q^T + (W0 - W0 Q Q^T), W0 the replica's initial weight."""
        first, reduced_first = cast(nn.Linear, initial[1]), cast(nn.Linear, reduced[1])
        w0 = first.weight.detach()
        outside = w0 - (w0 @ self.basis) @ self.basis.T
        with torch.no_grad():
            first.weight.copy_(reduced_first.weight.detach() @ self.basis.T + outside)
            first.bias.copy_(reduced_first.bias.detach())
            for target, source in zip(list(initial)[2:], list(reduced)[2:]):
                target.load_state_dict(source.state_dict())
        return initial
