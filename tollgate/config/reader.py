"""Typed, path-aware reading of a parsed YAML document that collects every problem."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

__all__ = ["MISSING", "Node", "Problems", "parse_duration", "parse_size", "substitute_env"]

T = TypeVar("T")


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Problems:
    """Accumulates ``path: reason`` lines so one run reports every error at once."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, path: str, reason: str) -> None:
        self.lines.append(f"{path or '<root>'}: {reason}")

    def __bool__(self) -> bool:
        return bool(self.lines)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: Any) -> float:
    """``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"``, ``"1d"`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 500ms, 5s, 2m")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError("must be a duration such as 500ms, 5s, 2m")


def parse_size(value: Any) -> int:
    """``"64KiB"``, ``"1MiB"``, ``"1000"`` or an integer -> bytes."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 64KiB or 1MiB")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(m.group(1)) * _SIZE_UNITS[unit]
    raise ValueError("must be a size such as 64KiB or 1MiB")


def substitute_env(doc: Any, env: dict[str, str], problems: Problems, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string of ``doc``.

    Done after YAML parsing, on values only, so a secret can never change the
    document's structure. An unset variable without a default is a problem
    naming the field that asked for it.
    """
    if isinstance(doc, dict):
        return {k: substitute_env(v, env, problems, _join(path, str(k))) for k, v in doc.items()}
    if isinstance(doc, list):
        return [substitute_env(v, env, problems, f"{path}[{i}]") for i, v in enumerate(doc)]
    if isinstance(doc, str) and "${" in doc:

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.add(path, f"environment variable {name} is not set")
            return ""

        return _ENV.sub(repl, doc)
    return doc


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class Node:
    """A mapping at a known path; getters validate, record problems, and return a fallback.

    Every key read is remembered; :meth:`finish` reports the keys nobody read,
    so a typo in a config file is an error, never silently ignored.
    """

    __slots__ = ("data", "path", "problems", "_seen")

    def __init__(self, data: Any, path: str, problems: Problems) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            problems.add(path, f"must be a mapping, not {_kind(data)}")
            data = {}
        self.data: dict[str, Any] = data
        self.path = path
        self.problems = problems
        self._seen: set[str] = set()

    # -- plumbing -------------------------------------------------------
    def at(self, key: str) -> str:
        return _join(self.path, key)

    def error(self, key: str, reason: str) -> None:
        self.problems.add(self.at(key) if key else self.path, reason)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        return self.data.get(key, default)

    def finish(self) -> None:
        for key in self.data:
            if key not in self._seen:
                self.problems.add(self.at(str(key)), "unknown key")

    def _get(self, key: str, default: Any, convert: Callable[[Any], T]) -> T | Any:
        self._seen.add(key)
        if key not in self.data or self.data[key] is None:
            if default is MISSING:
                self.error(key, "is required")
                return None
            return default
        try:
            return convert(self.data[key])
        except (ValueError, TypeError) as exc:
            self.error(key, str(exc))
            return default if default is not MISSING else None

    # -- scalars --------------------------------------------------------
    def str(
        self,
        key: str,
        default: Any = MISSING,
        *,
        pattern: re.Pattern[str] | None = None,
        choices: tuple[str, ...] | None = None,
        nonempty: bool = True,
    ) -> Any:
        def conv(v: Any) -> str:
            if not isinstance(v, str):
                raise ValueError(f"must be a string, not {_kind(v)}")
            if nonempty and not v:
                raise ValueError("must not be empty")
            if choices is not None and v not in choices:
                raise ValueError(f"must be one of {', '.join(choices)} (got {v!r})")
            if pattern is not None and not pattern.fullmatch(v):
                raise ValueError(f"{v!r} does not match {pattern.pattern}")
            return v

        return self._get(key, default, conv)

    def int(self, key: str, default: Any = MISSING, *, min: int | None = None, max: int | None = None) -> Any:
        def conv(v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"must be an integer, not {_kind(v)}")
            _bounds(v, min, max)
            return v

        return self._get(key, default, conv)

    def float(self, key: str, default: Any = MISSING, *, min: float | None = None, max: float | None = None) -> Any:
        def conv(v: Any) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"must be a number, not {_kind(v)}")
            _bounds(v, min, max)
            return float(v)

        return self._get(key, default, conv)

    def bool(self, key: str, default: Any = MISSING) -> Any:
        def conv(v: Any) -> bool:
            if not isinstance(v, bool):
                raise ValueError(f"must be true or false, not {_kind(v)}")
            return v

        return self._get(key, default, conv)

    def duration(self, key: str, default: Any = MISSING, *, positive: bool = True) -> Any:
        def conv(v: Any) -> float:
            try:
                seconds = parse_duration(v)
            except ValueError:
                raise ValueError(f"must be a {'positive ' if positive else ''}duration such as 500ms, 5s, 2m") from None
            if positive and seconds <= 0:
                raise ValueError("must be a positive duration")
            return seconds

        return self._get(key, default, conv)

    def size(self, key: str, default: Any = MISSING) -> Any:
        def conv(v: Any) -> int:
            n = parse_size(v)
            if n <= 0:
                raise ValueError("must be a positive size")
            return n

        return self._get(key, default, conv)

    def str_map(self, key: str) -> dict[str, str]:
        """A mapping of strings to strings (e.g. extra headers)."""
        value = self.raw(key, None)
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(key, f"must be a mapping, not {_kind(value)}")
            return {}
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, (str, int, float)) or isinstance(v, bool):
                self.problems.add(_join(self.at(key), str(k)), "must be a string")
                continue
            out[k] = str(v)
        return out

    def str_list(self, key: str, default: Any = MISSING) -> Any:
        def conv(v: Any) -> tuple[str, ...]:
            if isinstance(v, str):
                return (v,)
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ValueError("must be a list of strings")
            return tuple(v)

        return self._get(key, default, conv)

    # -- structure ------------------------------------------------------
    def child(self, key: str, *, required: bool = False) -> Node:
        self._seen.add(key)
        if key not in self.data and required:
            self.error(key, "is required")
        return Node(self.data.get(key), self.at(key), self.problems)

    def named(self, key: str, *, name_pattern: re.Pattern[str] | None = None) -> Iterator[tuple[str, Node]]:
        """Iterate a mapping of named sections (``upstreams: {openai: {...}}``)."""
        self._seen.add(key)
        value = self.data.get(key)
        if value is None:
            return
        if not isinstance(value, dict):
            self.error(key, f"must be a mapping of names to sections, not {_kind(value)}")
            return
        for name, section in value.items():
            path = _join(self.at(key), str(name))
            if not isinstance(name, str) or (name_pattern is not None and not name_pattern.fullmatch(name)):
                pat = f" (must match {name_pattern.pattern})" if name_pattern is not None else ""
                self.problems.add(path, f"invalid name{pat}")
                continue
            yield name, Node(section, path, self.problems)

    def items(self, key: str) -> Iterator[tuple[int, Any, str]]:
        """Iterate a list: ``(index, raw item, path)``."""
        self._seen.add(key)
        value = self.data.get(key)
        if value is None:
            return
        if not isinstance(value, list):
            self.error(key, f"must be a list, not {_kind(value)}")
            return
        for i, item in enumerate(value):
            yield i, item, f"{self.at(key)}[{i}]"


def _bounds(v: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and v < lo:
        raise ValueError(f"must be >= {lo} (got {v})")
    if hi is not None and v > hi:
        raise ValueError(f"must be <= {hi} (got {v})")


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(v), type(v).__name__)


def environ() -> dict[str, str]:
    return dict(os.environ)
