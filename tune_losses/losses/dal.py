"""Dynamic Attention Loss (Cao, Qiu, Chang, Li, Ma: "Dynamic Attention Loss for Small-Sample Image
Classification", eq. (2)-(3) and Algorithm 1).

    L_DA = -(1/N) sum_i (Q_i + y_i)^T log P_i                                        (2)

Algorithm 1, read as a matrix: after every epoch, take that epoch's training confusion matrix (rows = true
class, columns = predicted class), normalise each row to rates R, and rebuild the soft-label matrix

    S = -R / a,   with diag(S) = 1,

so a sample of class c trains with the label row S[c]:

    loss_i = -sum_j S[y_i, j] log P_ij = -log p_t + (1/a) sum_{j != y_i} R[y_i, j] log P_ij.

``a > 1`` is the inhibiting factor (the paper sweeps 5..20 and reports instability below 3). Before the first
:meth:`update` S is the identity, i.e. plain cross-entropy; a class with no samples in the epoch keeps an
identity row. S is a buffer, so it travels with ``state_dict`` and a resumed trial keeps its soft labels.
``a`` enters only :meth:`update`, which every replica runs on its own loss object: replicas with different
``a`` (a fused group of configs) need nothing more.
On CPU the loss and its gradient come from one fused kernel (fused.py); elsewhere from the expression below.
"""

import torch
import torch.nn.functional as F

from . import fused
from .base import ClassificationLoss, require
from .registry import register


@register("dal")
class DynamicAttentionLoss(ClassificationLoss):
    invalid_params = [{"a": 1.0}, {"a": -3.0}]  # refused: tests/test_contracts.py checks each
    replica_params = ("a",)

    soft_labels: torch.Tensor  # a buffer: saved with state_dict, moved with .to()

    def __init__(self, num_classes: int, a: float = 15.0):
        super().__init__(num_classes)
        require(float(a) > 1, "a", a, "> 1 (the inhibiting factor; the DAL paper uses 5..20)")
        self.a = float(a)
        self.register_buffer("soft_labels", torch.eye(num_classes))

    @torch.no_grad()
    def update(self, confusion: torch.Tensor) -> None:
        confusion = torch.as_tensor(confusion, dtype=torch.float64)
        c = self.num_classes
        require(confusion.shape == (c, c), "confusion.shape", tuple(confusion.shape), f"({c}, {c})")
        require(bool((confusion >= 0).all()), "confusion", "negative counts", "counts >= 0")
        self.soft_labels.copy_(soft_labels_from_confusion(confusion, self.a).to(self.soft_labels))

    def compute(self, logits, target, attention=None):
        if fused.usable(logits):  # the same loss and gradient in one CPU kernel (fused.py)
            return fused.kernels().dal_loss(logits, target, self.soft_labels)
        # cross_entropy with a per-sample target row is exactly -sum_j S[y_i, j] log P_ij
        return F.cross_entropy(logits, self.soft_labels.to(logits.dtype)[target])


def soft_labels_from_confusion(confusion: torch.Tensor, a: float) -> torch.Tensor:
    """S = -R / a with unit diagonal, R the row-normalised confusion matrix; empty rows give identity rows."""
    totals = confusion.sum(dim=1, keepdim=True)
    rates = torch.where(totals > 0, confusion / totals.clamp(min=1), torch.zeros_like(confusion))
    soft = -rates / a
    soft.fill_diagonal_(1.0)
    return soft
