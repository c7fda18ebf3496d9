"""Data sets behind one registry; each returns in-memory train / val / test splits with a fixed seed."""

from . import bundled, features, image_folder, torchvision_sets  # noqa: F401  (modules register data sets)
from .registry import build_dataset, names
from .splits import Split, Splits

__all__ = ["Split", "Splits", "build_dataset", "names"]
