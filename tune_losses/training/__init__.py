"""Training: the config schema, the one `train` function, vectorised repeats and checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .group import train_group
from .loop import train

__all__ = ["TrainConfig", "load_checkpoint", "save_checkpoint", "train", "train_group"]
