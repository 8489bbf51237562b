"""The admin API's OpenAPI 3.1 document, generated from the routes the application serves and their declarations."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from tollgate.admin.models import JsonSchema, component_schemas
from tollgate.admin.operations import ERRORS, PATH_PARAMS, AdminHandler, Operation, Param, operation_of
from tollgate.admin.views import Error

__all__ = ["openapi_document", "served_routes"]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_TITLE = "Tollgate admin API"
_ABOUT = (
    "Tenants, API keys, plans, namespaces and rules at runtime; usage, quotas, audit; the process's health and "
    "reload. Served only on the admin listener. Every route except the health probes and this document needs "
    "Authorization: Bearer <token>: a principal's token, or a JWT of the operator's OpenID Connect provider. Each "
    "operation names the least role that may call it (x-tollgate-role: viewer < operator < admin) and whether a "
    "tenant_admin may, for its own tenants (x-tollgate-tenant-admin: path, key, query, list, self; absent: never)."
)


def served_routes(router: web.UrlDispatcher) -> list[tuple[str, str, AdminHandler]]:
    """(method, path template, handler) of every route on ``router``; the HEAD twin of a GET route is left out."""
    routes: list[tuple[str, str, AdminHandler]] = []
    gets: set[str] = set()
    heads: list[tuple[str, AdminHandler]] = []
    for route in router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method == "HEAD":
            heads.append((path, route.handler))
            continue
        if route.method == "GET":
            gets.add(path)
        routes.append((route.method, path, route.handler))
    routes.extend(("HEAD", path, handler) for path, handler in heads if path not in gets)
    return routes


def openapi_document(routes: Iterable[tuple[str, str, AdminHandler]]) -> dict[str, Any]:
    """The document of ``routes``: (method, path template, handler), each handler declared with ``@operation``.

    A route without a declaration is a bug: :class:`LookupError`, rather than a document that leaves it out.
    """
    declared: list[tuple[str, str, Operation]] = []
    for method, path, handler in routes:
        op = operation_of(handler)
        if op is None:
            raise LookupError(f"{method} {path} has no @operation declaration: the OpenAPI document cannot describe it")
        declared.append((method, path, op))
    models: list[type[BaseModel]] = [Error]
    for _method, _path, op in declared:
        models.extend(a.model for a in op.answers.values() if a.model is not None)
        if op.body is not None:
            models.append(op.body)
    refs, schemas = component_schemas(models)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in declared:
        paths.setdefault(path, {})[method.lower()] = _operation(path, op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": _TITLE, "version": "1", "description": _ABOUT},
        "tags": [{"name": tag} for tag in sorted({op.tag for _m, _p, op in declared})],
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}}},
        "security": [{"adminToken": []}],
    }


def _operation(path: str, op: Operation, refs: dict[type[BaseModel], JsonSchema]) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "tags": [op.tag]}
    params = [_param(PATH_PARAMS[name]) for name in _PLACEHOLDER.findall(path)] + [_param(p) for p in op.params]
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": {"application/json": {"schema": refs[op.body]}}}
    responses: dict[str, Any] = {}
    for status, answer in sorted(op.answers.items()):
        schema = refs[answer.model] if answer.model is not None else {"type": "string"}
        responses[str(status)] = {"description": answer.description, "content": {answer.media_type: {"schema": schema}}}
    errors = sorted(set(op.errors) | (set() if op.open else {401, 403}))
    for status in errors:
        responses[str(status)] = {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": refs[Error]}},
        }
    out["responses"] = responses
    if op.open:
        out["security"] = []
    else:
        out["x-tollgate-role"] = op.role or "admin"
        if op.tenant_admin is not None:
            out["x-tollgate-tenant-admin"] = op.tenant_admin
        out["description"] = _who(op)
    return out


def _who(op: Operation) -> str:
    role = op.role or "admin"
    roles = {"viewer": "viewer, operator or admin", "operator": "operator or admin", "admin": "admin"}[role]
    how = {
        "path": "for a tenant of its own (the path's)",
        "key": "for a key of one of its tenants",
        "query": "with tenant= one of its own",
        "list": "seeing its own tenants only",
        "self": "about itself",
    }
    if op.tenant_admin is None:
        return f"Role: {roles}."
    return f"Role: {roles}; a tenant_admin {how[op.tenant_admin]}."


def _param(p: Param) -> dict[str, Any]:
    out: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.required or p.where == "path"}
    if p.description:
        out["description"] = p.description
    out["schema"] = p.schema
    return out
