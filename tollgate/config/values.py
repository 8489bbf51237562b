"""The scalar types of the config file: strict numbers and strings, names, durations, sizes, times, lists, maps.

Each is an ``Annotated`` type that pydantic validates natively where it can
(strict ints, patterns, bounds) and through a small function where the file
allows more than JSON does (``"250ms"``, ``"64KiB"``, an ISO 8601 time); each
carries the JSON Schema an editor checks the YAML against.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, TypeVar

from pydantic import (
    AfterValidator,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "Bool",
    "Duration",
    "DurationOrZero",
    "FrozenMap",
    "Int",
    "Metadata",
    "NonEmptyStr",
    "OptionalDuration",
    "Share",
    "Size",
    "Str",
    "StrList",
    "Timestamp",
    "frozen_map",
    "kind",
    "matching",
    "parse_duration",
    "parse_size",
    "parse_timestamp",
]

V = TypeVar("V")

Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
NonEmptyStr = Annotated[str, Strict(), StringConstraints(min_length=1)]
Share = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]


def matching(regex: str) -> StringConstraints:
    """A string matching ``regex`` in full: ``Annotated[str, Strict(), matching(NAME)]``.

    The anchors are added here (pydantic searches); problems quote the pattern without them.
    """
    return StringConstraints(pattern=f"^(?:{regex})$")


def kind(value: object) -> str:
    """How a problem names the type of a wrong value: ``a mapping``, ``a list``, ``null``..."""
    if value is None:
        return "null"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }.get(type(value), type(value).__name__)


def frozen_map(d: Mapping[str, V] | None = None) -> Mapping[str, V]:
    return MappingProxyType(dict(d or {}))


def _freeze(d: Mapping[str, V]) -> Mapping[str, V]:
    return MappingProxyType(dict(d))


# A mapping validated as a dict, kept read-only.
FrozenMap = Annotated[Mapping[str, V], AfterValidator(_freeze)]

# -- durations and sizes ----------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def parse_duration(value: object) -> float:
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


def parse_size(value: object) -> int:
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


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("config", message)


def _positive_duration(value: object) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise _problem("must be a positive duration such as 500ms, 5s, 2m") from None
    if seconds <= 0:
        raise _problem("must be a positive duration")
    return seconds


def _duration(value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise _problem("must be a duration such as 500ms, 5s, 2m") from None


def _optional_positive_duration(value: object) -> float | None:
    return None if value is None else _positive_duration(value)


def _positive_size(value: object) -> int:
    try:
        n = parse_size(value)
    except ValueError:
        raise _problem("must be a size such as 64KiB or 1MiB") from None
    if n <= 0:
        raise _problem("must be a positive size")
    return n


_DURATION_TEXT = {"type": "string", "pattern": _DURATION.pattern, "description": "250ms, 5s, 2m, 1h, 1d"}
_DURATION_SCHEMA = {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, _DURATION_TEXT]}
_DURATION_OR_ZERO_SCHEMA = {"anyOf": [{"type": "number", "minimum": 0}, _DURATION_TEXT]}
_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "exclusiveMinimum": 0},
        {"type": "string", "pattern": "(?i)" + _SIZE.pattern, "description": "512, 64KiB, 1MiB, 1GB"},
    ]
}

# Seconds, written as a duration; more than zero.
Duration = Annotated[float, PlainValidator(_positive_duration), WithJsonSchema(_DURATION_SCHEMA)]
# Seconds, written as a duration; zero allowed (turns a feature off, or means "at once").
DurationOrZero = Annotated[float, PlainValidator(_duration), WithJsonSchema(_DURATION_OR_ZERO_SCHEMA)]
OptionalDuration = Annotated[
    float | None, PlainValidator(_optional_positive_duration), WithJsonSchema(_DURATION_SCHEMA | {"default": None})
]
# Bytes, written as a size; more than zero.
Size = Annotated[int, PlainValidator(_positive_size), WithJsonSchema(_SIZE_SCHEMA)]

# -- times, lists, free-form maps --------------------------------------------------


def parse_timestamp(value: object) -> float:
    """An ISO 8601 date/time (YAML may hand us a datetime already) or epoch seconds -> epoch seconds."""
    if isinstance(value, bool):
        raise ValueError("must be an ISO 8601 time or epoch seconds")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC).timestamp()
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"must be an ISO 8601 time such as 2026-01-31T00:00:00Z (got {value!r})") from None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
    raise ValueError("must be an ISO 8601 time or epoch seconds")


def _timestamp(value: object) -> float:
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise _problem(str(exc)) from None


# Epoch seconds, written as an ISO 8601 time or a number.
Timestamp = Annotated[
    float,
    PlainValidator(_timestamp),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "format": "date-time"}]}),
]


def _str_list(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(x, str) for x in value):
        raise _problem("must be a list of strings")
    return tuple(value)


# A list of strings; a single string stands for a list of one.
StrList = Annotated[
    tuple[str, ...],
    PlainValidator(_str_list),
    PlainSerializer(list),
    WithJsonSchema({"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}]}),
]


def _metadata(value: object) -> Mapping[str, str | int | float | bool | None]:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise _problem("must be a mapping with string keys")
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool)) and v is not None:
            raise PydanticCustomError("config_at", "must be a string, number, boolean or null", {"key": k})
    return MappingProxyType(dict(value))


# Free-form labels: string keys, scalar values.
Metadata = Annotated[
    Mapping[str, str | int | float | bool | None],
    PlainValidator(_metadata),
    WithJsonSchema(
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}, "default": {}}
    ),
]
