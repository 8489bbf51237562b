"""A document node at a known path: how the admin API and the registry hand a record to the config models.

``Node(doc, path, problems)`` wraps one JSON or YAML mapping. The record
parsers (:func:`~tollgate.config.identity.parse_tenant`,
:func:`~tollgate.config.identity.parse_key`,
:func:`~tollgate.config.rules.parse_rules`) :meth:`take` the keys they
validate with the models; the caller reads the rest (an id, a list of keys)
and :meth:`finish` reports every key nobody took as unknown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tollgate.config.validation import Problems, join
from tollgate.config.values import kind

__all__ = ["MISSING", "Node", "Problems"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Node:
    """A mapping at a known path; every key read is remembered, so that :meth:`finish` can name the others."""

    __slots__ = ("_seen", "data", "path", "problems")

    def __init__(self, data: Any, path: str, problems: Problems) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.add(path, f"must be a mapping, not {kind(data)}")
            data = {}
        self.data: dict[str, Any] = data
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()

    def at(self, key: str) -> str:
        return join(self.path, key)

    def error(self, key: str, reason: str) -> None:
        self.problems.add(self.at(key) if key else self.path, reason)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        return self.data.get(key, default)

    def take(self, keys: Iterable[str]) -> dict[str, Any]:
        """The given ``keys`` that are present, marked as read (a model validates them)."""
        out = {k: self.data[k] for k in keys if k in self.data}
        self._seen.update(out)
        return out

    def str(
        self, key: str, default: str | None = MISSING, *, pattern: re.Pattern[str] | None = None, nonempty: bool = True
    ) -> str | None:
        """A string field: ``default`` when absent (a problem when there is none), None after a problem."""
        self._seen.add(key)
        value = self.data.get(key)
        if value is None:
            if default is MISSING:
                self.error(key, "is required")
                return None
            return default
        if not isinstance(value, str):
            self.error(key, f"must be a string, not {kind(value)}")
        elif nonempty and not value:
            self.error(key, "must not be empty")
        elif pattern is not None and not pattern.fullmatch(value):
            self.error(key, f"{value!r} does not match {pattern.pattern}")
        else:
            return value
        return None if default is MISSING else default

    def finish(self) -> None:
        for key in self.data:
            if key not in self._seen:
                self.problems.add(self.at(str(key)), "unknown key")
