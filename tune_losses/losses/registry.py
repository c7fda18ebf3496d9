"""The one registry of losses: ``@register(name)`` on the class, ``build_loss(name, ...)`` to make one.

A loss class may list parameter sets it must refuse in ``invalid_params`` (e.g. ``[{"a": 1.0}]``): the contract
tests (tests/test_contracts.py) check that each raises a ValueError naming the parameter."""

from __future__ import annotations

from tune_losses.registry import Registry

LOSSES = Registry("loss")
names, get = LOSSES.names, LOSSES.get


def register(name: str, *, replace: bool = False):
    """Class decorator: register a ClassificationLoss under ``name`` (a taken name needs ``replace=True``)."""

    def wrap(cls):
        LOSSES.register(name, replace=replace)(cls)
        cls.registry_name = name
        return cls

    return wrap


def build_loss(name: str, num_classes: int, **params):
    """The loss registered as ``name`` (a ``ClassificationLoss``) for ``num_classes`` classes, with its
    parameters (``a`` for DAL, ``beta`` and ``gamma``, ``lam`` or ``lambda`` for CC-Loss): a ValueError names a
    parameter it does not take or a value it refuses. ``loss(logits, target)`` is the batch mean; ``update``
    takes the epoch's confusion matrix (DAL)."""
    cls = get(name)
    try:
        return cls(num_classes=num_classes, **params)
    except TypeError as exc:  # an unknown keyword
        raise ValueError(f"bad parameters {sorted(params)} for loss {name!r}: {exc}") from None
