"""The model registry: ``@register(name)`` on a builder, ``build_model(name, num_classes=..., **params)``."""

from __future__ import annotations

_MODELS: dict[str, object] = {}


def register(name: str):
    def wrap(builder):
        _MODELS[name] = builder
        return builder

    return wrap


def names() -> list[str]:
    return sorted(_MODELS)


def build_model(name: str, num_classes: int, **params):
    if name not in _MODELS:
        raise ValueError(f"model={name!r} is not allowed: model must be one of {names()}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is not allowed: num_classes must be an integer >= 2")
    try:
        return _MODELS[name](num_classes=num_classes, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters {sorted(params)} for model {name!r}: {exc}") from None
