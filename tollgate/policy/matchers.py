"""Match stage: namespaces' matchers compiled once per config version into plain predicates."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from tollgate.config.rules import DEFAULT_NAMESPACE, MatcherSpec, NamespaceSpec

__all__ = ["MISSING", "NamespaceTable", "Predicate", "compile_matcher", "compile_path", "lookup"]

Headers = Mapping[str, str]
Predicate = Callable[[Headers, "dict[str, Any] | None"], bool]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def compile_path(path: str) -> tuple[str | int, ...]:
    """``messages.0.role`` -> ``("messages", 0, "role")``: digits index lists, the rest are keys."""
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def lookup(doc: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        if isinstance(part, int) and isinstance(doc, list):
            if part >= len(doc):
                return MISSING
            doc = doc[part]
        elif isinstance(doc, dict):
            doc = doc.get(part if isinstance(part, str) else str(part), MISSING)
            if doc is MISSING:
                return MISSING
        else:
            return MISSING
    return doc


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _value_test(op: str, expected: Any) -> Callable[[Any], bool]:
    """A test on one found value (never MISSING: absence is decided by the caller)."""
    if op == "exists":
        return lambda v: True
    if op == "equals":
        return lambda v: v == expected or _as_text(v) == _as_text(expected)
    if op == "not_equals":
        return lambda v: not (v == expected or _as_text(v) == _as_text(expected))
    if op == "contains":
        needle = _as_text(expected) or ""

        def contains(v: Any) -> bool:
            if isinstance(v, list):
                return expected in v
            text = _as_text(v)
            return text is not None and needle in text

        return contains
    if op == "regex":
        pattern = re.compile(expected)

        def regex(v: Any) -> bool:
            text = _as_text(v)
            return text is not None and pattern.search(text) is not None

        return regex
    if op == "in":
        options = list(expected)
        texts = {_as_text(o) for o in options}
        return lambda v: v in options or _as_text(v) in texts
    raise ValueError(f"unknown matcher op {op!r}")


def compile_matcher(spec: MatcherSpec) -> Predicate:
    test = _value_test(spec.op, spec.value)
    want_present = spec.value is not False if spec.op == "exists" else True
    # not_equals holds for an absent field (it is not equal to the value).
    absent_result = (not want_present) if spec.op == "exists" else spec.op == "not_equals"

    def on_value(v: Any) -> bool:
        if v is MISSING or v is None:
            return absent_result
        return test(v) if want_present else False

    if spec.type == "header":
        name = spec.field

        def header_pred(headers: Headers, body: dict[str, Any] | None) -> bool:
            return on_value(headers.get(name, MISSING))

        return header_pred
    path = compile_path(spec.field)
    if spec.type == "body":

        def body_pred(headers: Headers, body: dict[str, Any] | None) -> bool:
            return on_value(MISSING if body is None else lookup(body, path))

        return body_pred
    header_name = spec.header or ""

    def both_pred(headers: Headers, body: dict[str, Any] | None) -> bool:
        return on_value(headers.get(header_name, MISSING)) and on_value(MISSING if body is None else lookup(body, path))

    return both_pred


class NamespaceTable:
    """Enabled namespaces in priority order; the first whose matchers hold (all of them, or one for ``match: any``)
    wins, else ``default``."""

    __slots__ = ("_entries",)

    def __init__(self, namespaces: tuple[NamespaceSpec, ...]) -> None:
        self._entries = tuple(
            (ns.name, ns.match == "any", tuple(compile_matcher(m) for m in ns.matchers))
            for ns in namespaces
            if ns.enabled
        )

    def match(self, headers: Headers, body: dict[str, Any] | None) -> str:
        for name, any_of, predicates in self._entries:
            if any_of:
                for predicate in predicates:
                    if predicate(headers, body):
                        return name
                continue
            for predicate in predicates:
                if not predicate(headers, body):
                    break
            else:
                return name
        return DEFAULT_NAMESPACE
