"""The one registry of losses: ``@register(name)`` on the class, ``build_loss(name, ...)`` to make one."""

from __future__ import annotations

_LOSSES: dict[str, type] = {}


def register(name: str):
    def wrap(cls):
        _LOSSES[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def names() -> list[str]:
    return sorted(_LOSSES)


def get(name: str) -> type:
    if name not in _LOSSES:
        raise ValueError(f"loss={name!r} is not allowed: loss must be one of {names()}")
    return _LOSSES[name]


def build_loss(name: str, num_classes: int, **params):
    cls = get(name)
    try:
        return cls(num_classes=num_classes, **params)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"bad parameters {sorted(params)} for loss {name!r}: {exc}") from None
