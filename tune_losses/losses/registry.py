"""The one registry of losses: ``@register(name)`` on the class, ``build_loss(name, ...)`` to make one."""

from __future__ import annotations

from tune_losses.registry import Registry

LOSSES = Registry("loss")
names, get = LOSSES.names, LOSSES.get


def register(name: str):
    def wrap(cls):
        cls.registry_name = name
        return LOSSES.register(name)(cls)

    return wrap


def build_loss(name: str, num_classes: int, **params):
    cls = get(name)
    try:
        return cls(num_classes=num_classes, **params)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"bad parameters {sorted(params)} for loss {name!r}: {exc}") from None
