"""Losses behind one registry. Adding a loss: one module with ``@register("name")`` and its name below."""

from . import beta_gamma, cc, ce, dal, focal  # noqa: F401  (each module registers its loss)
from .base import ClassificationLoss
from .registry import build_loss, get, names

__all__ = ["ClassificationLoss", "build_loss", "get", "names"]
