"""An exact speed-up for the DAL head on a fixed features table (N rows of D >> N values, e.g. 800 x 32768).

Every gradient of the first layer's weight W (H x D) is dH^T X_batch, a combination of the table's rows, so
with plain SGD (momentum allowed, no weight decay) W only ever moves inside the row space of X. With Q (D x r)
an orthonormal basis of that space and z = x Q the rows' coordinates, training W' = W Q on z gives the same
logits, the same gradients (grad_W' = grad_W Q) and the same trajectory as training W on x, in r <= N
dimensions instead of D; the part of W outside the row space keeps its initial value and is added back when the
model is exported. Used only when that holds (model ``mlp``, SGD, weight_decay 0, D > 2N) and when it pays
(``applies``).

Q itself is never formed on the training path. The Gram matrix X X^T = U S^2 U^T (float64) gives the rows'
coordinates G = X Q = U S and M = U / S with Q = X^T M (Q = V of the SVD X = U S V^T), so the coordinates are
G (no product with Q) and a replica's reduced first weight is W Q = (W X^T) M, one float32 H x D x N product per
replica (the first layer's own forward product) times a small float64 one. The export adds the trained change
back as W = W0 + (W' - W0 Q) Q^T = W0 + ((W' - W0 Q) M^T) X. ``basis`` (Q, D x r) is computed only if asked for.

Checkpoints: the reduced weights mean something only with the basis they were trained in, and a trial resumed on
another node recomputes the basis, whose rotation (within eigenspaces of equal eigenvalues) or rank (at the
cut-off) can differ with the linear-algebra library. A checkpoint therefore also holds the first layer's
weight and momentum as combinations of the data rows, A = W' G^+ = W' M^T (so that the in-span full weight
W' Q^T = A X; the same A in any basis of that span), and the basis's digest (of the rows' coordinates G, which
with the data fix Q). A resumed trial with the same basis (the same digest) loads the reduced weights bit for
bit; with another one it loads W' = A G' in its own basis.
"""

from __future__ import annotations

import hashlib
from typing import cast

import torch
from torch import nn

from tune_losses.data import Split, Splits


def applies(cfg, splits: Splits) -> bool:
    """Whether `train` uses the reduction: where it is exact (see the module's docstring) and pays, i.e. where
    training on the D-dim rows (about 6 N_train D H per epoch and replica) would cost more than the basis (the
    float64 Gram matrix and its eigendecomposition, measured at about 2 N^2 D of that training's arithmetic,
    reduced training being nearly free). Measured with benchmarks/repeats.py (its cost-rule lines) on the DAL
    head, 400 training rows of 32768, 801 rows in all, 20 epochs, 1 thread: a single run 1.38 s on the D-dim
    rows, 1.15 s reduced; 2 repeats 3.11 s and 1.35 s (break-even at about 17 replica-epochs)."""
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
    return exact and 6 * len(splits.train) * hidden * cfg.epochs * cfg.repeats > 2 * n * n


WEIGHT = "1.weight"  # the reduced model's first-layer weight W' (H x r)
RANK_RTOL = 1e-10  # eigenvalues of X X^T below this fraction of the largest count as zero (rank cut-off)
GRAM_BLOCK = 256  # rows per block of the Gram matrix's blocked product


def gram(x: torch.Tensor) -> torch.Tensor:
    """X X^T in float64 (X: N x D, any float dtype), from the products of row blocks on and above the diagonal
    only (the blocks below are their transposes): with 4 blocks 10 of 16 block products."""
    n = x.shape[0]
    b = max(1, round(n / GRAM_BLOCK))
    bounds = [(i * n) // b for i in range(b + 1)]
    parts = [x[bounds[i] : bounds[i + 1]].double() for i in range(b)]
    out = torch.empty(n, n, dtype=torch.float64)
    for i in range(b):
        for j in range(i, b):
            block = parts[i] @ parts[j].T
            out[bounds[i] : bounds[i + 1], bounds[j] : bounds[j + 1]] = block
            if j > i:
                out[bounds[j] : bounds[j + 1], bounds[i] : bounds[i + 1]] = block.T
    return out


def row_coordinates(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For X (N x D): M and G (N x r, float64) with Q = X^T M an orthonormal basis of the row space of X and
    G = X Q the rows' coordinates in it. From the Gram matrix X X^T = U S^2 U^T (float64; eigenvalues below
    ``RANK_RTOL`` of the largest dropped, each eigenvector's largest entry positive): M = U / S, G = U S."""
    evals, evecs = torch.linalg.eigh(gram(x))
    keep = evals > evals.max() * RANK_RTOL
    evecs = evecs * torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))  # canonical signs
    s = evals[keep].sqrt()
    return evecs[:, keep] / s, evecs[:, keep] * s


class RowSpace:
    def __init__(self, splits: Splits):
        self.sources = tuple(s.x for s in (splits.train, splits.val, splits.test))
        self.x = torch.cat([x.flatten(1) for x in self.sources])  # (N, D): the rows, as given
        self.m, self.rows = row_coordinates(self.x)  # (N, r) float64 each: Q = X^T M, G = X Q
        shape = str((self.x.shape[1], self.rows.shape[1])).encode()
        self.digest = hashlib.sha256(shape + self.rows.contiguous().numpy().tobytes()).hexdigest()
        self._basis: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.rows.shape[1]

    @property
    def basis(self) -> torch.Tensor:
        """Q (D x r, float32): an orthonormal basis of the rows' span (computed on first use; training needs none)."""
        if self._basis is None:
            self._basis = (self.x.double().T @ self.m).float()
        return self._basis

    def to_rows(self, w: torch.Tensor) -> torch.Tensor:
        """W' (..., H, r) in this basis -> A (..., H, N), float64, with A X = W' Q^T (independent of the basis)."""
        return w.detach().cpu().double() @ self.m.T  # M^T = G^+ (G = U S, M = U / S)

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
        """The splits as the rows' coordinates (r values each): for the splits this space was built from, G
        itself (rounded to float32); for others x Q."""
        parts = (splits.train, splits.val, splits.test)
        if all(s.x is x for s, x in zip(parts, self.sources)):
            ends = torch.tensor([len(s) for s in parts]).cumsum(0).tolist()
            coords = [self.rows[a:b].float() for a, b in zip([0, *ends[:2]], ends)]
        else:
            coords = [s.x.flatten(1) @ self.basis for s in parts]  # flatten(1): an empty split too
        train, val, test = (Split(c, s.y) for c, s in zip(coords, parts))
        return Splits(
            train, val, test, splits.num_classes, splits.class_names, {**splits.info, "rowspace_rank": self.rank}
        )

    def reduced_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """W Q (H x r, float32) of a first-layer weight W (H x D): (W X^T) M, W X^T in W's dtype (one product of
        the same shape as the layer's forward over the table's rows, the same result however many replicas)."""
        return ((weight.detach() @ self.x.to(weight.dtype).T).double() @ self.m).to(weight.dtype)

    def reduce_model(self, model: nn.Sequential) -> nn.Sequential:
        """The DAL head (Flatten, Linear(D, H), ReLU, Linear(H, C)) with its first weight W replaced by W Q."""
        first = cast(nn.Linear, model[1])
        reduced = nn.utils.skip_init(nn.Linear, self.rank, first.out_features, dtype=first.weight.dtype)
        with torch.no_grad():  # skip_init: no random draws, the stream is that of the full model's init
            reduced.weight.copy_(self.reduced_weight(first.weight))
            reduced.bias.copy_(first.bias)
        return nn.Sequential(model[0], reduced, *list(model)[2:])

    def expand_model(self, reduced: nn.Sequential, initial: nn.Sequential) -> nn.Sequential:
        """Back to D inputs: W = W0 + (W' - W0 Q) Q^T, W0 the replica's initial weight (the part of W outside the
        row space is W0's, the trained change lies inside it); Q^T = M^T X."""
        first, reduced_first = cast(nn.Linear, initial[1]), cast(nn.Linear, reduced[1])
        w0 = first.weight.detach()
        change = reduced_first.weight.detach().cpu() - self.reduced_weight(w0)
        with torch.no_grad():
            first.weight.add_(((change.double() @ self.m.T) @ self.x.double()).to(w0.dtype))
            first.bias.copy_(reduced_first.bias.detach())
            for target, source in zip(list(initial)[2:], list(reduced)[2:]):
                target.load_state_dict(source.state_dict())
        return initial
