"""The model registry: ``@register(name)`` on a builder, ``build_model(name, num_classes=..., **params)``."""

from __future__ import annotations

from tune_losses.registry import Registry

MODELS = Registry("model")
register, names = MODELS.register, MODELS.names


def build_model(name: str, num_classes: int, **params):
    builder = MODELS.get(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is not allowed: num_classes must be an integer >= 2")
    try:
        return builder(num_classes=num_classes, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters {sorted(params)} for model {name!r}: {exc}") from None
