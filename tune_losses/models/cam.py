"""The channel attention module (CAM) of the CC-Loss paper, squeeze-and-excitation style.

    w = sigmoid(W2 relu(W1 GAP(F))),   F' = w * F   (one weight per channel)

Models with CAM return ``(logits, w)`` so that CC-Loss can compare the attention vectors w within a batch.
"""

import torch
from torch import nn


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, features: torch.Tensor):
        weights = torch.sigmoid(self.fc(features.mean(dim=(2, 3))))
        return features * weights[:, :, None, None], weights


def split_output(output):
    """A model's output as (logits, attention-or-None)."""
    if isinstance(output, tuple):
        return output
    return output, None
