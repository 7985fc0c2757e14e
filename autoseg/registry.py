"""A closed set of named parts: networks, losses, recipes, optimizers, schedules, normalisations.

Every part that ``plans.json`` or a CLI flag chooses by name lives in a :class:`Registry`. A lookup of
an unknown name raises :func:`~autoseg.errors.unknown_name` (a ``ConfigurationError`` with "did you
mean" and the known names) instead of falling back to a default, and ``name in registry`` or
:meth:`Registry.check` let a caller validate every name before anything is written.

>>> from autoseg.registry import Registry
>>> colours = Registry("colour", {"red": 1, "green": 2})
>>> colours["red"], "blue" in colours, colours.names()
(1, False, ('red', 'green'))
>>> colours["gren"]
Traceback (most recent call last):
...
autoseg.errors.ConfigurationError: unknown colour 'gren'. Did you mean 'green'? Known: green, red.
Fix: use one of the known colour names
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from autoseg.errors import unknown_name

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping from name to entry whose misses name the known entries.

    ``kind`` is what one entry is called in messages ("loss", "recipe", ...). The entries are copied,
    in order, at construction; a registry is never changed afterwards.
    """

    def __init__(self, kind: str, entries: Mapping[str, T]):
        self.kind = kind
        self._entries: dict[str, T] = dict(entries)

    def __getitem__(self, name: str) -> T:
        if name not in self:
            raise unknown_name(self.kind, str(name), self.names())
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    def get(self, name: str, default: Any = None) -> Any:  # Mapping.get only catches KeyError
        return self._entries[name] if name in self else default

    def names(self) -> tuple[str, ...]:
        """The known names, in registration order."""
        return tuple(self._entries)

    def check(self, name: str) -> str:
        """``name`` when it is known, else the error a lookup would raise; for validating up front."""
        self[name]
        return name
