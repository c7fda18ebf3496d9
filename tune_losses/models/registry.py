"""The model registry: ``@register(name)`` on a builder, ``build_model(name, num_classes=..., **params)``."""

from __future__ import annotations

from tune_losses.registry import Registry

MODELS = Registry("model")
register, names = MODELS.register, MODELS.names


def check_params(name: str, params: dict) -> None:
    """Raise a ValueError when ``params`` holds a keyword the model's builder does not take (without building
    it: a backbone costs seconds)."""
    import inspect

    sig = inspect.signature(MODELS.get(name))
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [p for p in sig.parameters if p != "num_classes"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"model {name!r} takes no parameter {unknown}; allowed: {allowed}")


def build_model(name: str, num_classes: int, **params):
    builder = MODELS.get(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is not allowed: num_classes must be an integer >= 2")
    try:
        return builder(num_classes=num_classes, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters {sorted(params)} for model {name!r}: {exc}") from None
