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

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from tollgate.admin.app_keys import STATE
from tollgate.admin.config_center_counters import COUNTER_ROUTES
from tollgate.admin.config_center_models import (
    CenterDeleted,
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
)
from tollgate.admin.config_center_view import (
    CenterView,
    adopt,
    body_fields,
    checked,
    int_param,
    invalid,
    now_iso,
    reconcile,
    where,
    write_changes,
)
from tollgate.admin.database_routes import stats, sync
from tollgate.admin.models import Problem
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation
from tollgate.admin.responses import json_response
from tollgate.config.rules import DEFAULT_NAMESPACE
from tollgate.errors import BadRequest, Conflict
from tollgate.registry import rule_records as native
from tollgate.registry.config_center import (
    MATCHER,
    NAMESPACE,
    RULE,
    index_name,
    native_namespace,
    native_rules,
    object_name,
)

__all__ = ["CONFIG_CENTER_ROUTES"]

_WRITE_ERRORS = (400, 404, 409, 503)


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
    await adopt(state)
    view = CenterView(state)
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
    fields = await body_fields(request, NamespaceBody)
    code = fields.get("namespace_code")
    if code is None:
        raise invalid([Problem("namespace_code", "is required")])
    if code == DEFAULT_NAMESPACE:
        raise invalid([Problem("namespace_code", f"{DEFAULT_NAMESPACE!r} is the namespace no matcher claims")])
    now = now_iso(state)
    rec = {
        "code": code,
        "namespace_name": fields.get("namespace_name") or code,
        "description": fields.get("description") or "",
        "status": fields.get("status", 1),
        "created_at": now,
        "updated_at": now,
    }

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], int]:
        if code in view.namespaces or code in view.records.index[NAMESPACE]:
            raise Conflict(f"namespace_code {code!r} already exists", code="namespace_exists")
        ident = view.records.next_id(NAMESPACE)
        changes = checked(
            view,
            {
                object_name(NAMESPACE, ident): rec,
                index_name(NAMESPACE, code): {"id": ident},
                f"{native.NAMESPACE}:{code}": native_namespace(rec, {}),
            },
        )
        return changes, list(changes), ident

    ident = await write_changes(state, build)
    view = CenterView(state)
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
    await adopt(state)
    ident = int_param(request, "namespace_id")
    view = CenterView(state)
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
    ident = int_param(request, "namespace_id")
    fields = await body_fields(request, NamespaceBody)

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], None]:
        code, rec = view.own_namespace(ident)
        if fields.get("namespace_code", code) != code:
            raise invalid([Problem("namespace_code", "cannot be changed: it names the namespace in the native API")])
        new = {**rec, **{k: v for k, v in fields.items() if k != "namespace_code"}, "updated_at": now_iso(state)}
        changes = {
            object_name(NAMESPACE, ident): new,
            f"{native.NAMESPACE}:{code}": native_namespace(new, view.records.matchers_of(ident)),
        }
        return checked(view, changes), [], None

    await write_changes(state, build)
    await reconcile(state, ident)
    view = CenterView(state)
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
    ident = int_param(request, "namespace_id")

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
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
        return checked(view, changes), [], {"id": ident, "deleted": True, "matchers": matchers, "rules": list(rules)}

    return json_response(await write_changes(state, build))


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
    await adopt(state)
    ident = int_param(request, "namespace_id")
    return json_response({"object": "list", "data": CenterView(state).matchers_view(ident)})


def _matcher_changes(view: CenterView, ns_id: int, code: str, ident: int, rec: dict[str, Any] | None) -> dict[str, Any]:
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
    return checked(view, changes)


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
    ns_id = int_param(request, "namespace_id")
    fields = await body_fields(request, MatcherBody)
    now = now_iso(state)
    rec = {"matcher_name": "", "priority": 0, "status": 1, **fields, "namespace_id": ns_id}
    rec.update(created_at=now, updated_at=now)
    problems = check_matcher(rec)
    if problems:
        raise invalid(problems)

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], int]:
        code, _ns = view.own_namespace(ns_id)
        ident = view.records.next_id(MATCHER)
        return _matcher_changes(view, ns_id, code, ident, rec), [object_name(MATCHER, ident)], ident

    ident = await write_changes(state, build)
    await reconcile(state, ns_id)
    return json_response(CenterView(state).matcher_view(ident), status=201)


@operation(
    "one matcher",
    tag=_MATCHERS,
    answers={200: DocumentedAnswer("the matcher", MatcherView)},
    errors=(404, 503),
    role="viewer",
)
async def get_matcher(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await adopt(state)
    return json_response(CenterView(state).matcher_view(int_param(request, "matcher_id")))


def _own_matcher(view: CenterView, ident: int) -> tuple[dict[str, Any], int, str]:
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
    ident = int_param(request, "matcher_id")
    fields = await body_fields(request, MatcherBody)

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], int]:
        rec, ns_id, code = _own_matcher(view, ident)
        new = {**rec, **fields, "updated_at": now_iso(state)}
        problems = check_matcher(new)
        if problems:
            raise invalid(problems)
        return _matcher_changes(view, ns_id, code, ident, new), [], ns_id

    ns_id = await write_changes(state, build)
    await reconcile(state, ns_id)
    return json_response(CenterView(state).matcher_view(ident))


@operation(
    "delete a matcher",
    tag=_MATCHERS,
    answers={200: DocumentedAnswer("deleted", CenterDeleted)},
    errors=(400, 404, 503),
    role="operator",
)
async def delete_matcher(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ident = int_param(request, "matcher_id")

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], int]:
        _rec, ns_id, code = _own_matcher(view, ident)
        return _matcher_changes(view, ns_id, code, ident, None), [], ns_id

    await reconcile(state, await write_changes(state, build))
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
    await adopt(state)
    ident = int_param(request, "namespace_id")
    return json_response({"object": "list", "data": CenterView(state).rules_view(ident)})


def _rule_changes(
    view: CenterView, ident: int, code: str, rec: dict[str, Any] | None, old: Mapping[str, Any] | None
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
    return checked(view, changes)


def _no_native_clash(view: CenterView, ident: int, rec: Mapping[str, Any], code: str) -> None:
    """Refuse to take over a native rule of the same name that this rule does not own (say, the file's cc.7)."""
    for name in native_rules(ident, rec, code):
        if name in view.rules and view.owned.get(name) != ident:
            raise Conflict(
                f"the native rule {name!r} this rule would be enforced as already exists {where(view.rules[name].source)}",
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
    ns_id = int_param(request, "namespace_id")
    fields = await body_fields(request, RuleBody)
    missing = [Problem(f, "is required") for f in ("rule_type", "rule_config") if fields.get(f) is None]
    if missing:
        raise invalid(missing)
    config = check_rule_config(fields["rule_type"], fields["rule_config"])
    now = now_iso(state)
    base = {"rule_name": "", "priority": 0, "status": 1, **fields, "rule_config": config, "namespace_id": ns_id}
    base.update(created_at=now, updated_at=now)

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], int]:
        code, _ns = view.own_namespace(ns_id)
        ident = view.records.next_id(RULE)
        while any(name in view.rules for name in native_rules(ident, base, code)):  # e.g. the file declares cc.7
            ident += 1
        rec = {**base, "rule_name": base["rule_name"] or f"rule {ident}"}
        changes = _rule_changes(view, ident, code, rec, None)
        creates = [n for n, doc in changes.items() if n.startswith(f"{native.RULE}:") and doc is not None]
        return changes, [object_name(RULE, ident), *creates], ident

    ident = await write_changes(state, build)
    return json_response(CenterView(state).rule_view(ident), status=201)


@operation(
    "one rule", tag=_RULES, answers={200: DocumentedAnswer("the rule", RuleView)}, errors=(404, 503), role="viewer"
)
async def get_rule(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await adopt(state)
    return json_response(CenterView(state).rule_view(int_param(request, "rule_id")))


def _own_rule(view: CenterView, ident: int) -> tuple[dict[str, Any], str]:
    rec, names, ns_id = view.rule(ident)
    if isinstance(rec.get("adopted"), str):
        entry = view.rules[names[0]]
        raise BadRequest(
            f"rule {ident} is the native rule {names[0]!r}, declared {where(entry.source)}: change it there "
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
    ident = int_param(request, "rule_id")
    fields = await body_fields(request, RuleBody)
    if "rule_type" in fields and fields["rule_type"] is None:
        raise invalid([Problem("rule_type", "cannot be null")])

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], None]:
        rec, code = _own_rule(view, ident)
        new = {**rec, **fields, "updated_at": now_iso(state)}
        if new.get("rule_config") is None:
            raise invalid([Problem("rule_config", "is required")])
        new["rule_config"] = check_rule_config(new["rule_type"], new["rule_config"])
        _no_native_clash(view, ident, new, code)
        changes = _rule_changes(view, ident, code, new, rec)
        creates = [n for n, doc in changes.items() if n.startswith(f"{native.RULE}:") and n[5:] not in view.rules]
        return changes, [n for n in creates if changes[n] is not None], None

    await write_changes(state, build)
    return json_response(CenterView(state).rule_view(ident))


@operation(
    "delete a rule",
    tag=_RULES,
    answers={200: DocumentedAnswer("deleted", CenterDeleted)},
    errors=(400, 404, 503),
    role="operator",
)
async def delete_rule(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ident = int_param(request, "rule_id")

    def build(view: CenterView) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
        rec, code = _own_rule(view, ident)
        return _rule_changes(view, ident, code, None, rec), [], {"id": ident, "deleted": True}

    return json_response(await write_changes(state, build))


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
    *COUNTER_ROUTES,
    ("GET", "/api/v1/stats", stats),
    ("POST", "/api/v1/sync", sync),
)
"""The config-center routes; stats and sync are the database routes' handlers."""
