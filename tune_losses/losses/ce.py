"""Cross-entropy, the baseline: CE_i = -log p_t, averaged over the batch."""

import torch.nn.functional as F

from .base import ClassificationLoss
from .registry import register


@register("ce")
class CrossEntropyLoss(ClassificationLoss):
    def compute(self, logits, target, attention=None):
        return F.cross_entropy(logits, target)
