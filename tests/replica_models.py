"""Models with random and stateful layers for the replica tests, loaded as a plugin (``plugins: [replica_models]``):
an MLP with dropout and a CNN with batch norm and dropout, both for the 8x8 digits."""

import torch
from torch import nn

from tune_losses.models.registry import register


@register("dropout_mlp")
def dropout_mlp(num_classes: int, in_channels: int = 1, hidden: int = 32, p: float = 0.3):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * 64, hidden), nn.ReLU(), nn.Dropout(p), nn.Linear(hidden, num_classes)
    )


@register("bn_cnn")
def bn_cnn(num_classes: int, in_channels: int = 1, width: int = 8, p: float = 0.2):
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Dropout(p),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(width * 16, num_classes),
    )


class NoisyMLP(nn.Module):
    """Gaussian noise on the hidden layer in training, drawn in ``forward`` itself (not through a module)."""

    def __init__(self, num_classes: int, in_channels: int = 1, hidden: int = 16):
        super().__init__()
        self.first, self.last = nn.Linear(in_channels * 64, hidden), nn.Linear(hidden, num_classes)

    def forward(self, x):
        h = self.first(x.flatten(1)).relu()
        return self.last(h + 0.1 * torch.randn_like(h) if self.training else h)


register("noisy_mlp")(NoisyMLP)
