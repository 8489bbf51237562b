"""Tenant self-service on the public listener: a caller's own key, its tenant's usage and limits, its tenant's keys.

Routes (every answer is about the caller's own tenant, never another's):

* ``GET /v1/tollgate/key``: the calling key (id, name, tenant, plan, models it
  may use, expiry, created, admin flag) and each limit that applies to it with
  what is left now. A caller identified without a key (a JWT, a trusted
  claim) gets the same with ``id: null``.
* ``GET /v1/tollgate/usage?month=YYYY-MM``: the tenant's requests, tokens and
  cost in the month (default: this one, UTC), by model; what is left of each
  monthly quota and money budget in that month, and every limit's counter now.
* ``GET /v1/tollgate/keys``, ``POST /v1/tollgate/keys``,
  ``DELETE /v1/tollgate/keys/{key_id}``: the tenant's keys, for the tenant's
  admin key only (``admin: true`` on the key); any other caller, a JWT
  included, gets 403 ``admin_key_required``. A key id of another tenant is
  404 exactly as an unknown one. The admin key revokes itself only with
  ``?allow_self=true`` (create its successor first). Every write is audited
  (``tenant_key_change``, actor ``key:<acting key id>``) and goes through the
  registry, so every gateway process follows it within its poll interval.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

import orjson

from tollgate.accounting.aggregates import month_of, split_models, usage_amounts
from tollgate.accounting.alerts import quota_status
from tollgate.edge.answers import Response, error_answer, json_answer, request_id_from, status_for
from tollgate.edge.messages import Request
from tollgate.errors import BadRequest, Forbidden, GatewayError, MethodNotAllowed, NotFound, PayloadTooLarge
from tollgate.identity import Principal, authenticate_fresh, client_ip
from tollgate.identity.directory import KeyEntry
from tollgate.policy.remaining import CallerScope, remaining_limits
from tollgate.registry.manage import Manager
from tollgate.registry.tenant_keys import TenantKeys, tenant_key_view
from tollgate.runtime.state import GatewayState

__all__ = ["SELF_SERVICE_PREFIX", "self_service_answer"]

SELF_SERVICE_PREFIX = "/v1/tollgate/"
_KEY = SELF_SERVICE_PREFIX + "key"
_USAGE = SELF_SERVICE_PREFIX + "usage"
_KEYS = SELF_SERVICE_PREFIX + "keys"
_KEYS_PREFIX = _KEYS + "/"
_MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
_MAX_BODY = 16 * 1024
_TRUE = ("1", "true", "yes")


async def self_service_answer(request: Request, state: GatewayState) -> Response:
    """The answer to any request under ``/v1/tollgate/`` (404 for a path that is none of the routes)."""
    request_id = request_id_from(request.headers.get("x-request-id"))
    try:
        return await _route(request, state)
    except GatewayError as exc:
        return error_answer(exc, request_id)


def _method(request: Request, *allowed: str) -> None:
    method = request.method
    if method in allowed or (method == "HEAD" and "GET" in allowed):
        return
    raise MethodNotAllowed(f"{method} is not allowed on {request.path}; use {' or '.join(allowed)}", allowed=allowed)


async def _route(request: Request, state: GatewayState) -> Response:
    path = request.path
    if path == _KEY:
        _method(request, "GET")
        return await _key_info(request, state)
    if path == _USAGE:
        _method(request, "GET")
        return await _usage(request, state)
    if path == _KEYS:
        _method(request, "GET", "POST")
        if request.method == "POST":
            return await _create_key(request, state)
        return await _list_keys(request, state)
    if path.startswith(_KEYS_PREFIX) and len(path) > len(_KEYS_PREFIX) and "/" not in path[len(_KEYS_PREFIX) :]:
        _method(request, "DELETE")
        return await _revoke_key(request, state, unquote(path[len(_KEYS_PREFIX) :]))
    raise NotFound(f"unknown path {path}", code="unknown_url")


# -- reading ----------------------------------------------------------------------------


async def _principal(request: Request, state: GatewayState) -> Principal:
    return await authenticate_fresh(request, state.runtime.identity, state.registry.directory)


def _caller_scope(request: Request, state: GatewayState) -> CallerScope:
    runtime = state.runtime
    return CallerScope(
        namespace=runtime.namespaces.match(request.headers, None),
        ip=client_ip(request, runtime.identity.proxies),
    )


async def _limits(request: Request, state: GatewayState, principal: Principal) -> list[dict[str, Any]]:
    currency = state.accounting.pricing().currency
    return await remaining_limits(
        state.runtime.rules, state.limiter, principal, _caller_scope(request, state), currency
    )


async def _key_info(request: Request, state: GatewayState) -> Response:
    principal = await _principal(request, state)
    entry = state.registry.directory.key_ids.get(principal.key_id) if principal.key_id is not None else None
    key = entry.key if entry is not None else None
    body = {
        "object": "tollgate.key",
        "id": key.id if key is not None else None,
        "name": key.name if key is not None else None,
        "tenant": principal.tenant,
        "plan": principal.plan,
        "identified_by": principal.via,
        "user": principal.user,
        "admin": key.admin if key is not None else False,
        "created": key.created if key is not None else None,
        "expires": key.expires if key is not None else None,
        "models": [m for m in state.config.models if principal.may_use(m)],
        "limits": await _limits(request, state, principal),
    }
    return json_answer(body)


async def _usage(request: Request, state: GatewayState) -> Response:
    principal = await _principal(request, state)
    month = request.query.get("month") or month_of(state.clock.time())
    if not _MONTH.fullmatch(month):
        raise BadRequest("month must be a month as YYYY-MM", param="month", code="invalid_month")
    acc = state.accounting
    fields, _days = await acc.store.read(principal.tenant, month)
    totals, models = split_models(fields)
    quotas = []
    for status in quota_status(principal.tenant, principal, totals, acc.current.quotas):
        quota = status.to_json()
        quota["remaining"] = max(status.limit - status.used, 0)
        quotas.append(quota)
    body = {
        "object": "tollgate.usage",
        "tenant": principal.tenant,
        "period": month,
        "currency": acc.pricing().currency,
        **usage_amounts(totals),
        "errors": totals.get("errors", 0),
        "by_model": {m: usage_amounts(v) for m, v in sorted(models.items())},
        "quotas": quotas,
        "limits": await _limits(request, state, principal),
    }
    return json_answer(body)


# -- the tenant's keys (its admin key only) -----------------------------------------------


def _admin_key(principal: Principal, state: GatewayState) -> KeyEntry:
    """The calling key when it is its tenant's admin key; 403 for any other caller."""
    entry = state.registry.directory.key_ids.get(principal.key_id) if principal.key_id is not None else None
    if entry is None:
        raise Forbidden(
            f"managing keys needs the tenant's admin API key; this request is identified by {principal.via}",
            code="admin_key_required",
        )
    if not entry.key.admin:
        raise Forbidden(
            "managing keys needs the tenant's admin API key; this key is not one", code="admin_key_required"
        )
    return entry


def _tenant_keys(state: GatewayState, tenant: str) -> TenantKeys:
    return TenantKeys(Manager(state.registry, state.config, clock=state.clock.time), tenant)


async def _list_keys(request: Request, state: GatewayState) -> Response:
    principal = await _principal(request, state)
    _admin_key(principal, state)
    keys = _tenant_keys(state, principal.tenant)
    return json_answer({"object": "list", "data": [tenant_key_view(e) for e in keys.entries()]})


async def _read_json(request: Request) -> Any:
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise PayloadTooLarge(f"the body is over {_MAX_BODY} bytes", code="body_too_large")
    parts: list[bytes] = []
    size = 0
    while chunk := await request.content.read(_MAX_BODY + 1):
        size += len(chunk)
        if size > _MAX_BODY:
            raise PayloadTooLarge(f"the body is over {_MAX_BODY} bytes", code="body_too_large")
        parts.append(chunk)
    data = b"".join(parts)
    if not data.strip():
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not valid JSON", code="invalid_json") from None


def _audit(
    request: Request, state: GatewayState, acting: KeyEntry, target: str, status: int, after: Any = None
) -> None:
    state.accounting.audit.record(
        "tenant_key_change",
        actor=f"key:{acting.key.id}",
        tenant=acting.key.tenant,
        target=f"key:{target}",
        after=after,
        detail={
            "method": request.method,
            "route": request.path,
            "status": status,
            "client_ip": client_ip(request, state.runtime.identity.proxies),
        },
    )


async def _create_key(request: Request, state: GatewayState) -> Response:
    principal = await _principal(request, state)
    acting = _admin_key(principal, state)
    keys = _tenant_keys(state, principal.tenant)
    try:
        doc = await _read_json(request)
        key, plaintext = await keys.create(doc)
    except GatewayError as exc:
        _audit(request, state, acting, "new", status_for(exc))
        raise
    view = tenant_key_view(keys.find(key.id))
    _audit(request, state, acting, key.id, 201, after=view)
    return json_answer({**view, "key": plaintext}, status=201)


async def _revoke_key(request: Request, state: GatewayState, key_id: str) -> Response:
    principal = await _principal(request, state)
    acting = _admin_key(principal, state)
    keys = _tenant_keys(state, principal.tenant)
    allow_self = request.query.get("allow_self", "false").lower() in _TRUE
    try:
        entry = await keys.revoke(key_id, acting_key=acting.key.id, allow_self=allow_self)
    except GatewayError as exc:
        _audit(request, state, acting, key_id[:100], status_for(exc))
        raise
    view = tenant_key_view(entry)
    _audit(request, state, acting, key_id, 200, after=view)
    return json_answer(view)
