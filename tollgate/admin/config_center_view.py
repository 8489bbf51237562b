"""The config-center API's view of the registry and its one way of writing: ids, native records checked by the
config parser, ids claimed for objects declared elsewhere, namespaces repaired after concurrent writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tollgate.admin.body import read_body
from tollgate.admin.config_center_models import READ_ONLY, refused
from tollgate.admin.models import Body, Problem
from tollgate.errors import BadRequest, NotFound, StoreError
from tollgate.registry import rule_records as native
from tollgate.registry.config_center import (
    MATCHER,
    NAMESPACE,
    RULE,
    CenterRecords,
    index_name,
    native_namespace,
    object_name,
    owned_rule_names,
    rule_config_of_native,
)
from tollgate.registry.stores import RegistryConflict
from tollgate.runtime.state import GatewayState

__all__ = [
    "Build",
    "CenterView",
    "adopt",
    "as_enforced",
    "attached",
    "body_fields",
    "checked",
    "int_param",
    "invalid",
    "now_iso",
    "reconcile",
    "where",
    "write_changes",
]

log = logging.getLogger("tollgate.admin")

_ATTEMPTS = 5  # id allocations that lose a race to another process are retried this often


def now_iso(state: GatewayState) -> str:
    return datetime.fromtimestamp(state.clock.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def invalid(problems: list[Problem] | list[str]) -> BadRequest:
    lines = [str(p) for p in problems]
    first = problems[0]
    param = first.path if isinstance(first, Problem) else first.partition(":")[0]
    return BadRequest("invalid input: " + "; ".join(lines), param=param or None, code="invalid_input")


class CenterView:
    """One moment's view of the registry: the native entries (file and records) and the config-center records."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.book = native.RuleBook(state.config.rules, state.registry.rule_records)
        self.namespaces = self.book.entries(native.NAMESPACE)
        self.rules = self.book.entries(native.RULE)
        self.records = CenterRecords.of(state.registry.rule_records)
        self.owned = owned_rule_names(self.records)

    # -- what exists ---------------------------------------------------------
    def namespace(self, ident: int) -> tuple[str, native.Entry, dict[str, Any]]:
        """(code, native entry, config-center record) of a namespace that exists; 404 otherwise."""
        rec = self.records.live(NAMESPACE, ident)
        code = rec.get("code") if rec is not None else None
        entry = self.namespaces.get(code) if isinstance(code, str) else None
        if rec is None or entry is None or code is None or self.records.index[NAMESPACE].get(code) != ident:
            raise NotFound(f"no namespace {ident}", code="namespace_not_found")
        return code, entry, rec

    def own_namespace(self, ident: int) -> tuple[str, dict[str, Any]]:
        """A namespace created here (the only ones this API changes)."""
        code, entry, rec = self.namespace(ident)
        if rec.get("adopted"):
            raise BadRequest(
                f"namespace {ident} ({code!r}) is declared {where(entry.source)}: change it there "
                f"(PUT /admin/namespaces/{code}); this API changes the namespaces it created",
                code="declared_elsewhere",
            )
        return code, rec

    def rule(self, ident: int) -> tuple[dict[str, Any], list[str], int]:
        """(record, native rule names, namespace id) of a rule that exists; 404 otherwise."""
        rec = self.records.live(RULE, ident)
        if rec is not None and isinstance(rec.get("adopted"), str):
            name = rec["adopted"]
            entry = self.rules.get(name)
            spaces = [self.records.index[NAMESPACE].get(n) for n in attached(entry)] if entry else []
            found = [n for n in spaces if n is not None]
            if entry is not None and found and self.owned.get(name) is None:
                return rec, [name], found[0]
        elif rec is not None:
            names = [n for n in rec.get("native", ()) if n in self.rules]
            if names:
                return rec, names, int(rec["namespace_id"])
        raise NotFound(f"no rule {ident}", code="rule_not_found")

    def matcher(self, ident: int) -> tuple[dict[str, Any], int]:
        rec = self.records.live(MATCHER, ident)
        if rec is None:
            raise NotFound(f"no matcher {ident}", code="matcher_not_found")
        if isinstance(rec.get("adopted"), str):
            code, position = rec["adopted"], int(rec.get("position", -1))
            ns_id = self.records.index[NAMESPACE].get(code)
            entry = self.namespaces.get(code)
            if ns_id is None or entry is None or not 0 <= position < len(entry.doc.get("matchers", ())):
                raise NotFound(f"no matcher {ident}", code="matcher_not_found")
            return rec, ns_id
        ns_id = int(rec["namespace_id"])
        self.namespace(ns_id)
        return rec, ns_id

    # -- views -----------------------------------------------------------------
    def namespace_view(self, ident: int, code: str, entry: native.Entry, rec: Mapping[str, Any]) -> dict[str, Any]:
        if rec.get("adopted"):
            return {
                "id": ident,
                "namespace_code": code,
                "namespace_name": code,
                "description": "",
                "status": 0 if entry.doc.get("enabled") is False else 1,
                "created_at": None,
                "updated_at": None,
                "source": entry.source,
            }
        enforced = 0 if entry.doc.get("enabled") is False else 1  # as the native namespace is now
        view = {"id": ident, **fields_of(rec, ("namespace_name", "description")), "namespace_code": code}
        return {**view, "status": enforced}

    def matchers_view(self, ns_id: int) -> list[dict[str, Any]]:
        code, entry, rec = self.namespace(ns_id)
        if not rec.get("adopted"):
            return [
                {"id": i, "namespace_id": ns_id, **fields_of(m, _MATCHER_FIELDS)}
                for i, m in self.records.matchers_of(ns_id).items()
            ]
        out = []
        for position, m in enumerate(entry.doc.get("matchers", ())):
            ident = self.records.index[MATCHER].get(f"{code}#{position}")
            if ident is not None:
                out.append(self._adopted_matcher(ident, ns_id, m, entry.source))
        return out

    def matcher_view(self, ident: int) -> dict[str, Any]:
        rec, ns_id = self.matcher(ident)
        if isinstance(rec.get("adopted"), str):
            entry = self.namespaces[rec["adopted"]]
            return self._adopted_matcher(ident, ns_id, entry.doc["matchers"][int(rec["position"])], entry.source)
        return {"id": ident, "namespace_id": ns_id, **fields_of(rec, _MATCHER_FIELDS)}

    @staticmethod
    def _adopted_matcher(ident: int, ns_id: int, m: Mapping[str, Any], source: str) -> dict[str, Any]:
        return {
            "id": ident,
            "namespace_id": ns_id,
            "matcher_name": "",
            "matcher_type": m["type"],
            "match_field": m["field"],
            "match_operator": m["op"],
            "match_value": m.get("value"),
            "priority": 0,
            "status": 1,
            "created_at": None,
            "updated_at": None,
            "source": source,
        }

    def rule_view(self, ident: int) -> dict[str, Any]:
        rec, names, ns_id = self.rule(ident)
        if isinstance(rec.get("adopted"), str):
            entry = self.rules[names[0]]
            rule_type, config = rule_config_of_native(entry.doc)
            return {
                "id": ident,
                "namespace_id": ns_id,
                "rule_name": entry.name,
                "rule_type": rule_type,
                "rule_config": config,
                "priority": entry.doc.get("priority", 0),
                "status": 1 if entry.doc.get("enabled", True) else 0,
                "created_at": None,
                "updated_at": None,
                "source": entry.source,
                "native_rules": names,
            }
        view = {"id": ident, "namespace_id": ns_id, **fields_of(rec, _RULE_FIELDS), "native_rules": names}
        return {**view, **as_enforced(rec, {name: self.rules[name].doc for name in names})}

    def rules_view(self, ns_id: int) -> list[dict[str, Any]]:
        code, _entry, _rec = self.namespace(ns_id)
        ids = set(self.records.rules_of(ns_id))
        for name, entry in self.rules.items():
            if code in attached(entry) and name not in self.owned:
                adopted = self.records.index[RULE].get(name)
                if adopted is not None:
                    ids.add(adopted)
        out = []
        for ident in sorted(ids):
            try:
                out.append(self.rule_view(ident))
            except NotFound:  # its native rules were deleted through the native API
                continue
        return out


_MATCHER_FIELDS = (
    "matcher_name",
    "matcher_type",
    "match_field",
    "match_operator",
    "match_value",
    "priority",
    "status",
)
_RULE_FIELDS = ("rule_name", "rule_type", "rule_config", "priority", "status")


def fields_of(rec: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    out = {n: rec.get(n) for n in names}
    out.update(created_at=rec.get("created_at"), updated_at=rec.get("updated_at"), source="api")
    return out


_WINDOW_KEYS = {"request_limit": "max_requests_per_{}", "token_limit": "max_tokens_per_{}"}


def as_enforced(rec: Mapping[str, Any], docs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A rule's status, priority and rule_config as its native rules say now (changed, say, through
    ``PATCH /admin/rules/cc.7.minute``); the fields only this API has come from its record."""
    kind = rec["rule_type"]
    same = [doc for doc in docs.values() if doc.get("type") == kind]
    if not same:
        return {}
    config = dict(rec["rule_config"])
    window_key = _WINDOW_KEYS.get(kind)
    if window_key is not None:
        for per in ("minute", "hour", "day"):
            config.pop(window_key.format(per), None)
        config.update({window_key.format(doc["per"]): doc["limit"] for doc in same if "per" in doc})
    elif kind == "connection_limit":
        config["max_connections"] = same[0]["limit"]
    elif kind == "field_check":
        doc = same[0]
        prefix = "body." if str(rec["rule_config"].get("field_path", "")).startswith("body.") else ""
        config.update(field_path=prefix + doc["field"], operator=doc["op"], value=doc.get("value"))
        if "message" in config or not str(doc.get("message", "")).startswith("request refused by rule "):
            config["message"] = doc.get("message")
    return {
        "rule_config": config,
        "status": 1 if any(doc.get("enabled", True) for doc in same) else 0,
        "priority": max(int(doc.get("priority", 0)) for doc in same),
    }


def attached(entry: native.Entry) -> list[str]:
    attach = entry.doc.get("attach", {})
    return list(attach.get("namespaces", ())) if isinstance(attach, dict) else []


def where(source: str) -> str:
    return "in the config file" if source.startswith("config") else "through the native admin API"


# -- writing -------------------------------------------------------------------------


async def catch_up(state: GatewayState) -> None:
    """Take in what other processes wrote, so that ids and natives are computed from the newest state."""
    await state.registry.poll()


Build = Callable[[CenterView], tuple[dict[str, Any], list[str], Any]]
"""From a fresh view: (registry changes, names that must not exist yet, the result to answer with)."""


async def write_changes(state: GatewayState, build: Build) -> Any:
    """Build the changes from a fresh view and write them; an id another process took meanwhile: again."""
    for attempt in range(_ATTEMPTS):
        await catch_up(state)
        changes, create_only, result = build(CenterView(state))
        if not changes:
            return result
        try:
            await state.registry.write(changes, create_only=create_only)
        except RegistryConflict:
            if attempt == _ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
            continue
        return result
    raise AssertionError("unreachable")


async def reconcile(state: GatewayState, ns_id: int) -> None:
    """Make the native namespace what its config-center records say, after they were written.

    Two processes changing matchers of one namespace at once each derive the native namespace from what they saw:
    the later write may leave out the other's matcher. Each writer looks again after its own write (and after every
    write before it), so the last one finds and repairs what the other left out.
    """

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], None]:
        rec = view.records.live(NAMESPACE, ns_id)
        if rec is None or rec.get("adopted") or rec.get("code") not in view.namespaces:
            return {}, [], None
        name = f"{native.NAMESPACE}:{rec['code']}"
        wanted = checked(view, {name: native_namespace(rec, view.records.matchers_of(ns_id))})
        if view.state.registry.rule_records.get(name) == wanted[name]:
            return {}, [], None
        return wanted, [], None

    for _attempt in range(3):
        before = state.registry.rules_generation
        await write_changes(state, build)
        if state.registry.rules_generation == before:
            return


def checked(view: CenterView, changes: Mapping[str, Any]) -> dict[str, Any]:
    """``changes`` with every native record as the config parser normalises it; BadRequest with its problems."""
    book = view.book
    touched: list[tuple[str, str]] = []
    for name, doc in changes.items():
        kind, _, ident = name.partition(":")
        if kind in (native.NAMESPACE, native.RULE):
            book = book.changed(kind, ident, doc)
            if doc is not None:
                touched.append((kind, ident))
    rules, problems = book.parse()
    if problems:
        raise invalid(problems)
    out = dict(changes)
    for kind, ident in touched:
        if kind == native.NAMESPACE:
            out[f"{kind}:{ident}"] = native.namespace_doc(next(ns for ns in rules.namespaces if ns.name == ident))
        else:
            out[f"{kind}:{ident}"] = native.rule_doc(next(r for r in rules.rules if r.name == ident))
    return out


async def adopt(state: GatewayState) -> None:
    """Claim ids for the namespaces, their matchers and the namespace rules declared elsewhere that have none."""

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], None]:
        changes: dict[str, Any] = {}
        taken = dict.fromkeys((NAMESPACE, MATCHER, RULE), 0)

        def claim(kind: str, key: str, doc: dict[str, Any]) -> None:
            ident = view.records.next_id(kind, taken[kind])
            taken[kind] = ident
            changes[object_name(kind, ident)] = doc
            changes[index_name(kind, key)] = {"id": ident}

        for code, entry in view.namespaces.items():
            if code not in view.records.index[NAMESPACE]:
                claim(NAMESPACE, code, {"code": code, "adopted": True})
                adopted = True
            else:
                rec = view.records.live(NAMESPACE, view.records.index[NAMESPACE][code])
                adopted = rec is not None and bool(rec.get("adopted"))
            if adopted:
                for position in range(len(entry.doc.get("matchers", ()))):
                    key = f"{code}#{position}"
                    if key not in view.records.index[MATCHER]:
                        claim(MATCHER, key, {"adopted": code, "position": position})
        for name, entry in view.rules.items():
            if attached(entry) and name not in view.owned and name not in view.records.index[RULE]:
                claim(RULE, name, {"adopted": name})
        return changes, list(changes), None

    try:
        await write_changes(state, build)
    except StoreError as exc:  # listed without the ids not yet claimed; the reads go on from what is known
        log.warning("config center: cannot claim ids for objects declared elsewhere: %s", exc)


def int_param(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit():
        raise NotFound(f"no {name.removesuffix('_id')} {raw!r}: ids are integers", code="not_found")
    return int(raw)


async def body_fields(request: web.Request, model: type[Body]) -> dict[str, Any]:
    """The fields the body gives, read-only ones dropped."""
    parsed = await read_body(request, model, refused())
    return {k: getattr(parsed, k) for k in parsed.model_fields_set if k not in READ_ONLY}
