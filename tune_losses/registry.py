"""A name -> builder registry, one per kind (loss, model, dataset): ``@REG.register(name)``, ``REG.get(name)``."""

from __future__ import annotations


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, object] = {}

    def register(self, name: str):
        def wrap(obj):
            self._items[name] = obj
            return obj

        return wrap

    def names(self) -> list[str]:
        return sorted(self._items)

    def get(self, name: str):
        if name not in self._items:
            raise ValueError(f"{self.kind}={name!r} is not allowed: {self.kind} must be one of {self.names()}")
        return self._items[name]
