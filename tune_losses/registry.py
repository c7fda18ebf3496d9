"""A name -> builder registry, one per kind (loss, model, dataset): ``@REG.register(name)``, ``REG.get(name)``.

A name is registered once: registering another object under a taken name (a plugin's ``"dal"``, say) raises a
ValueError instead of silently replacing the built-in; ``register(name, replace=True)`` replaces it on purpose.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Registry:
    """The builders of one kind of part (``kind``: "loss", "model", "dataset"), by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """A decorator that registers a class or function under ``name``; a taken name raises a ValueError
        naming both, unless ``replace`` (then the new one is used everywhere, spaces and trials included)."""

        def wrap(obj: T) -> T:
            taken = self._items.get(name)
            if taken is not None and taken is not obj and not replace:
                raise ValueError(
                    f"{self.kind}={name!r} is already registered ({describe(taken)}); registering "
                    f"{describe(obj)} under that name needs register({name!r}, replace=True)"
                )
            self._items[name] = obj
            return obj

        return wrap

    def unregister(self, name: str) -> None:
        """Forget ``name`` (a test's or a session's own entry); a name not registered is no error."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._items)

    def get(self, name: str) -> Any:
        """The builder registered as ``name``; a ValueError listing the names allowed when there is none."""
        if name not in self._items:
            raise ValueError(f"{self.kind}={name!r} is not allowed: {self.kind} must be one of {self.names()}")
        return self._items[name]


def describe(obj: object) -> str:
    """``module.qualname`` of a class or function (a partial: of the function it wraps)."""
    obj = getattr(obj, "func", obj)
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
