"""The config-center API's objects as registry records, their integer ids, and their mapping to native namespaces and rules.

One model, two shapes. A namespace, matcher or rule created through
``/api/v1`` is written, in one registry write, as

* its config-center record ``cc:<kind>:<id>`` (``kind`` ``ns``, ``m`` or ``r``): the fields only that API
  has (names, description, status, the ``rule_config`` as sent), and
* the native ``ns:<code>`` / ``rule:<name>`` records derived from it, which the native admin API lists and
  the gateway enforces like any other.

Existence follows the native records: a config-center object whose native
namespace or rules are gone (deleted through ``/admin/...``) is gone here too,
and a rule's or namespace's status, priority and limits read as their native
forms enforce them. Matchers are the one part the native API cannot change
back into this shape: a native edit of a config-center namespace's matchers
holds until the next ``/api/v1`` write to that namespace derives them again.
Namespaces and rules that only the config file or the native API declare are
listed too, read-only, with an id claimed for them on first sight.

**Ids** are integers, one sequence per kind, allocated as one more than the
highest id of that kind ever written, and written with ``create_only``: two
processes that pick the same id conflict in the store and the loser retries,
so an id is the same in every process. A deleted object leaves a tombstone
(``{"deleted": true}``) so its id is never handed out again. The records live
in the registry's store, beside the native records they describe (the
database when there is one and no ``registry:`` section names another store):
one write changes both, and every process follows them within the registry's
poll interval. An index record ``cc:<kind>@<key>`` maps a namespace code or a
native rule name to its id and makes a second claim of it conflict.

**Matching.** A config-center namespace becomes a native namespace with
``match: any``: a request is in it when ONE of its enabled matchers holds
(matchers are alternatives in that design). Its priority is the highest
priority of its enabled matchers, so namespaces are tried in the order of
their best matcher (higher first). ``status: 0`` on a namespace is native
``enabled: false`` (it matches nothing); a matcher with ``status: 0`` is left
out. ``matcher_type: header_and_body``: the design this API comes from does
not define it in any source we found, so here it means the value found in
EITHER the header named ``match_field`` or the body field of that path (two
native matchers, one of which must hold). ``in`` takes a list, or a string of
comma-separated values.

**Rules** attach to their namespace and count per namespace (native scope
``[namespace]``): the design has no tenants, and its namespace rules limit
the channel as a whole (100 requests a minute through ``wechat``), whoever
sends them; a per-tenant limit is a native rule. Each limit of a rule becomes
one native rule named ``cc.<id>`` or ``cc.<id>.<period>``:

* ``connection_limit`` -> ``connection_limit`` with ``limit = max_connections``;
* ``request_limit`` -> one ``request_limit`` per ``max_requests_per_minute`` / ``_per_hour``;
* ``token_limit`` -> one ``token_limit`` (``count: input``) per ``max_tokens_per_hour`` / ``_per_day``;
* ``field_check`` -> ``field_check`` on the body path after ``body.``; the check must hold, else 400 with
  ``message``.

``window_size`` is kept as sent but changes nothing: Tollgate's windows are
the named period, sliding, and a connection is held for its request's life.
``status: 0`` is native ``enabled: false``; ``priority`` is the rule's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tollgate.registry.rule_records import CONFIG_CENTER

__all__ = [
    "MATCHER",
    "NAMESPACE",
    "RULE",
    "CenterRecords",
    "index_name",
    "native_matchers",
    "native_namespace",
    "native_rules",
    "object_name",
    "owned_rule_names",
    "rule_config_of_native",
]

NAMESPACE = "ns"
MATCHER = "m"
RULE = "r"
_KINDS = (NAMESPACE, MATCHER, RULE)
_BODY = "body."
_WINDOWS = {
    "request_limit": (("max_requests_per_minute", "minute"), ("max_requests_per_hour", "hour")),
    "token_limit": (("max_tokens_per_hour", "hour"), ("max_tokens_per_day", "day")),
}


def object_name(kind: str, ident: int) -> str:
    """The record of one object: ``cc:ns:3``."""
    return f"{CONFIG_CENTER}:{kind}:{ident}"


def index_name(kind: str, key: str) -> str:
    """The record mapping a natural key (a namespace code, a native rule name) to its id: ``cc:ns@wechat``."""
    return f"{CONFIG_CENTER}:{kind}@{key}"


@dataclass(slots=True)
class CenterRecords:
    """The config-center records of one registry view, by kind: ``objects[kind][id]`` and ``index[kind][key]``."""

    objects: dict[str, dict[int, dict[str, Any]]] = field(default_factory=lambda: {k: {} for k in _KINDS})
    index: dict[str, dict[str, int]] = field(default_factory=lambda: {k: {} for k in _KINDS})

    @classmethod
    def of(cls, records: Mapping[str, Any]) -> CenterRecords:
        out = cls()
        prefix = CONFIG_CENTER + ":"
        for name, doc in records.items():
            if not name.startswith(prefix) or not isinstance(doc, dict):
                continue
            rest = name[len(prefix) :]
            if "@" in rest.partition(":")[0]:
                kind, _, key = rest.partition("@")
                if kind in out.index and isinstance(doc.get("id"), int):
                    out.index[kind][key] = doc["id"]
                continue
            kind, _, ident = rest.partition(":")
            if kind in out.objects and ident.isdigit():
                out.objects[kind][int(ident)] = doc
        return out

    def next_id(self, kind: str, taken: int = 0) -> int:
        """One more than the highest id of ``kind`` ever written (tombstones count) and than ``taken``."""
        return max([taken, *self.objects[kind]]) + 1

    def live(self, kind: str, ident: int) -> dict[str, Any] | None:
        doc = self.objects[kind].get(ident)
        return None if doc is None or doc.get("deleted") else doc

    def matchers_of(self, namespace_id: int) -> dict[int, dict[str, Any]]:
        return {
            i: doc
            for i, doc in sorted(self.objects[MATCHER].items())
            if not doc.get("deleted") and doc.get("namespace_id") == namespace_id
        }

    def rules_of(self, namespace_id: int) -> dict[int, dict[str, Any]]:
        return {
            i: doc
            for i, doc in sorted(self.objects[RULE].items())
            if not doc.get("deleted") and doc.get("namespace_id") == namespace_id and not doc.get("adopted")
        }


# -- config-center shapes -> native documents ------------------------------------


def _body_path(path: str) -> str:
    return path[len(_BODY) :] if path.startswith(_BODY) else path


def native_matchers(matcher: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The native matchers one config-center matcher stands for (two for ``header_and_body``: either holds)."""
    op = matcher["match_operator"]
    value = matcher["match_value"]
    if op == "in" and isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    field_name = matcher["match_field"]
    out: list[dict[str, Any]] = []
    if matcher["matcher_type"] in ("header", "header_and_body"):
        out.append({"type": "header", "field": field_name, "op": op, "value": value})
    if matcher["matcher_type"] in ("body", "header_and_body"):
        out.append({"type": "body", "field": _body_path(field_name), "op": op, "value": value})
    return out


def native_namespace(namespace: Mapping[str, Any], matchers: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """The native namespace of a config-center one and its matchers (enabled ones, higher priority first)."""
    enabled = sorted(
        ((i, m) for i, m in matchers.items() if m.get("status", 1) == 1), key=lambda im: (-im[1]["priority"], im[0])
    )
    doc: dict[str, Any] = {
        "priority": max((m["priority"] for _i, m in enabled), default=0),
        "match": "any",
        "matchers": [native for _i, m in enabled for native in native_matchers(m)],
    }
    if namespace.get("status", 1) != 1:
        doc["enabled"] = False
    return doc


def native_rules(ident: int, rule: Mapping[str, Any], code: str) -> dict[str, dict[str, Any]]:
    """The native rules (name -> document) a config-center rule of namespace ``code`` becomes."""
    config: Mapping[str, Any] = rule["rule_config"]
    kind = rule["rule_type"]
    base: dict[str, Any] = {
        "type": kind,
        "attach": {"namespaces": [code]},
        "priority": rule["priority"],
        "enabled": rule["status"] == 1,
    }
    if kind == "field_check":
        doc = {**base, "field": _body_path(config["field_path"]), "op": config["operator"], "value": config["value"]}
        if config.get("message") is not None:
            doc["message"] = config["message"]
        return {f"cc.{ident}": doc}
    if kind == "connection_limit":
        return {f"cc.{ident}": {**base, "limit": config["max_connections"], "scope": ["namespace"]}}
    out: dict[str, dict[str, Any]] = {}
    for key, per in _WINDOWS[kind]:
        if config.get(key) is not None:
            doc = {**base, "limit": config[key], "per": per, "scope": ["namespace"], "algorithm": "sliding_window"}
            if kind == "token_limit":
                doc["count"] = "input"
            out[f"cc.{ident}.{per}"] = doc
    return out


def owned_rule_names(records: CenterRecords) -> dict[str, int]:
    """Native rule name -> the id of the live config-center rule it was derived from."""
    owned: dict[str, int] = {}
    for ident, doc in records.objects[RULE].items():
        if not doc.get("deleted") and not doc.get("adopted"):
            for name in doc.get("native", ()):
                owned[name] = ident
    return owned


# -- native documents -> config-center shapes (objects declared elsewhere) --------


def rule_config_of_native(doc: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(rule_type, rule_config)`` of a native rule declared elsewhere: the config-center shape where there is one,
    else the native fields of its type as they are."""
    kind = doc["type"]
    per = doc.get("per")
    if kind == "connection_limit":
        return kind, {"max_connections": doc["limit"]}
    if kind == "request_limit" and per in ("minute", "hour"):
        return kind, {f"max_requests_per_{per}": doc["limit"]}
    if kind == "token_limit" and per in ("hour", "day") and doc.get("count") == "input":
        return kind, {f"max_tokens_per_{per}": doc["limit"]}
    if kind == "field_check":
        config = {"field_path": _BODY + doc["field"], "operator": doc["op"], "value": doc.get("value")}
        config["message"] = doc.get("message")
        return kind, config
    ignored = ("type", "attach", "priority", "enabled", "shadow")
    return kind, {k: v for k, v in doc.items() if k not in ignored}
