"""A small CNN for small grayscale images (8x8 digits, 28x28 MNIST) that trains in seconds on CPU.

No batch norm, so K replicas can be trained as one vectorised model (``torch.func``) with exactly the result
of training each alone.
"""

from torch import nn

from .cam import ChannelAttention
from .registry import register


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16, cam: bool = False):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.cam = ChannelAttention(2 * width, reduction=4) if cam else None
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * width, num_classes))

    def forward(self, x):
        f = self.features(x)
        if self.cam is None:
            return self.classifier(f)
        f, w = self.cam(f)
        return self.classifier(f), w


@register("small_cnn")
def small_cnn(num_classes: int, in_channels: int = 1, width: int = 16, cam: bool = False):
    return SmallCNN(num_classes, in_channels=in_channels, width=width, cam=cam)
