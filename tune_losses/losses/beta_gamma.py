"""The beta/gamma loss of "Improved Loss Function for Image Classification" (Computational Intelligence and
Neuroscience, 2021, article 6660961): cross-entropy on the softmax probability p_t of the true class, with a
two-parameter modulating factor,

    L_i = -(1 - p_t^beta)^gamma log p_t,        beta > 0, gamma >= 0.

RECONSTRUCTION. Our copy of the paper lost its equations (1)-(8), and the published form could not be found
in the stored copies of the article. This form is rebuilt from the properties the text keeps:
  * the factor (1 - p_t^beta)^gamma -> 1 as p_t -> 0 (a misclassified sample keeps its CE loss) and -> 0 as
    p_t -> 1 (well-classified samples are down-weighted), as in focal loss;
  * beta "expands differences among samples": the factor stays near 1 for hard samples and falls steeply for
    easy ones, the steeper the larger beta; for beta < 1 the loss departs strongly from CE (as the text says
    of small beta), for beta > 1 it still shapes the low-loss region;
  * gamma is the focusing exponent.
Special cases: gamma = 0 is exactly CE; beta = 1 is exactly focal loss with the same gamma.
On CPU the loss and its gradient come from one fused kernel (fused.py); elsewhere from the expression below.
"""

import torch
import torch.nn.functional as F

from . import fused
from .base import ClassificationLoss, modulating_pow, param_buffer, param_value, require
from .registry import register


@register("beta_gamma")
class BetaGammaLoss(ClassificationLoss):
    invalid_params = [{"beta": 0.0}, {"gamma": -1.0}]  # refused: tests/test_contracts.py checks each
    replica_params = ("beta", "gamma")

    beta: torch.Tensor  # parameter buffers (base.py: param_buffer), one value per replica under vmap
    gamma: torch.Tensor

    def __init__(self, num_classes: int, beta: float = 4.0, gamma: float = 5.0):
        super().__init__(num_classes)
        require(float(beta) > 0, "beta", beta, "> 0 (the paper sweeps 2..16)")
        require(float(gamma) >= 0, "gamma", gamma, ">= 0 (the paper sweeps 2..21)")
        self.register_buffer("beta", param_buffer(beta), persistent=False)
        self.register_buffer("gamma", param_buffer(gamma), persistent=False)

    def compute(self, logits, target, attention=None):
        beta, gamma = param_value(self.beta), param_value(self.gamma)
        if isinstance(gamma, float) and gamma == 0:
            return F.cross_entropy(logits, target)
        if fused.usable(logits):  # the same loss and gradient in one CPU kernel (fused.py)
            return fused.kernels().beta_gamma_loss(logits, target, self.beta, self.gamma)
        logpt = F.log_softmax(logits, dim=1).gather(1, target[:, None])[:, 0]
        # (1 - p_t^beta)^gamma, stable near 1; finite gradients where p_t rounds to 1 (base.py: modulating_pow)
        factor = modulating_pow(-torch.expm1(beta * logpt), gamma)
        return -(factor * logpt).mean()
