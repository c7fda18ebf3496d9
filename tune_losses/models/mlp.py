"""The DAL paper's head: a two-layer fully connected net over precomputed (frozen backbone) features."""

from torch import nn

from .registry import register


@register("mlp")
def feature_mlp(num_classes: int, in_features: int, hidden: int = 32):
    """Linear(in_features, hidden) -> ReLU -> Linear(hidden, num_classes); the paper uses hidden = 32."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
