"""What an admin route declares on its handler: who may call it (its role), and for the OpenAPI document its summary,
tag, parameters, body and answers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel

from tollgate.admin.models import JsonSchema
from tollgate.config.identity import KEY_ID, TENANT_ID
from tollgate.config.rules import NAME
from tollgate.config.scaling import POOL_NAME

__all__ = [
    "ERRORS",
    "PATH_PARAMS",
    "ROLE_RANK",
    "AdminHandler",
    "DocumentedAnswer",
    "Operation",
    "Param",
    "RouteRole",
    "TenantScope",
    "operation",
    "operation_of",
    "query",
]

AdminHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]
"""An admin route's handler."""

_H = TypeVar("_H", bound=AdminHandler)

RouteRole = Literal["viewer", "operator", "admin"]
"""The least role a route needs; each role may do what the ones before it may."""
ROLE_RANK: Mapping[str, int] = {"viewer": 0, "operator": 1, "admin": 2}

TenantScope = Literal["path", "key", "query", "list", "self"]
"""How a ``tenant_admin`` may use a route: ``path``, the tenant in the path is one of its tenants; ``key``, the key in
the path belongs to one of them; ``query``, the ``tenant`` query parameter (then required) names one of them;
``list``, the answer is filtered to its tenants; ``self``, the route is about the caller. No scope: refused (403)."""
_ATTRIBUTE = "admin_operation"


@dataclass(frozen=True, slots=True)
class Param:
    """A path or query parameter."""

    name: str
    where: Literal["path", "query"]
    schema: JsonSchema
    description: str = ""
    required: bool = False


def query(name: str, schema: JsonSchema, description: str = "") -> Param:
    return Param(name, "query", schema, description)


@dataclass(frozen=True, slots=True)
class DocumentedAnswer:
    """One answer of a route: a description, and the model of its JSON body (or the media type of another body)."""

    description: str
    model: type[BaseModel] | None = None
    media_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class Operation:
    """One route's declaration. ``role`` is the least role that may call it and ``tenant_admin`` how a tenant_admin
    may (:data:`TenantScope`; None: not at all); ``open`` routes need no credential. ``body`` is the model whose
    schema describes the request body. ``errors`` are the statuses of the gateway's error answer the route gives
    (401 and 403 are implied unless the route is open)."""

    summary: str
    tag: str
    answers: Mapping[int, DocumentedAnswer]
    params: tuple[Param, ...] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    errors: tuple[int, ...] = ()
    open: bool = False
    role: RouteRole | None = None
    tenant_admin: TenantScope | None = None


def operation(
    summary: str,
    *,
    tag: str,
    answers: Mapping[int, DocumentedAnswer],
    params: tuple[Param, ...] = (),
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    errors: tuple[int, ...] = (),
    open: bool = False,
    role: RouteRole | None = None,
    tenant_admin: TenantScope | None = None,
) -> Callable[[_H], _H]:
    """Declare who may call the decorated handler and what it does; the handler itself is unchanged.

        @operation(
            "one tenant", tag="tenants", role="viewer", tenant_admin="path",
            answers={200: DocumentedAnswer("the tenant", TenantView)}, errors=(404,),
        )
        async def get_tenant(request: web.Request) -> web.Response: ...

    Every route but an ``open`` one names its ``role``: the admin application's middleware enforces it, and a route
    without one is served to the ``admin`` role only. Path parameters are known by name (:data:`PATH_PARAMS`): a
    route declares only its query parameters.
    """
    declared = Operation(summary, tag, answers, params, body, body_required, errors, open, role, tenant_admin)

    def declare(handler: _H) -> _H:
        vars(handler)[_ATTRIBUTE] = declared
        return handler

    return declare


def operation_of(handler: Callable[..., object]) -> Operation | None:
    """The declaration on ``handler``, if it has one."""
    declared = getattr(handler, _ATTRIBUTE, None)
    return declared if isinstance(declared, Operation) else None


def _pattern(regex: str) -> JsonSchema:
    return {"type": "string", "pattern": f"^{regex}$"}


PATH_PARAMS: Mapping[str, Param] = {
    "tenant": Param("tenant", "path", _pattern(TENANT_ID.pattern), "the tenant's id", required=True),
    "key": Param("key", "path", _pattern(KEY_ID.pattern), "the API key's id (never the key itself)", required=True),
    "name": Param("name", "path", _pattern(NAME), "the namespace's or rule's name", required=True),
    "pool": Param("pool", "path", _pattern(POOL_NAME), "the scaling pool's name", required=True),
    "namespace_id": Param("namespace_id", "path", _pattern("[0-9]+"), "the namespace's id (/api/v1)", required=True),
    "matcher_id": Param("matcher_id", "path", _pattern("[0-9]+"), "the matcher's id (/api/v1)", required=True),
    "rule_id": Param("rule_id", "path", _pattern("[0-9]+"), "the rule's id (/api/v1)", required=True),
    "counter_key": Param(
        "counter_key",
        "path",
        _pattern("[0-9]+(:.+)?"),
        "<rule id>, or <rule id>:<scope value> (the namespace's code for a namespace's rule)",
        required=True,
    ),
}
"""Every path parameter of the admin routes, by name."""

ERRORS: Mapping[int, str] = {
    400: "invalid input: the message names every problem, with its field path",
    401: "no admin credential configured, or a missing, wrong or expired admin token",
    403: "the caller's role may not use this route (a tenant_admin: not for this tenant)",
    404: "no such tenant, key, namespace, matcher, rule or scaling pool",
    409: "a create named a tenant, key, namespace or rule that already exists",
    503: "the store or the registry did not answer",
}
"""What each error status of the admin API means; the body is always the gateway's error."""
