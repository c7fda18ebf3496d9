"""torchvision backbones (VGG16, ResNet18, GoogLeNet) with an optional CAM after the last convolutional block.

Weights: ``weights=None`` (random initialisation, the default and what tests use), ``"imagenet"`` (torchvision's
published weights: downloaded into the torch hub cache if missing, so only with the internet), or a path to a
local ``.pth`` state dict of the torchvision model (loaded with ``weights_only=True``). Nothing downloads at
import time. The model's ``weights_source`` says which was used; it is logged with every run.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from .cam import ChannelAttention
from .registry import register

# name: (torchvision builder, its weights enum, channels of the last conv block); torchvision is imported when a
# backbone is built, not with this module (a trial process that trains a small model never pays for it).
_TORCHVISION = {
    "vgg16": ("vgg16", "VGG16_Weights", 512),
    "resnet18": ("resnet18", "ResNet18_Weights", 512),
    "googlenet": ("googlenet", "GoogLeNet_Weights", 1024),
}


class CAMNet(nn.Module):
    """features -> [CAM] -> the backbone's own pooling and classifier; returns logits or (logits, attention)."""

    def __init__(self, features: nn.Module, head: nn.Module, channels: int, cam: bool):
        super().__init__()
        self.features, self.head = features, head
        self.cam = ChannelAttention(channels) if cam else None

    def forward(self, x):
        f = self.features(x)
        if self.cam is None:
            return self.head(f)
        f, w = self.cam(f)
        return self.head(f), w


def weights_enum(name: str):
    """torchvision's weights enum of a backbone (e.g. VGG16_Weights)."""
    import torchvision.models

    return getattr(torchvision.models, _TORCHVISION[name][1])


def load_torchvision(name: str, weights: str | Path | None):
    import torchvision.models

    factory, enum = getattr(torchvision.models, _TORCHVISION[name][0]), weights_enum(name)
    extra = {"aux_logits": False, "init_weights": weights is None} if name == "googlenet" else {}
    if weights is None:
        return factory(weights=None, **extra), "random-init"
    if str(weights) == "imagenet":
        if name == "googlenet":
            extra = {"aux_logits": True, "init_weights": False}
        model = factory(weights=enum.DEFAULT, **extra)
        if name == "googlenet":
            model.aux_logits, model.aux1, model.aux2 = False, None, None
        return model, f"imagenet:{enum.DEFAULT}"
    path = Path(weights)
    if not path.is_file():
        raise ValueError(
            f"weights={str(weights)!r} is not allowed: weights must be None, 'imagenet' or the path "
            f"of an existing .pth state dict (no file at {path})"
        )
    model = factory(weights=None, **extra)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
    model.load_state_dict(state)
    return model, f"file:{path}"


def build_backbone(name: str, num_classes: int, cam: bool = False, weights=None, in_channels: int = 3):
    model, source = load_torchvision(name, weights)
    channels = _TORCHVISION[name][2]
    if name == "vgg16":
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
        if in_channels != 3:
            model.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
        net = CAMNet(model.features, nn.Sequential(model.avgpool, nn.Flatten(), model.classifier), channels, cam)
    elif name == "resnet18":
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        if in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        trunk = nn.Sequential(
            model.conv1, model.bn1, model.relu, model.maxpool, model.layer1, model.layer2, model.layer3, model.layer4
        )
        net = CAMNet(trunk, nn.Sequential(model.avgpool, nn.Flatten(), model.fc), channels, cam)
    else:  # googlenet
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        if in_channels != 3:
            model.conv1.conv = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        model.transform_input = False
        trunk = nn.Sequential(
            model.conv1,
            model.maxpool1,
            model.conv2,
            model.conv3,
            model.maxpool2,
            model.inception3a,
            model.inception3b,
            model.maxpool3,
            model.inception4a,
            model.inception4b,
            model.inception4c,
            model.inception4d,
            model.inception4e,
            model.maxpool4,
            model.inception5a,
            model.inception5b,
        )
        net = CAMNet(trunk, nn.Sequential(model.avgpool, nn.Flatten(), model.dropout, model.fc), channels, cam)
    net.weights_source = source
    return net


for _name in _TORCHVISION:
    register(_name)(partial(build_backbone, _name))  # its signature: (num_classes, cam, weights, in_channels)
