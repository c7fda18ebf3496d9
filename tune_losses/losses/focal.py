"""Multi-class focal loss (Lin et al., 2017).

    FL_i = -alpha_{y_i} (1 - p_t)^gamma log p_t,      gamma >= 0, alpha optional (one weight per class).

With gamma = 0 and no alpha it is exactly cross-entropy. 1 - p_t is computed as -expm1(log p_t) and raised to
gamma by ``modulating_pow`` (base.py), so values and gradients stay finite where p_t rounds to 1.
"""

import torch
import torch.nn.functional as F

from .base import ClassificationLoss, modulating_pow, param_buffer, param_value, require
from .registry import register


@register("focal")
class FocalLoss(ClassificationLoss):
    invalid_params = [{"gamma": -0.1}, {"alpha": [1.0]}]  # refused: tests/test_contracts.py checks each
    replica_params = ("gamma",)

    gamma: torch.Tensor  # a parameter buffer (base.py: param_buffer), one value per replica under vmap

    alpha: torch.Tensor | None  # a buffer (per-class weights), or None

    def __init__(self, num_classes: int, gamma: float = 2.0, alpha=None):
        super().__init__(num_classes)
        require(float(gamma) >= 0, "gamma", gamma, ">= 0")
        self.register_buffer("gamma", param_buffer(gamma), persistent=False)
        if alpha is not None:
            alpha = torch.as_tensor(alpha, dtype=torch.float64)
            require(
                alpha.shape == (num_classes,), "alpha", list(alpha.shape), f"a list of {num_classes} per-class weights"
            )
            require(bool((alpha >= 0).all()), "alpha", alpha.tolist(), "non-negative weights")
        self.register_buffer("alpha", alpha)

    def compute(self, logits, target, attention=None):
        gamma = param_value(self.gamma)
        ce_factor = isinstance(gamma, float) and gamma == 0
        if ce_factor and self.alpha is None:
            return F.cross_entropy(logits, target)
        logpt = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
        loss = -logpt if ce_factor else -modulating_pow(-torch.expm1(logpt), gamma) * logpt
        if self.alpha is not None:
            loss = self.alpha.to(loss.dtype)[target] * loss
        return loss.mean()
