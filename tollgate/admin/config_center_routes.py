"""The config-center REST API under ``/api/v1``: namespaces, matchers, rules, counters, health, stats and sync.

Scripts written for an "AI gateway config center" run unchanged against the
admin listener (same tokens and roles as ``/admin``). Its objects are the
registry's namespaces and rules in another shape (see
:mod:`tollgate.registry.config_center` for the mapping, the ids and the
scope of the counters): what is created here is listed, and enforced, by the
native admin API, and what the config file or the native API declares is
listed here, read-only. ``/api/v1/stats`` and ``/api/v1/sync`` are the
database routes' own handlers at a second path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tollgate.admin.body import read_body, read_json
from tollgate.admin.config_center_models import (
    READ_ONLY,
    CenterCounter,
    CenterDeleted,
    CenterHealth,
    MatcherBody,
    MatcherList,
    MatcherView,
    NamespaceBody,
    NamespaceList,
    NamespaceView,
    RuleBody,
    RuleList,
    RuleView,
    check_matcher,
    check_rule_config,
    refused,
)
from tollgate.admin.database_routes import stats, sync
from tollgate.admin.models import Body, Problem, parse
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation
from tollgate.config.rules import DEFAULT_NAMESPACE, RuleSpec
from tollgate.edge.answers import json_response
from tollgate.errors import BadRequest, Conflict, NotFound, StoreError
from tollgate.limiter.decision import Charge
from tollgate.limiter.spec import LimitSpec
from tollgate.limiter.store import RedisEngine
from tollgate.policy.admission import limit_spec, scope_key
from tollgate.registry import rule_records as native
from tollgate.registry.config_center import (
    MATCHER,
    NAMESPACE,
    RULE,
    CenterRecords,
    index_name,
    native_namespace,
    native_rules,
    object_name,
    owned_rule_names,
    rule_config_of_native,
)
from tollgate.registry.stores import RegistryConflict
from tollgate.runtime.state import STATE, GatewayState

__all__ = ["CONFIG_CENTER_ROUTES"]

log = logging.getLogger("tollgate.admin")

_ATTEMPTS = 5  # id allocations that lose a race to another process are retried this often
_PROBE_TIMEOUT = 1.0
_TENANT_SCOPES = frozenset({"tenant", "key", "user"})
_WHAT = {NAMESPACE: "namespace", MATCHER: "matcher", RULE: "rule"}
_WRITE_ERRORS = (400, 404, 409, 503)


def _now(state: GatewayState) -> str:
    return datetime.fromtimestamp(state.clock.time(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _invalid(problems: list[Problem] | list[str]) -> BadRequest:
    lines = [str(p) for p in problems]
    first = problems[0]
    param = first.path if isinstance(first, Problem) else first.partition(":")[0]
    return BadRequest("invalid input: " + "; ".join(lines), param=param or None, code="invalid_input")


class _View:
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
                f"namespace {ident} ({code!r}) is declared {_where(entry.source)}: change it there "
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
            spaces = [self.records.index[NAMESPACE].get(n) for n in _attached(entry)] if entry else []
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
        return {"id": ident, **_fields(rec, ("namespace_name", "description", "status")), "namespace_code": code}

    def matchers_view(self, ns_id: int) -> list[dict[str, Any]]:
        code, entry, rec = self.namespace(ns_id)
        if not rec.get("adopted"):
            return [
                {"id": i, "namespace_id": ns_id, **_fields(m, _MATCHER_FIELDS)}
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
        return {"id": ident, "namespace_id": ns_id, **_fields(rec, _MATCHER_FIELDS)}

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
        return {"id": ident, "namespace_id": ns_id, **_fields(rec, _RULE_FIELDS), "native_rules": names}

    def rules_view(self, ns_id: int) -> list[dict[str, Any]]:
        code, _entry, _rec = self.namespace(ns_id)
        ids = set(self.records.rules_of(ns_id))
        for name, entry in self.rules.items():
            if code in _attached(entry) and name not in self.owned:
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


def _fields(rec: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    out = {n: rec.get(n) for n in names}
    out.update(created_at=rec.get("created_at"), updated_at=rec.get("updated_at"), source="api")
    return out


def _attached(entry: native.Entry) -> list[str]:
    attach = entry.doc.get("attach", {})
    return list(attach.get("namespaces", ())) if isinstance(attach, dict) else []


def _where(source: str) -> str:
    return "in the config file" if source.startswith("config") else "through the native admin API"


# -- writing -------------------------------------------------------------------------


async def _catch_up(state: GatewayState) -> None:
    """Take in what other processes wrote, so that ids and natives are computed from the newest state."""
    await state.registry.poll()


Build = Callable[[_View], tuple[dict[str, Any], list[str], Any]]
"""From a fresh view: (registry changes, names that must not exist yet, the result to answer with)."""


async def _write(state: GatewayState, build: Build) -> Any:
    """Build the changes from a fresh view and write them; an id another process took meanwhile: again."""
    for attempt in range(_ATTEMPTS):
        await _catch_up(state)
        changes, create_only, result = build(_View(state))
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


async def _reconcile(state: GatewayState, ns_id: int) -> None:
    """Make the native namespace what its config-center records say, after they were written.

    Two processes changing matchers of one namespace at once each derive the native namespace from what they saw:
    the later write may leave out the other's matcher. Each writer looks again after its own write (and after every
    write before it), so the last one finds and repairs what the other left out.
    """

    def build(view: _View) -> tuple[dict[str, Any], list[str], None]:
        rec = view.records.live(NAMESPACE, ns_id)
        if rec is None or rec.get("adopted") or rec.get("code") not in view.namespaces:
            return {}, [], None
        name = f"{native.NAMESPACE}:{rec['code']}"
        wanted = _checked(view, {name: native_namespace(rec, view.records.matchers_of(ns_id))})
        if view.state.registry.rule_records.get(name) == wanted[name]:
            return {}, [], None
        return wanted, [], None

    for _attempt in range(3):
        before = state.registry.rules_generation
        await _write(state, build)
        if state.registry.rules_generation == before:
            return


def _checked(view: _View, changes: Mapping[str, Any]) -> dict[str, Any]:
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
        raise _invalid(problems)
    out = dict(changes)
    for kind, ident in touched:
        if kind == native.NAMESPACE:
            out[f"{kind}:{ident}"] = native.namespace_doc(next(ns for ns in rules.namespaces if ns.name == ident))
        else:
            out[f"{kind}:{ident}"] = native.rule_doc(next(r for r in rules.rules if r.name == ident))
    return out


async def _adopt(state: GatewayState) -> None:
    """Claim ids for the namespaces, their matchers and the namespace rules declared elsewhere that have none."""

    def build(view: _View) -> tuple[dict[str, Any], list[str], None]:
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
            if _attached(entry) and name not in view.owned and name not in view.records.index[RULE]:
                claim(RULE, name, {"adopted": name})
        return changes, list(changes), None

    try:
        await _write(state, build)
    except StoreError as exc:  # listed without the ids not yet claimed; the reads go on from what is known
        log.warning("config center: cannot claim ids for objects declared elsewhere: %s", exc)


def _int_param(request: web.Request, name: str) -> int:
    raw = request.match_info[name]
    if not raw.isdigit():
        raise NotFound(f"no {name.removesuffix('_id')} {raw!r}: ids are integers", code="not_found")
    return int(raw)


async def _body(request: web.Request, model: type[Body]) -> dict[str, Any]:
    """The fields the body gives, read-only ones dropped."""
    parsed = await read_body(request, model, refused())
    return {k: getattr(parsed, k) for k in parsed.model_fields_set if k not in READ_ONLY}


# -- namespaces ----------------------------------------------------------------------

_NS = "config center: namespaces"


@operation(
    "namespaces: those created here and those the config file or the native API declare",
    tag=_NS,
    answers={200: DocumentedAnswer("namespaces", NamespaceList)},
    errors=(503,),
    role="viewer",
)
async def list_namespaces(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _adopt(state)
    view = _View(state)
    data = []
    for code, entry in view.namespaces.items():
        ident = view.records.index[NAMESPACE].get(code)
        rec = view.records.live(NAMESPACE, ident) if ident is not None else None
        if ident is not None and rec is not None:
            data.append(view.namespace_view(ident, code, entry, rec))
    data.sort(key=lambda d: d["id"])
    return json_response({"object": "list", "data": data})


@operation(
    "create a namespace (it matches nothing until a matcher is added)",
    tag=_NS,
    answers={201: DocumentedAnswer("created", NamespaceView)},
    body=NamespaceBody,
    errors=_WRITE_ERRORS,
    role="operator",
)
async def create_namespace(request: web.Request) -> web.Response:
    state = request.app[STATE]
    fields = await _body(request, NamespaceBody)
    code = fields.get("namespace_code")
    if code is None:
        raise _invalid([Problem("namespace_code", "is required")])
    if code == DEFAULT_NAMESPACE:
        raise _invalid([Problem("namespace_code", f"{DEFAULT_NAMESPACE!r} is the namespace no matcher claims")])
    now = _now(state)
    rec = {
        "code": code,
        "namespace_name": fields.get("namespace_name") or code,
        "description": fields.get("description") or "",
        "status": fields.get("status", 1),
        "created_at": now,
        "updated_at": now,
    }

    def build(view: _View) -> tuple[dict[str, Any], list[str], int]:
        if code in view.namespaces or code in view.records.index[NAMESPACE]:
            raise Conflict(f"namespace_code {code!r} already exists", code="namespace_exists")
        ident = view.records.next_id(NAMESPACE)
        changes = _checked(
            view,
            {
                object_name(NAMESPACE, ident): rec,
                index_name(NAMESPACE, code): {"id": ident},
                f"{native.NAMESPACE}:{code}": native_namespace(rec, {}),
            },
        )
        return changes, list(changes), ident

    ident = await _write(state, build)
    view = _View(state)
    return json_response(view.namespace_view(ident, code, view.namespaces[code], rec), status=201)


@operation(
    "one namespace",
    tag=_NS,
    answers={200: DocumentedAnswer("the namespace", NamespaceView)},
    errors=(404, 503),
    role="viewer",
)
async def get_namespace(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _adopt(state)
    ident = _int_param(request, "namespace_id")
    view = _View(state)
    code, entry, rec = view.namespace(ident)
    return json_response(view.namespace_view(ident, code, entry, rec))


@operation(
    "change a namespace's name, description or status (its code is fixed)",
    tag=_NS,
    answers={200: DocumentedAnswer("the namespace", NamespaceView)},
    body=NamespaceBody,
    errors=_WRITE_ERRORS,
    role="operator",
)
async def update_namespace(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ident = _int_param(request, "namespace_id")
    fields = await _body(request, NamespaceBody)

    def build(view: _View) -> tuple[dict[str, Any], list[str], None]:
        code, rec = view.own_namespace(ident)
        if fields.get("namespace_code", code) != code:
            raise _invalid([Problem("namespace_code", "cannot be changed: it names the namespace in the native API")])
        new = {**rec, **{k: v for k, v in fields.items() if k != "namespace_code"}, "updated_at": _now(state)}
        changes = {
            object_name(NAMESPACE, ident): new,
            f"{native.NAMESPACE}:{code}": native_namespace(new, view.records.matchers_of(ident)),
        }
        return _checked(view, changes), [], None

    await _write(state, build)
    await _reconcile(state, ident)
    view = _View(state)
    code, entry, rec = view.namespace(ident)
    return json_response(view.namespace_view(ident, code, entry, rec))


@operation(
    "delete a namespace created here, with its matchers and rules",
    tag=_NS,
    answers={200: DocumentedAnswer("deleted", CenterDeleted)},
    errors=(400, 404, 503),
    role="operator",
)
async def delete_namespace(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ident = _int_param(request, "namespace_id")

    def build(view: _View) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
        code, _rec = view.own_namespace(ident)
        matchers = list(view.records.matchers_of(ident))
        rules = view.records.rules_of(ident)
        changes: dict[str, Any] = {
            object_name(NAMESPACE, ident): {"code": code, "deleted": True},
            index_name(NAMESPACE, code): None,
            f"{native.NAMESPACE}:{code}": None,
        }
        for m in matchers:
            changes[object_name(MATCHER, m)] = {"namespace_id": ident, "deleted": True}
        for r, doc in rules.items():
            changes[object_name(RULE, r)] = {"namespace_id": ident, "deleted": True}
            changes.update({f"{native.RULE}:{name}": None for name in doc.get("native", ())})
        return _checked(view, changes), [], {"id": ident, "deleted": True, "matchers": matchers, "rules": list(rules)}

    return json_response(await _write(state, build))


# -- matchers ------------------------------------------------------------------------

_MATCHERS = "config center: matchers"


@operation(
    "a namespace's matchers",
    tag=_MATCHERS,
    answers={200: DocumentedAnswer("matchers", MatcherList)},
    errors=(404, 503),
    role="viewer",
)
async def list_matchers(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _adopt(state)
    ident = _int_param(request, "namespace_id")
    return json_response({"object": "list", "data": _View(state).matchers_view(ident)})


def _matcher_changes(view: _View, ns_id: int, code: str, ident: int, rec: dict[str, Any] | None) -> dict[str, Any]:
    """The matcher's record set to ``rec`` (None: deleted) and its namespace's native document recomputed."""
    matchers = view.records.matchers_of(ns_id)
    if rec is None:
        matchers.pop(ident, None)
    else:
        matchers[ident] = rec
    ns_rec = view.records.live(NAMESPACE, ns_id) or {}
    changes = {
        object_name(MATCHER, ident): rec if rec is not None else {"namespace_id": ns_id, "deleted": True},
        f"{native.NAMESPACE}:{code}": native_namespace(ns_rec, matchers),
    }
    return _checked(view, changes)


@operation(
    "add a matcher to a namespace",
    tag=_MATCHERS,
    answers={201: DocumentedAnswer("created", MatcherView)},
    body=MatcherBody,
    errors=_WRITE_ERRORS,
    role="operator",
)
async def create_matcher(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ns_id = _int_param(request, "namespace_id")
    fields = await _body(request, MatcherBody)
    now = _now(state)
    rec = {"matcher_name": "", "priority": 0, "status": 1, **fields, "namespace_id": ns_id}
    rec.update(created_at=now, updated_at=now)
    problems = check_matcher(rec)
    if problems:
        raise _invalid(problems)

    def build(view: _View) -> tuple[dict[str, Any], list[str], int]:
        code, _ns = view.own_namespace(ns_id)
        ident = view.records.next_id(MATCHER)
        return _matcher_changes(view, ns_id, code, ident, rec), [object_name(MATCHER, ident)], ident

    ident = await _write(state, build)
    await _reconcile(state, ns_id)
    return json_response(_View(state).matcher_view(ident), status=201)


@operation(
    "one matcher",
    tag=_MATCHERS,
    answers={200: DocumentedAnswer("the matcher", MatcherView)},
    errors=(404, 503),
    role="viewer",
)
async def get_matcher(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _adopt(state)
    return json_response(_View(state).matcher_view(_int_param(request, "matcher_id")))


def _own_matcher(view: _View, ident: int) -> tuple[dict[str, Any], int, str]:
    rec, ns_id = view.matcher(ident)
    if isinstance(rec.get("adopted"), str):
        code, _entry, _rec = view.namespace(ns_id)
        raise BadRequest(
            f"matcher {ident} belongs to namespace {code!r}, declared elsewhere: change it there "
            f"(PUT /admin/namespaces/{code})",
            code="declared_elsewhere",
        )
    code, _ns = view.own_namespace(ns_id)
    return rec, ns_id, code


@operation(
    "change a matcher",
    tag=_MATCHERS,
    answers={200: DocumentedAnswer("the matcher", MatcherView)},
    body=MatcherBody,
    errors=_WRITE_ERRORS,
    role="operator",
)
async def update_matcher(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ident = _int_param(request, "matcher_id")
    fields = await _body(request, MatcherBody)

    def build(view: _View) -> tuple[dict[str, Any], list[str], int]:
        rec, ns_id, code = _own_matcher(view, ident)
        new = {**rec, **fields, "updated_at": _now(state)}
        problems = check_matcher(new)
        if problems:
            raise _invalid(problems)
        return _matcher_changes(view, ns_id, code, ident, new), [], ns_id

    ns_id = await _write(state, build)
    await _reconcile(state, ns_id)
    return json_response(_View(state).matcher_view(ident))


@operation(
    "delete a matcher",
    tag=_MATCHERS,
    answers={200: DocumentedAnswer("deleted", CenterDeleted)},
    errors=(400, 404, 503),
    role="operator",
)
async def delete_matcher(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ident = _int_param(request, "matcher_id")

    def build(view: _View) -> tuple[dict[str, Any], list[str], int]:
        _rec, ns_id, code = _own_matcher(view, ident)
        return _matcher_changes(view, ns_id, code, ident, None), [], ns_id

    await _reconcile(state, await _write(state, build))
    return json_response({"id": ident, "deleted": True})


# -- rules ---------------------------------------------------------------------------

_RULES = "config center: rules"


@operation(
    "a namespace's rules",
    tag=_RULES,
    answers={200: DocumentedAnswer("rules", RuleList)},
    errors=(404, 503),
    role="viewer",
)
async def list_rules(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _adopt(state)
    ident = _int_param(request, "namespace_id")
    return json_response({"object": "list", "data": _View(state).rules_view(ident)})


def _rule_changes(
    view: _View, ident: int, code: str, rec: dict[str, Any] | None, old: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The rule's record set to ``rec`` (None: deleted), its native rules written and the stale ones deleted."""
    changes: dict[str, Any] = {}
    stale = set(old.get("native", ())) if old is not None else set()
    if rec is None:
        changes[object_name(RULE, ident)] = {"namespace_id": old["namespace_id"] if old else 0, "deleted": True}
    else:
        natives = native_rules(ident, rec, code)
        rec = {**rec, "native": sorted(natives)}
        changes[object_name(RULE, ident)] = rec
        changes.update({f"{native.RULE}:{name}": doc for name, doc in natives.items()})
        stale -= natives.keys()
    changes.update({f"{native.RULE}:{name}": None for name in stale})
    return _checked(view, changes)


def _no_native_clash(view: _View, ident: int, rec: Mapping[str, Any], code: str) -> None:
    """Refuse to take over a native rule of the same name that this rule does not own (say, the file's cc.7)."""
    for name in native_rules(ident, rec, code):
        if name in view.rules and view.owned.get(name) != ident:
            raise Conflict(
                f"the native rule {name!r} this rule would be enforced as already exists {_where(view.rules[name].source)}",
                code="rule_exists",
            )


@operation(
    "add a rule to a namespace",
    tag=_RULES,
    answers={201: DocumentedAnswer("created", RuleView)},
    body=RuleBody,
    errors=_WRITE_ERRORS,
    role="operator",
)
async def create_rule(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ns_id = _int_param(request, "namespace_id")
    fields = await _body(request, RuleBody)
    missing = [Problem(f, "is required") for f in ("rule_type", "rule_config") if fields.get(f) is None]
    if missing:
        raise _invalid(missing)
    config = check_rule_config(fields["rule_type"], fields["rule_config"])
    now = _now(state)
    base = {"rule_name": "", "priority": 0, "status": 1, **fields, "rule_config": config, "namespace_id": ns_id}
    base.update(created_at=now, updated_at=now)

    def build(view: _View) -> tuple[dict[str, Any], list[str], int]:
        code, _ns = view.own_namespace(ns_id)
        ident = view.records.next_id(RULE)
        while any(name in view.rules for name in native_rules(ident, base, code)):  # e.g. the file declares cc.7
            ident += 1
        rec = {**base, "rule_name": base["rule_name"] or f"rule {ident}"}
        changes = _rule_changes(view, ident, code, rec, None)
        creates = [n for n, doc in changes.items() if n.startswith(f"{native.RULE}:") and doc is not None]
        return changes, [object_name(RULE, ident), *creates], ident

    ident = await _write(state, build)
    return json_response(_View(state).rule_view(ident), status=201)


@operation(
    "one rule", tag=_RULES, answers={200: DocumentedAnswer("the rule", RuleView)}, errors=(404, 503), role="viewer"
)
async def get_rule(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _adopt(state)
    return json_response(_View(state).rule_view(_int_param(request, "rule_id")))


def _own_rule(view: _View, ident: int) -> tuple[dict[str, Any], str]:
    rec, names, ns_id = view.rule(ident)
    if isinstance(rec.get("adopted"), str):
        entry = view.rules[names[0]]
        raise BadRequest(
            f"rule {ident} is the native rule {names[0]!r}, declared {_where(entry.source)}: change it there "
            f"(PUT /admin/rules/{names[0]})",
            code="declared_elsewhere",
        )
    code, _ns = view.own_namespace(ns_id)
    return rec, code


@operation(
    "change a rule (a new rule_type needs a rule_config of that type)",
    tag=_RULES,
    answers={200: DocumentedAnswer("the rule", RuleView)},
    body=RuleBody,
    errors=_WRITE_ERRORS,
    role="operator",
)
async def update_rule(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ident = _int_param(request, "rule_id")
    fields = await _body(request, RuleBody)
    if "rule_type" in fields and fields["rule_type"] is None:
        raise _invalid([Problem("rule_type", "cannot be null")])

    def build(view: _View) -> tuple[dict[str, Any], list[str], None]:
        rec, code = _own_rule(view, ident)
        new = {**rec, **fields, "updated_at": _now(state)}
        if new.get("rule_config") is None:
            raise _invalid([Problem("rule_config", "is required")])
        new["rule_config"] = check_rule_config(new["rule_type"], new["rule_config"])
        _no_native_clash(view, ident, new, code)
        changes = _rule_changes(view, ident, code, new, rec)
        creates = [n for n, doc in changes.items() if n.startswith(f"{native.RULE}:") and n[5:] not in view.rules]
        return changes, [n for n in creates if changes[n] is not None], None

    await _write(state, build)
    return json_response(_View(state).rule_view(ident))


@operation(
    "delete a rule",
    tag=_RULES,
    answers={200: DocumentedAnswer("deleted", CenterDeleted)},
    errors=(400, 404, 503),
    role="operator",
)
async def delete_rule(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ident = _int_param(request, "rule_id")

    def build(view: _View) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
        rec, code = _own_rule(view, ident)
        return _rule_changes(view, ident, code, None, rec), [], {"id": ident, "deleted": True}

    return json_response(await _write(state, build))


# -- counters ------------------------------------------------------------------------

_COUNTERS = "config center: counters"


class _Counted:
    """The limits a counter key names: the rule, its scope value, and a spec per native limit."""

    def __init__(self, request: web.Request) -> None:
        state = request.app[STATE]
        self.key = request.match_info["counter_key"]
        rule_part, _, value = self.key.partition(":")
        if not rule_part.isdigit():
            raise BadRequest(
                f"counter key {self.key!r}: give <rule id> or <rule id>:<scope value> (the namespace code for a "
                "namespace's rule)",
                param="counter_key",
                code="invalid_input",
            )
        self.rule_id = int(rule_part)
        view = _View(state)
        _rec, names, ns_id = view.rule(self.rule_id)
        in_force = {r.name: r for r in state.runtime.rules_config.rules}
        specs = [in_force[n] for n in names if n in in_force]
        if not specs:
            raise NotFound(f"rule {self.rule_id} is not in force on this process", code="rule_not_found")
        self.rule_type = specs[0].type
        if self.rule_type == "field_check":
            raise BadRequest(f"rule {self.rule_id} is a field_check: it keeps no counter", code="no_counter")
        code = view.records.live(NAMESPACE, ns_id) or {}
        self.namespace = str(code.get("code", ""))
        self.limits = [self._spec(state, rule, value) for rule in specs]

    def _spec(self, state: GatewayState, rule: RuleSpec, value: str) -> tuple[RuleSpec, LimitSpec, str]:
        needed = [s for s in rule.scope if s != "global"]
        if len(needed) > 1 or (needed and needed[0] in _TENANT_SCOPES and needed[0] != "tenant"):
            raise BadRequest(
                f"rule {self.rule_id} counts per {', '.join(rule.scope)}: read it with "
                f"GET /admin/rules/{rule.name}/counter",
                param="counter_key",
                code="invalid_input",
            )
        values: dict[str, str] = {}
        if needed:
            scope = needed[0]
            given = value or (self.namespace if scope == "namespace" else "")
            if not given:
                raise BadRequest(
                    f"rule {self.rule_id} counts per {scope}: give the counter key as {self.rule_id}:<{scope}>",
                    param="counter_key",
                    code="invalid_input",
                )
            values[scope] = given
        tenant = values.get("tenant", "-")
        spec = limit_spec(rule, scope_key(rule, values), tenant, 0)
        entry = state.registry.directory.tenants.get(tenant)
        store = state.limiter.store_for(tenant=spec.tenant, plan=entry.tenant.plan if entry is not None else None)
        return rule, spec, store

    @property
    def scope(self) -> dict[str, str]:
        return dict(self.limits[0][1].scope_key)


async def _counter_answer(state: GatewayState, counted: _Counted) -> dict[str, Any]:
    counters = []
    for rule, spec, store in counted.limits:
        st, used = await state.limiter.counter(spec, store=store)
        counters.append(
            {
                "rule": rule.name,
                "window": None if rule.type == "connection_limit" else rule.per,
                "unit": st.unit,
                "limit": st.limit,
                "used": used,
                "remaining": max(st.remaining, 0),
                "reset_ms": st.reset_ms,
            }
        )
    return {
        "counter_key": counted.key,
        "rule_id": counted.rule_id,
        "rule_type": counted.rule_type,
        "scope": counted.scope,
        "store": counted.limits[0][2],
        "counters": counters,
    }


@operation(
    "a rule's counters for one scope value (counter key <rule id>[:<scope value>]), read without consuming",
    tag=_COUNTERS,
    answers={200: DocumentedAnswer("the counters", CenterCounter)},
    errors=(400, 404, 503),
    role="viewer",
)
async def get_counter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await _adopt(state)
    return json_response(await _counter_answer(state, _Counted(request)))


class CounterIncrement(Body):
    """How much to add to every limit of the rule (default 1); an empty body adds 1."""

    amount: int = 1


def _settled(reply_degraded: bool) -> None:
    if reply_degraded:
        raise StoreError("the limiter store did not answer; the change is applied when it answers again")


@operation(
    "add to a rule's counters (each of its windows), even past the limit; audited",
    tag=_COUNTERS,
    answers={200: DocumentedAnswer("the counters after", CenterCounter)},
    body=CounterIncrement,
    body_required=False,
    errors=(400, 404, 503),
    role="operator",
)
async def increment_counter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = parse(CounterIncrement, await read_json(request, empty={}), refused())
    if body.amount < 1:
        raise _invalid([Problem("amount", "must be an integer >= 1")])
    counted = _Counted(request)
    if counted.rule_type == "connection_limit":
        raise BadRequest(
            f"rule {counted.rule_id} is a connection_limit: it counts requests in flight, which only requests change",
            code="no_counter",
        )
    charges = [(Charge(store, state.limiter.key(spec), "", spec, 0), body.amount) for _r, spec, store in counted.limits]
    _settled((await state.limiter.adjust(charges)).degraded)
    return json_response(await _counter_answer(state, counted))


def _reset_marks(spec: LimitSpec, now_ms: int) -> list[int]:
    """Where a window keeps what it counted now: the sliding window's slots, the fixed window's start."""
    if spec.kind == "sliding_window":
        slot_ms = max(1, -(-spec.window_ms // spec.slots))
        return list(range((now_ms - spec.window_ms) // slot_ms - 1, now_ms // slot_ms + 2))
    if spec.kind == "fixed_window":
        if spec.calendar == "month":
            day = datetime.fromtimestamp(now_ms / 1000, UTC)
            return [int(datetime(day.year, day.month, 1, tzinfo=UTC).timestamp() * 1000)]
        length = {"hour": 3_600_000, "day": 86_400_000}.get(spec.calendar or "", spec.window_ms)
        return [now_ms // length * length]
    return [0]


@operation(
    "set a rule's counters (each of its windows) back to zero; audited",
    tag=_COUNTERS,
    answers={200: DocumentedAnswer("the counters after", CenterCounter)},
    errors=(400, 404, 503),
    role="operator",
)
async def reset_counter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counted = _Counted(request)
    if counted.rule_type == "connection_limit":
        raise BadRequest(
            f"rule {counted.rule_id} is a connection_limit: its leases end with their requests", code="no_counter"
        )
    now_ms = int(time.time() * 1000)
    charges = []
    for _rule, spec, store in counted.limits:
        _st, used = await state.limiter.counter(spec, store=store)
        if used > 0:
            key = state.limiter.key(spec)
            charges += [(Charge(store, key, "", spec, mark), -used) for mark in _reset_marks(spec, now_ms)]
    if charges:
        _settled((await state.limiter.adjust(charges)).degraded)
    return json_response(await _counter_answer(state, counted))


# -- health --------------------------------------------------------------------------


async def _probe(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, _PROBE_TIMEOUT)
    except Exception:  # any failure of the probe is the store's status, not this route's
        return "unhealthy"
    return "healthy"


@operation(
    "each storage's status: the limiter's Redis stores, the database, the registry",
    tag="config center",
    answers={200: DocumentedAnswer("healthy, or degraded naming the storage that is not", CenterHealth)},
    role="viewer",
)
async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    redis = []
    for name in state.config.store.stores:
        try:
            engine = state.limiter.engine(name)
        except ValueError:  # added by a reload: in force after a restart
            continue
        if isinstance(engine, RedisEngine):
            redis.append(_probe(engine.ping(_PROBE_TIMEOUT)))
    database = state.database
    asked = await asyncio.gather(*redis, _probe(database.fetchval("SELECT 1")) if database is not None else _none())
    storage = {
        "redis": ("healthy" if all(s == "healthy" for s in asked[:-1]) else "unhealthy") if redis else "embedded",
        "database": asked[-1],
        "registry": "unhealthy" if state.registry.problems() else "healthy",
    }
    status = "healthy" if all(s != "unhealthy" for s in storage.values()) else "degraded"
    return json_response({"status": status, "storage": storage})


async def _none() -> str:
    return "not_configured"


CONFIG_CENTER_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/api/v1/namespaces", list_namespaces),
    ("POST", "/api/v1/namespaces", create_namespace),
    ("GET", "/api/v1/namespaces/{namespace_id}", get_namespace),
    ("PUT", "/api/v1/namespaces/{namespace_id}", update_namespace),
    ("DELETE", "/api/v1/namespaces/{namespace_id}", delete_namespace),
    ("GET", "/api/v1/namespaces/{namespace_id}/matchers", list_matchers),
    ("POST", "/api/v1/namespaces/{namespace_id}/matchers", create_matcher),
    ("GET", "/api/v1/matchers/{matcher_id}", get_matcher),
    ("PUT", "/api/v1/matchers/{matcher_id}", update_matcher),
    ("DELETE", "/api/v1/matchers/{matcher_id}", delete_matcher),
    ("GET", "/api/v1/namespaces/{namespace_id}/rules", list_rules),
    ("POST", "/api/v1/namespaces/{namespace_id}/rules", create_rule),
    ("GET", "/api/v1/rules/{rule_id}", get_rule),
    ("PUT", "/api/v1/rules/{rule_id}", update_rule),
    ("DELETE", "/api/v1/rules/{rule_id}", delete_rule),
    ("GET", "/api/v1/counters/{counter_key}", get_counter),
    ("POST", "/api/v1/counters/{counter_key}/increment", increment_counter),
    ("POST", "/api/v1/counters/{counter_key}/reset", reset_counter),
    ("GET", "/api/v1/health", health),
    ("GET", "/api/v1/stats", stats),
    ("POST", "/api/v1/sync", sync),
)
"""The config-center routes; stats and sync are the database routes' handlers."""
