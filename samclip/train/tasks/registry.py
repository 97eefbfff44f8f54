"""Name -> class registries for the parts a distillation task is assembled from (after timm's ``_registry``).

A config names a part (``kind: embedding``); the registry maps the name to its class, so adding a teacher
kind, a student head or a stream kind is one ``register`` call, and nothing dispatches on ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes by name; ``register`` as a decorator, ``get`` with an error listing what exists."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, *, override: bool = False) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries and not override and self._entries[name] is not entry:
                raise ValueError(f"{self.what} {name!r} is already registered ({self._entries[name]!r})")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; registered: {sorted(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
