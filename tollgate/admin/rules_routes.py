"""Admin routes of namespaces and rules at runtime, validated by the config parser, and a rule's counter.

Documents have the shape of the config file's entries. A change is checked by
parsing the config's sections with it laid over them (problems name field
paths, e.g. ``rules.rpm.limit``), written to the registry, and put in force
on this process at once and on every other within ``registry.poll_interval``.
Each handler declares itself for the OpenAPI document (``@operation``).
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, JsonValue, RootModel

from tollgate.admin.app_keys import STATE
from tollgate.admin.body import read_body
from tollgate.admin.models import Body, Problem, Refusal
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation, query
from tollgate.admin.records import Record, body_schema
from tollgate.admin.responses import json_response
from tollgate.admin.views import (
    NamespaceDeleted,
    NamespaceList,
    NamespaceView,
    RuleCounter,
    RuleDeleted,
    RuleList,
    RuleView,
)
from tollgate.config.rules import RulesConfig
from tollgate.errors import BadRequest, Conflict, NotFound
from tollgate.policy.admission import limit_spec, scope_key
from tollgate.registry.config_center import NAMESPACE as CENTER_NAMESPACE
from tollgate.registry.config_center import CenterRecords
from tollgate.registry.rule_records import NAMESPACE, RULE, Entry, RuleBook, namespace_doc, record_name, rule_doc
from tollgate.registry.stores import RegistryConflict

__all__ = ["RULE_ROUTES", "EntryFields", "NamedEntry", "RuleChanges"]

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


def _not_the_config_centers(request: web.Request, kind: str, name: str) -> None:
    """Refuse a change of a namespace the config-center API (/api/v1) created.

    Its matchers are that API's records, each with an id; the native entry is
    derived from them, so a change made here would be undone by the next write
    there. Its rules stay editable here: the config-center API reads them back as
    they are enforced.
    """
    if kind != NAMESPACE:
        return
    records = CenterRecords.of(request.app[STATE].registry.rule_records)
    ident = records.index[CENTER_NAMESPACE].get(name)
    record = records.live(CENTER_NAMESPACE, ident) if ident is not None else None
    if record is None or record.get("adopted"):
        return
    raise Conflict(
        f"namespace {name!r} was created through the config-center API (id {ident}): change it there "
        f"(PUT or DELETE /api/v1/namespaces/{ident}; its matchers under /api/v1/namespaces/{ident}/matchers)",
        code="managed_by_config_center",
    )


def _invalid(problems: list[str]) -> BadRequest:
    return BadRequest(
        "invalid input: " + "; ".join(problems), param=problems[0].partition(":")[0], code="invalid_input"
    )


def _normalised(rules: RulesConfig, kind: str, name: str) -> dict[str, Any]:
    """The document as the parser understood it, every default spelled out: what the registry keeps."""
    if kind == NAMESPACE:
        return namespace_doc(next(ns for ns in rules.namespaces if ns.name == name))
    return rule_doc(next(r for r in rules.rules if r.name == name))


async def _write(request: web.Request, kind: str, name: str, doc: dict[str, Any], *, create: bool) -> Entry:
    """Check the merged sections with ``doc`` as ``kind:name``; write it; return the entry now in force."""
    what = _WHAT[kind]
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


# -- bodies: what the routes check themselves; the config parser checks the entry's fields -----------


class NamedEntry(Body):
    """A namespace or rule to create: its name beside the fields of its entry in the config file."""

    model_config = ConfigDict(extra="allow")

    name: Annotated[str, Field(min_length=1, strict=True)]


class EntryFields(RootModel[dict[str, JsonValue]]):
    """A namespace or rule, shaped like its entry in the config file."""


class RuleChanges(RootModel[Annotated[dict[str, JsonValue], Field(min_length=1)]]):
    """Some fields of a rule; null resets a field to its default."""


def _unnamed(kind: str) -> Refusal:
    what = _WHAT[kind]

    def refused(problems: list[Problem]) -> BadRequest:
        if problems[0].path != "name":
            return BadRequest(f"send the {what} as a JSON object with its name", code="invalid_input")
        return BadRequest(
            f"name is required: the {what}'s name, as the key it would have in the config file",
            param="name",
            code="invalid_input",
        )

    return refused


def _not_an_entry(kind: str) -> Refusal:
    message = f"send the {_WHAT[kind]} as a JSON object, shaped like its entry in the config file"
    return lambda _problems: BadRequest(message, code="invalid_input")


def _no_changes(_problems: list[Problem]) -> BadRequest:
    return BadRequest(
        'send a JSON object with the fields to change, e.g. {"enabled": false} or {"shadow": true}',
        code="invalid_input",
    )


class _Described(NamedTuple):
    """What the document says of one kind's routes."""

    view: type[BaseModel]
    listing: type[BaseModel]
    deleted: type[BaseModel]
    entry: Record
    named: Record


_DESCRIBED = {
    NAMESPACE: _Described(NamespaceView, NamespaceList, NamespaceDeleted, "namespace", "named_namespace"),
    RULE: _Described(RuleView, RuleList, RuleDeleted, "rule", "named_rule"),
}
_ERRORS_OF_WRITES = (400, 409, 503)


# -- handlers (one set per kind) ---------------------------------------------------


def _list(kind: str) -> AdminHandler:
    what, described = _WHAT[kind], _DESCRIBED[kind]

    @operation(
        f"{what}s in force (the file's and the runtime's), with their source",
        tag=f"{what}s",
        answers={200: DocumentedAnswer(f"{what}s", described.listing)},
        role="viewer",
    )
    async def handler(request: web.Request) -> web.Response:
        live = _in_force(request, kind)
        return json_response(
            {"object": "list", "data": [_view(e, e.name in live) for e in _book(request).entries(kind).values()]}
        )

    return handler


def _get(kind: str) -> AdminHandler:
    what, described = _WHAT[kind], _DESCRIBED[kind]

    @operation(
        f"one {what}",
        tag=f"{what}s",
        answers={200: DocumentedAnswer(f"the {what}", described.view)},
        errors=(404,),
        role="viewer",
    )
    async def handler(request: web.Request) -> web.Response:
        entry = _entry(_book(request), kind, request.match_info["name"])
        return json_response(_view(entry, entry.name in _in_force(request, kind)))

    return handler


def _create(kind: str) -> AdminHandler:
    what, described = _WHAT[kind], _DESCRIBED[kind]
    unnamed = _unnamed(kind)

    @operation(
        f"create a {what}",
        tag=f"{what}s",
        answers={201: DocumentedAnswer("created", described.view)},
        body=body_schema(described.named),
        errors=_ERRORS_OF_WRITES,
        role="operator",
    )
    async def handler(request: web.Request) -> web.Response:
        named = await read_body(request, NamedEntry, unnamed)
        doc = dict(named.model_extra or {})
        return json_response(_view(await _write(request, kind, named.name, doc, create=True)), status=201)

    return handler


def _replace(kind: str) -> AdminHandler:
    what, described = _WHAT[kind], _DESCRIBED[kind]
    not_an_entry = _not_an_entry(kind)

    @operation(
        f"create or replace a {what} (a declared one is overridden)",
        tag=f"{what}s",
        answers={
            200: DocumentedAnswer(f"the {what}", described.view),
            201: DocumentedAnswer("created", described.view),
        },
        body=body_schema(described.entry),
        errors=_ERRORS_OF_WRITES,
        role="operator",
    )
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        _not_the_config_centers(request, kind, name)
        existed = _book(request).entry(kind, name) is not None
        doc = (await read_body(request, EntryFields, not_an_entry)).root
        entry = await _write(request, kind, name, doc, create=False)
        return json_response(_view(entry), status=200 if existed else 201)

    return handler


@operation(
    "change some fields, e.g. enabled or shadow; null resets a field to its default",
    tag="rules",
    answers={200: DocumentedAnswer("the rule", RuleView)},
    body=RuleChanges,
    errors=(400, 404, 503),
    role="operator",
)
async def patch_rule(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    current = _entry(_book(request), RULE, name)
    patch = (await read_body(request, RuleChanges, _no_changes)).root
    doc = {k: v for k, v in {**current.doc, **patch}.items() if v is not None}
    return json_response(_view(await _write(request, RULE, name, doc, create=False)))


def _delete(kind: str) -> AdminHandler:
    what, described = _WHAT[kind], _DESCRIBED[kind]
    why = "while rules attach to it, or " if kind == NAMESPACE else ""

    @operation(
        f"delete a {what} created here (refused {why}when the file declares it: revert its runtime change then)",
        tag=f"{what}s",
        answers={200: DocumentedAnswer("deleted, or (revert) the file's version restored", described.deleted)},
        params=(query("revert", {"type": "boolean", "default": False}, "drop the runtime change of a declared entry"),),
        errors=(400, 404, 409, 503),
        role="operator",
    )
    async def handler(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        what = _WHAT[kind]
        book = _book(request)
        _entry(book, kind, name)
        _not_the_config_centers(request, kind, name)
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


@operation(
    "the rule's counter for one scope, read without consuming; give a value for each of the rule's scopes (- for none)",
    tag="rules",
    answers={200: DocumentedAnswer("the limit state", RuleCounter)},
    params=tuple(query(s, {"type": "string"}) for s in ("tenant", "key", "user", "ip", "namespace", "model")),
    errors=(400, 404, 503),
    role="viewer",
)
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


RULE_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
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
