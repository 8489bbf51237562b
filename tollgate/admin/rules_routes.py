"""Admin routes for namespaces and rules at runtime, validated by the config parser, and a rule's counter.

    GET    /admin/namespaces                 every namespace in force, with its source
    POST   /admin/namespaces                 create: {"name": ..., "priority": ..., "matchers": [...]}
    GET    /admin/namespaces/{name}
    PUT    /admin/namespaces/{name}          create or replace (a declared one is overridden: source config+api)
    DELETE /admin/namespaces/{name}          one created here; ?revert=true undoes the change to a declared one
    GET    /admin/rules
    POST   /admin/rules                      create: {"name": ..., "type": ..., "attach": {...}, ...}
    GET    /admin/rules/{name}
    PUT    /admin/rules/{name}
    PATCH  /admin/rules/{name}               some fields, e.g. {"enabled": false}; null resets a field
    DELETE /admin/rules/{name}
    GET    /admin/rules/{name}/counter?tenant=&key=&user=&ip=&namespace=&model=

Documents have the shape of the config file's entries. A change is checked by
parsing the config's sections with it laid over them (problems name field
paths, e.g. ``rules.rpm.limit``), written to the registry, and put in force
on this process at once and on every other within ``registry.poll_interval``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from tollgate.config.rules import RulesConfig
from tollgate.edge.answers import json_response
from tollgate.errors import BadRequest, NotFound
from tollgate.policy.admission import limit_spec, scope_key
from tollgate.registry.rule_records import NAMESPACE, RULE, Entry, RuleBook, namespace_doc, record_name, rule_doc
from tollgate.registry.stores import RegistryConflict
from tollgate.runtime.state import STATE

__all__ = ["RULE_ROUTES"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_WHAT = {NAMESPACE: "namespace", RULE: "rule"}
_PATHS = {NAMESPACE: "/admin/namespaces", RULE: "/admin/rules"}
_TRUE = ("1", "true", "yes")
# Admission tags the counters of these scopes with the tenant (one Cluster slot per tenant).
_TENANT_SCOPES = frozenset({"tenant", "key", "user"})


def _book(request: web.Request) -> RuleBook:
    state = request.app[STATE]
    return RuleBook(state.config.rules, state.registry.rule_records)


def _view(entry: Entry, in_force: bool = True) -> dict[str, Any]:
    return {"name": entry.name, **entry.doc, "source": entry.source, "in_force": in_force}


def _in_force(request: web.Request, kind: str) -> set[str]:
    """Names compiled into the running rules: a record that stopped fitting (after a reload) is listed but not in force."""
    rules = request.app[STATE].runtime.rules_config
    return {ns.name for ns in rules.namespaces} if kind == NAMESPACE else {r.name for r in rules.rules}


def _entry(book: RuleBook, kind: str, name: str) -> Entry:
    entry = book.entry(kind, name)
    if entry is None:
        raise NotFound(f"no {_WHAT[kind]} {name!r}", code=f"{_WHAT[kind]}_not_found")
    return entry


def _invalid(problems: list[str]) -> BadRequest:
    return BadRequest(
        "invalid input: " + "; ".join(problems), param=problems[0].partition(":")[0], code="invalid_input"
    )


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        raise BadRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}", code="invalid_json") from None


def _normalised(rules: RulesConfig, kind: str, name: str) -> dict[str, Any]:
    """The document as the parser understood it, every default spelled out: what the registry keeps."""
    if kind == NAMESPACE:
        return namespace_doc(next(ns for ns in rules.namespaces if ns.name == name))
    return rule_doc(next(r for r in rules.rules if r.name == name))


async def _write(request: web.Request, kind: str, name: str, doc: Any, *, create: bool) -> Entry:
    """Check the merged sections with ``doc`` as ``kind:name``; write it; return the entry now in force."""
    what = _WHAT[kind]
    if not isinstance(doc, dict):
        raise BadRequest(
            f"send the {what} as a JSON object, shaped like its entry in the config file", code="invalid_input"
        )
    book = _book(request)
    if create and book.entry(kind, name) is not None:
        where = " (declared in the config file)" if book.is_declared(kind, name) else ""
        raise RegistryConflict(f"{what} {name!r} already exists{where}; PUT {_PATHS[kind]}/{name} replaces it")
    rules, problems = book.changed(kind, name, doc).parse()
    if problems:
        raise _invalid(problems)
    record = record_name(kind, name)
    await request.app[STATE].registry.write(
        {record: _normalised(rules, kind, name)}, create_only=[record] if create else ()
    )
    return _entry(_book(request), kind, name)


def _named(doc: Any, kind: str) -> tuple[str, Any]:
    """POST bodies carry the name beside the entry's fields."""
    if not isinstance(doc, dict):
        raise BadRequest(f"send the {_WHAT[kind]} as a JSON object with its name", code="invalid_input")
    rest = dict(doc)
    name = rest.pop("name", None)
    if not isinstance(name, str) or not name:
        raise BadRequest(
            f"name is required: the {_WHAT[kind]}'s name, as the key it would have in the config file",
            param="name",
            code="invalid_input",
        )
    return name, rest


# -- handlers (one set per kind) ---------------------------------------------------


def _list(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        live = _in_force(request, kind)
        return json_response(
            {"object": "list", "data": [_view(e, e.name in live) for e in _book(request).entries(kind).values()]}
        )

    return handler


def _get(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        entry = _entry(_book(request), kind, request.match_info["name"])
        return json_response(_view(entry, entry.name in _in_force(request, kind)))

    return handler


def _create(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        name, doc = _named(await _json_body(request), kind)
        return json_response(_view(await _write(request, kind, name, doc, create=True)), status=201)

    return handler


def _replace(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        existed = _book(request).entry(kind, name) is not None
        entry = await _write(request, kind, name, await _json_body(request), create=False)
        return json_response(_view(entry), status=200 if existed else 201)

    return handler


async def patch_rule(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    current = _entry(_book(request), RULE, name)
    patch = await _json_body(request)
    if not isinstance(patch, dict) or not patch:
        raise BadRequest(
            'send a JSON object with the fields to change, e.g. {"enabled": false} or {"shadow": true}',
            code="invalid_input",
        )
    doc = {k: v for k, v in {**current.doc, **patch}.items() if v is not None}
    return json_response(_view(await _write(request, RULE, name, doc, create=False)))


def _delete(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        what = _WHAT[kind]
        book = _book(request)
        _entry(book, kind, name)
        revert = request.query.get("revert", "false").lower() in _TRUE
        if book.is_declared(kind, name):
            if not revert:
                ways = ["remove it there"]
                if kind == RULE:
                    ways.append('disable it with PATCH {"enabled": false}')
                if book.is_record(kind, name):
                    ways.append("DELETE with ?revert=true to drop its runtime change and restore the file's version")
                raise BadRequest(
                    f"{what} {name!r} is declared in the config file; " + ", or ".join(ways), code="declared_in_config"
                )
            if not book.is_record(kind, name):
                raise BadRequest(
                    f"{what} {name!r} has no runtime change to revert: it is as the config file declares it",
                    code="nothing_to_revert",
                )
        _rules, problems = book.changed(kind, name, None).parse()
        if problems:
            raise _invalid(problems)
        await request.app[STATE].registry.write({record_name(kind, name): None})
        restored = _book(request).entry(kind, name)
        if restored is not None:
            return json_response({**_view(restored), "reverted": True})
        return json_response({"object": what, "name": name, "deleted": True})

    return handler


# -- the counter -------------------------------------------------------------------


async def rule_counter(request: web.Request) -> web.Response:
    """A rule's counter for one scope, read without consuming anything."""
    state = request.app[STATE]
    name = request.match_info["name"]
    rule = next((r for r in state.runtime.rules_config.rules if r.name == name), None)
    if rule is None:
        raise NotFound(f"no rule {name!r}", code="rule_not_found")
    if rule.type == "field_check":
        raise BadRequest(f"rule {name!r} is a field_check: it keeps no counter", code="no_counter")
    needed = [s for s in rule.scope if s != "global"]
    if _TENANT_SCOPES.intersection(rule.scope) and "tenant" not in needed:
        needed.insert(0, "tenant")
    q = request.query
    missing = [s for s in needed if not q.get(s)]
    if missing:
        raise BadRequest(
            f"rule {name!r} counts per {', '.join(rule.scope)}: give {', '.join(missing)} as query parameters "
            "(- for a request without a key, user or model)",
            param=missing[0],
            code="invalid_input",
        )
    values = {s: q[s] for s in needed}
    tenant = values.get("tenant", "-")
    spec = limit_spec(rule, scope_key(rule, values), tenant, 0)
    entry = state.registry.directory.tenants.get(tenant)
    store = state.limiter.store_for(tenant=spec.tenant, plan=entry.tenant.plan if entry is not None else None)
    st, used = await state.limiter.counter(spec, store=store)
    return json_response(
        {
            "rule": name,
            "type": rule.type,
            "scope": dict(spec.scope_key),
            "tenant": spec.tenant,
            "store": store,
            "unit": st.unit,
            "limit": st.limit,
            "remaining": max(st.remaining, 0),
            "used": used,  # real: past the limit when usage settled after admission overdrew it
            "overdraft": max(used - st.limit, 0),
            "reset_ms": st.reset_ms,
            "enabled": rule.enabled,
            "shadow": rule.shadow,
        }
    )


RULE_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/admin/namespaces", _list(NAMESPACE)),
    ("POST", "/admin/namespaces", _create(NAMESPACE)),
    ("GET", "/admin/namespaces/{name}", _get(NAMESPACE)),
    ("PUT", "/admin/namespaces/{name}", _replace(NAMESPACE)),
    ("DELETE", "/admin/namespaces/{name}", _delete(NAMESPACE)),
    ("GET", "/admin/rules", _list(RULE)),
    ("POST", "/admin/rules", _create(RULE)),
    ("GET", "/admin/rules/{name}", _get(RULE)),
    ("PUT", "/admin/rules/{name}", _replace(RULE)),
    ("PATCH", "/admin/rules/{name}", patch_rule),
    ("DELETE", "/admin/rules/{name}", _delete(RULE)),
    ("GET", "/admin/rules/{name}/counter", rule_counter),
)
