"""Helm's view of values (numbers are float64, printed as Go prints them) and the functions of Go templates, Sprig
and Helm that deploy/helm/tollgate calls, for :mod:`tests.support.gotemplate`."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import yaml

__all__ = ["FUNCTIONS", "TemplateError", "go_yaml", "helm_values", "show", "truthy"]


class TemplateError(Exception):
    """A template that Helm would refuse too: a syntax error, a failed ``required``/``fail``, a bad call."""


# ---------------------------------------------------------------------------------------------------------------
# Values and their printing


def helm_values(value: Any) -> Any:
    """``value`` with every int turned into a float, as Helm reads numbers in values files (float64)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {str(k): helm_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [helm_values(v) for v in value]
    return value


def _go_float(v: float) -> str:
    """Go's ``%v`` of a float64: the shortest digits, in exponent form below 1e-4 and from 1e6 on."""
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    if v == 0:
        return "0"
    d = Decimal(repr(v)).normalize()
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)
    text = "".join(map(str, digits))
    exp = len(digits) + exponent - 1
    minus = "-" if sign else ""
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return minus + format(abs(d), "f")


def show(value: Any) -> str:
    """How an action prints a value (Go's ``fmt.Fprint``; Helm prints nothing for a missing value)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, list):
        return "[" + " ".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{show(value[k])}" for k in sorted(value)) + "]"
    raise TemplateError(f"cannot print {type(value).__name__}")


def truthy(value: Any) -> bool:
    """Go template truth: false, 0, nil and empty strings, lists and maps are false."""
    if value is None:
        return False
    if isinstance(value, bool | int | float | str | list | dict):
        return bool(value)
    return True


def _plain(value: Any) -> Any:
    """Floats that hold whole numbers as ints: how Helm's toYaml writes them (through JSON)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class _GoDumper(yaml.SafeDumper):
    """Quotes as Go's YAML encoder does: double quotes for a string that would read back as another type."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        tag = self.resolve(yaml.ScalarNode, data, (True, False))
        style = '"' if tag != "tag:yaml.org,2002:str" else None
        return self.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_GoDumper.add_representer(str, _GoDumper.represent_str)


def go_yaml(value: Any) -> str:
    """Helm's ``toYaml``: keys sorted, block style, no trailing newline."""
    text = yaml.dump(
        _plain(value), Dumper=_GoDumper, sort_keys=True, default_flow_style=False, allow_unicode=True, width=1 << 30
    )
    if text.endswith("\n...\n"):
        text = text[: -len("...\n")]
    return text.rstrip("\n")


# ---------------------------------------------------------------------------------------------------------------
# Functions (Go's builtins and the Sprig / Helm ones the chart calls)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    return "other"


def _comparable(a: Any, b: Any, ordered: bool) -> None:
    ka, kb = _kind(a), _kind(b)
    if ka != kb or ka == "other" or (ordered and ka == "bool"):
        raise TemplateError(f"incompatible types for comparison: {show(a)!r} ({ka}) and {show(b)!r} ({kb})")


def _eq(a: Any, *others: Any) -> bool:
    if not others:
        raise TemplateError("eq needs at least two arguments")
    for b in others:
        _comparable(a, b, ordered=False)
        if a == b:
            return True
    return False


def _ordered(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a: Any, b: Any) -> bool:
        _comparable(a, b, ordered=True)
        return op(a, b)

    return compare


def _to_int(v: Any) -> int:
    """Sprig's ``int`` (cast.ToInt): floats truncated, numeric strings parsed, anything else 0."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float):
        return int(v)
    if isinstance(v, str):
        try:
            return int(v.strip(), 0)
        except ValueError:
            return 0
    return 0


def _empty(v: Any) -> bool:
    return not truthy(v)


def _default(fallback: Any, *given: Any) -> Any:
    if not given or _empty(given[0]):
        return fallback
    return given[0]


def _strval(v: Any) -> str:
    return v if isinstance(v, str) else show(v)


def _quote(*args: Any) -> str:
    return " ".join(json.dumps(_strval(a), ensure_ascii=False) for a in args if a is not None)


def _indent(n: Any, text: Any) -> str:
    pad = " " * _to_int(n)
    return pad + _strval(text).replace("\n", "\n" + pad)


def _nindent(n: Any, text: Any) -> str:
    return "\n" + _indent(n, text)


def _required(message: Any, value: Any = None) -> Any:
    if value is None or value == "":
        raise TemplateError(_strval(message))
    return value


def _fail(message: Any) -> Any:
    raise TemplateError(_strval(message))


_VERB = re.compile(r"%([%sdvq])")


def _printf(fmt: Any, *args: Any) -> str:
    values = iter(args)

    def one(m: re.Match[str]) -> str:
        verb = m.group(1)
        if verb == "%":
            return "%"
        try:
            v = next(values)
        except StopIteration:
            return f"%!{verb}(MISSING)"
        if verb == "q":
            return _quote(v)
        if verb == "d":
            if _kind(v) != "int":
                return f"%!d({_kind(v)}={show(v)})"
            return str(v)
        return show(v)

    return _VERB.sub(one, _strval(fmt))


def _has_key(d: Any, key: Any) -> bool:
    if not isinstance(d, dict):
        raise TemplateError(f"hasKey needs a map, not {show(d)!r}")
    return key in d


def _trunc(n: Any, s: Any) -> str:
    text, count = _strval(s), _to_int(n)
    return text[:count] if count >= 0 else text[count:]


def _string(fn: str, v: Any) -> str:
    """An argument Sprig declares as a Go string: anything else fails the call, as in Go."""
    if not isinstance(v, str):
        raise TemplateError(f"wrong type for value in {fn}; expected string; got {_kind(v)}")
    return v


def _dict(*pairs: Any) -> dict[str, Any]:
    """Sprig's ``dict``: keys printed as strings, a key without a value gets ``""``."""
    return {_strval(pairs[i]): (pairs[i + 1] if i + 1 < len(pairs) else "") for i in range(0, len(pairs), 2)}


def _map(fn: str, d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise TemplateError(f"wrong type for value in {fn}; expected map; got {show(d)!r}")
    return d


def _set(d: Any, key: Any, value: Any) -> dict[str, Any]:
    """Sprig's ``set``: changes the map in place (every variable holding it sees the change) and returns it."""
    target = _map("set", d)
    target[_string("set", key)] = value
    return target


def _get(d: Any, key: Any) -> Any:
    """Sprig's ``get``: the value, or ``""`` for a missing key."""
    return _map("get", d).get(_string("get", key), "")


def _list_of(fn: str, v: Any) -> list[Any]:
    if not isinstance(v, list):
        raise TemplateError(f"Cannot {fn} on type {_kind(v)}")
    return v


def _append(items: Any, value: Any) -> list[Any]:
    """Sprig's ``append`` (``push``): a new list, the given one unchanged."""
    return [*_list_of("push", items), value]


def _uniq(items: Any) -> list[Any]:
    """Sprig's ``uniq``: the first of each equal element, in order (equal as Go's reflect.DeepEqual: the same type
    too, so 1 and 1.0 differ)."""
    out: list[Any] = []
    for item in _list_of("find uniq", items):
        if not any(type(item) is type(o) and item == o for o in out):
            out.append(item)
    return out


def _sort_alpha(items: Any) -> list[str]:
    """Sprig's ``sortAlpha``: the elements printed as strings (nil ones dropped) in byte order; a non-list is a
    list of itself."""
    if not isinstance(items, list):
        return [_strval(items)]
    return sorted(_strval(i) for i in items if i is not None)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    # Go's builtins (and/or/not are handled lazily by the evaluator; these are their eager fallbacks)
    "not": lambda v: not truthy(v),
    "eq": _eq,
    "ne": lambda a, b: not _eq(a, b),
    "lt": _ordered(lambda a, b: a < b),
    "le": _ordered(lambda a, b: a <= b),
    "gt": _ordered(lambda a, b: a > b),
    "ge": _ordered(lambda a, b: a >= b),
    "printf": _printf,
    # Sprig and Helm
    "default": _default,
    "empty": _empty,
    "quote": _quote,
    "toYaml": go_yaml,
    "indent": _indent,
    "nindent": _nindent,
    "sha256sum": lambda s: hashlib.sha256(_strval(s).encode()).hexdigest(),
    "required": _required,
    "fail": _fail,
    "int": _to_int,
    "add": lambda *xs: sum(_to_int(x) for x in xs),
    "hasKey": _has_key,
    "trunc": _trunc,
    "trimSuffix": lambda suffix, s: _strval(s).removesuffix(_strval(suffix)),
    "hasSuffix": lambda suffix, s: _string("hasSuffix", s).endswith(_string("hasSuffix", suffix)),
    "sub": lambda a, b: _to_int(a) - _to_int(b),
    "mul": lambda a, *bs: math.prod((_to_int(a), *(_to_int(b) for b in bs))),
    "dict": _dict,
    "set": _set,
    "get": _get,
    "list": lambda *items: list(items),
    "append": _append,
    "uniq": _uniq,
    "sortAlpha": _sort_alpha,
}
