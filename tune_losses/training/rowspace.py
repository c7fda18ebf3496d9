"""An exact speed-up for the DAL head on a fixed features table (N rows of D >> N values, e.g. 800 x 32768).

Every gradient of the first layer's weight W (H x D) is dH^T X_batch, a combination of the table's rows, so
with plain SGD (momentum allowed, no weight decay) W only ever moves inside the row space of X. With Q (D x r)
an orthonormal basis of that space and z = x Q the rows' coordinates, training W' = W Q on z gives the same
logits, the same gradients (grad_W' = grad_W Q) and the same trajectory as training W on x, in r <= N
dimensions instead of D; the part of W outside the row space keeps its initial value and is added back when the
model is exported. Used only when that holds (model ``mlp``, SGD, weight_decay 0, D > 2N) and when it pays:
the basis costs about 4 N^2 D (float64), training about 6 N_train D H per epoch and replica (D cancels).
"""

from __future__ import annotations

import torch
from torch import nn

from tune_losses.data import Split, Splits


def applies(cfg, splits: Splits) -> bool:
    n = len(splits.train) + len(splits.val) + len(splits.test)
    d = int(torch.tensor(splits.input_shape).prod())
    exact = (cfg.model.name == "mlp" and cfg.optimizer.name == "sgd" and cfg.optimizer.weight_decay == 0
             and d > 2 * n and splits.train.x.is_floating_point())
    hidden = int(cfg.model.params.get("hidden", 32))
    return exact and 6 * len(splits.train) * hidden * cfg.epochs * cfg.repeats > 4 * n * n


class RowSpace:
    def __init__(self, splits: Splits):
        x = torch.cat([s.x.flatten(1) for s in (splits.train, splits.val, splits.test)]).double()
        evals, evecs = torch.linalg.eigh(x @ x.T)  # Gram matrix N x N: X = U S V^T, Q = V = X^T U / S
        keep = evals > evals.max() * 1e-10
        evecs = evecs * torch.sign(evecs.gather(0, evecs.abs().argmax(0, keepdim=True)))  # canonical signs,
        # so that a resumed trial rebuilds exactly the same basis
        self.basis = ((x.T @ evecs[:, keep]) / evals[keep].sqrt()).float()  # (D, r), orthonormal columns

    def reduce(self, splits: Splits) -> Splits:
        def coords(s: Split) -> Split:
            return Split(s.x.flatten(1) @ self.basis, s.y)  # flatten(1): an empty split too

        return Splits(coords(splits.train), coords(splits.val), coords(splits.test), splits.num_classes,
                      splits.class_names, {**splits.info, "rowspace_rank": self.basis.shape[1]})

    def reduce_model(self, model: nn.Sequential) -> nn.Sequential:
        """The DAL head (Flatten, Linear(D, H), ReLU, Linear(H, C)) with its first weight W replaced by W Q."""
        first = model[1]
        reduced = nn.Linear(self.basis.shape[1], first.out_features)
        with torch.no_grad():
            reduced.weight.copy_(first.weight @ self.basis)
            reduced.bias.copy_(first.bias)
        return nn.Sequential(model[0], reduced, *list(model)[2:])

    def expand_model(self, reduced: nn.Sequential, initial: nn.Sequential) -> nn.Sequential:
        """Back to D inputs: W = W' Q^T + (W0 - W0 Q Q^T), W0 the replica's initial weight."""
        w0 = initial[1].weight.detach()
        outside = w0 - (w0 @ self.basis) @ self.basis.T
        with torch.no_grad():
            initial[1].weight.copy_(reduced[1].weight.detach() @ self.basis.T + outside)
            initial[1].bias.copy_(reduced[1].bias.detach())
            for target, source in zip(list(initial)[2:], list(reduced)[2:]):
                target.load_state_dict(source.state_dict())
        return initial
