"""CC-Loss, channel correlation loss (Song, Chang, Ma, Li, Tan: "CC-Loss: Channel Correlation Loss for Image
Classification", ICPR 2020, arXiv 2010.05469), over the channel-attention vectors w_i of a channel attention
module (CAM), combined with cross-entropy:

    L = L_CE + lambda * L_CC.

Within a mini-batch the squared Euclidean distance matrix D_ij = ||w_i - w_j||^2 is formed; same-class
distances are to shrink and different-class distances to grow. Our copy of the paper does not give how the two
are combined, and no published equation or official code could be found, so L_CC follows the project spec's
fallback: per sample i, the mean intra-class over the mean inter-class squared distance, averaged over samples,

    L_CC = mean_{i valid} [ mean_{j != i, y_j = y_i} D_ij / (mean_{j: y_j != y_i} D_ij + eps) ],

bounded below by 0, scale-free, and zero when all same-class vectors coincide. A sample is valid when it has at
least one same-class partner and one other-class sample in the batch; a batch with no valid sample (one class
only, or all classes single) contributes 0, never NaN. ``lam`` = 0 is exactly cross-entropy.
On CPU the loss and its gradients come from one fused kernel (fused.py); elsewhere from the expression below.
"""

import torch
import torch.nn.functional as F

from . import fused
from .base import ClassificationLoss, param_buffer, param_value, require
from .registry import register

EPS = 1e-6


@register("cc")
class ChannelCorrelationLoss(ClassificationLoss):
    needs_attention = True
    invalid_params = [{"lam": -0.5}, {"lambda": -0.5}]  # refused: tests/test_contracts.py checks each
    replica_params = ("lam", "lambda")

    lam: torch.Tensor  # a parameter buffer (base.py: param_buffer), one value per replica under vmap

    def __init__(self, num_classes: int, lam: float = 1.0, **kwargs):
        name = "lam"
        if "lambda" in kwargs:  # search spaces may spell the weight `lambda`
            lam, name = kwargs.pop("lambda"), "lambda"
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        super().__init__(num_classes)
        require(float(lam) >= 0, name, lam, ">= 0 (the CC-Loss paper sweeps 0..2)")
        self.register_buffer("lam", param_buffer(lam), persistent=False)

    def compute(self, logits, target, attention=None):
        lam = param_value(self.lam)
        if isinstance(lam, float) and lam == 0:
            return F.cross_entropy(logits, target)
        if fused.usable(logits) and attention.is_cpu:  # the same loss and gradients in one CPU kernel
            return fused.kernels().cc_loss(logits, target, attention, self.lam, EPS)
        ce = F.cross_entropy(logits, target)
        return ce + lam * channel_correlation(attention.to(logits.dtype), target)


def channel_correlation(attention: torch.Tensor, target: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """L_CC of a batch of attention vectors (B, channels) with labels (B,); see the module docstring."""
    attention = attention - attention.mean(dim=0)  # distances are unchanged; the Gram form loses less precision
    sq = (attention * attention).sum(dim=1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * attention @ attention.T).clamp(min=0)
    same = target[:, None] == target[None, :]
    eye = torch.eye(len(target), dtype=torch.bool, device=target.device)
    intra_mask, inter_mask = (same & ~eye).to(dist.dtype), (~same).to(dist.dtype)
    n_intra, n_inter = intra_mask.sum(dim=1), inter_mask.sum(dim=1)
    intra = (dist * intra_mask).sum(dim=1) / n_intra.clamp(min=1)
    inter = (dist * inter_mask).sum(dim=1) / n_inter.clamp(min=1)
    valid = ((n_intra > 0) & (n_inter > 0)).to(dist.dtype)
    return (valid * intra / (inter + eps)).sum() / valid.sum().clamp(min=1)
