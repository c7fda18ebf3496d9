"""Models behind one registry: the DAL head (``mlp``), ``small_cnn``, and torchvision ``vgg16`` / ``resnet18`` /
``googlenet`` with an optional channel attention module (``cam=True``)."""

from . import backbones, cnn, mlp  # noqa: F401  (each module registers its models)
from .cam import ChannelAttention, split_output
from .registry import build_model, names

__all__ = ["ChannelAttention", "build_model", "names", "split_output"]
