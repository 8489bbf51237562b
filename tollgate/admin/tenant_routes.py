"""Admin routes of tenants (CRUD, bulk, suspend/resume, delete with dry run), their API keys (create, list, revoke)
and the plans; each handler declares itself for the OpenAPI document."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field

from tollgate.admin.app_keys import STATE
from tollgate.admin.body import read_body, read_json
from tollgate.admin.models import Body, Problem, checked_later
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation, query
from tollgate.admin.records import body_schema
from tollgate.admin.responses import json_response
from tollgate.admin.roles import tenant_scope
from tollgate.admin.views import (
    BulkCreated,
    CreatedKey,
    CreatedTenant,
    DeleteReport,
    KeyList,
    KeyView,
    PlanList,
    TenantPage,
    TenantView,
)
from tollgate.config.model import Config
from tollgate.errors import BadRequest, StoreError
from tollgate.limiter.keys import tenant_key_pattern
from tollgate.registry.manage import Manager, key_view, tenant_view

__all__ = ["TENANT_ROUTES", "BulkTenants"]

log = logging.getLogger("tollgate.admin")

_TRUE = ("1", "true", "yes")
_TENANT = DocumentedAnswer("the tenant", TenantView)


def _manager(request: web.Request) -> Manager:
    state = request.app[STATE]
    return Manager(state.registry, state.config)


class BulkTenants(Body):
    """Up to 10,000 tenants to create in one call, all or none (each checked like a tenant of the config file)."""

    tenants: Annotated[object, checked_later(list[body_schema("tenant")])] = Field(
        json_schema_extra={"maxItems": 10_000}
    )


def _not_bulk(_problems: list[Problem]) -> BadRequest:
    return BadRequest('send {"tenants": [ ... ]}', code="invalid_input")


def _tenant_out(m: Manager, tenant_id: str) -> dict[str, Any]:
    return tenant_view(m.tenant(tenant_id), len(m.directory.keys_of(tenant_id)))


# -- tenants ----------------------------------------------------------------


@operation(
    "list tenants, ordered by id (a tenant_admin: its own)",
    tag="tenants",
    answers={200: DocumentedAnswer("a page of tenants", TenantPage)},
    params=(
        query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100}),
        query("after", {"type": "string"}, "the next_after of the previous page"),
        query("status", {"type": "string", "enum": ["active", "suspended"]}),
        query("plan", {"type": "string"}),
    ),
    errors=(400,),
    role="viewer",
    tenant_admin="list",
)
async def list_tenants(request: web.Request) -> web.Response:
    m = _manager(request)
    q = request.query
    try:
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be an integer", param="limit", code="invalid_input") from None
    if not 1 <= limit <= 10_000:
        raise BadRequest("limit must be between 1 and 10000", param="limit", code="invalid_input")
    after, status, plan = q.get("after", ""), q.get("status"), q.get("plan")
    scope = tenant_scope(request)  # a tenant_admin lists its own tenants only
    ids = sorted(t for t in m.directory.tenant_ids() if t > after and (scope is None or t in scope))
    out: list[dict[str, Any]] = []
    for tid in ids:
        entry = m.directory.tenants[tid]
        if (status and entry.tenant.status != status) or (plan and entry.tenant.plan != plan):
            continue
        out.append(tenant_view(entry, len(m.directory.keys_of(tid))))
        if len(out) == limit:
            break
    more = bool(out) and out[-1]["id"] != (ids[-1] if ids else None)
    return json_response(
        {"object": "list", "data": out, "has_more": more, "next_after": out[-1]["id"] if more else None}
    )


@operation(
    "create a tenant (and, optionally, its keys: shown once)",
    tag="tenants",
    answers={201: DocumentedAnswer("created", CreatedTenant)},
    body=body_schema("tenant"),
    errors=(400, 409, 503),
    role="operator",
)
async def create_tenant(request: web.Request) -> web.Response:
    m = _manager(request)
    tenants, keys = await m.create_tenants([await read_json(request)], single=True)
    body = _tenant_out(m, tenants[0].id)
    body["created_keys"] = [{**key_view(m.key(k.id)), "key": plain} for k, plain in keys]
    return json_response(body, status=201)


@operation(
    "create up to 10,000 tenants in one call, all or none",
    tag="tenants",
    answers={201: DocumentedAnswer("created", BulkCreated)},
    body=BulkTenants,
    errors=(400, 409, 503),
    role="operator",
)
async def bulk_create_tenants(request: web.Request) -> web.Response:
    m = _manager(request)
    bulk = await read_body(request, BulkTenants, _not_bulk)
    tenants, keys = await m.create_tenants(bulk.tenants)
    return json_response(
        {
            "created": len(tenants),
            "tenants": [t.id for t in tenants],
            "created_keys": [{"id": k.id, "tenant": k.tenant, "name": k.name, "key": plain} for k, plain in keys],
        },
        status=201,
    )


@operation("one tenant", tag="tenants", answers={200: _TENANT}, errors=(404,), role="viewer", tenant_admin="path")
async def get_tenant(request: web.Request) -> web.Response:
    return json_response(_tenant_out(_manager(request), request.match_info["tenant"]))


@operation(
    "change a tenant's fields (a config-declared tenant changed here is overridden by the registry from then on)",
    tag="tenants",
    answers={200: _TENANT},
    body=body_schema("tenant_patch"),
    errors=(400, 404, 503),
    role="operator",
)
async def update_tenant(request: web.Request) -> web.Response:
    m = _manager(request)
    tenant_id = request.match_info["tenant"]
    m.tenant(tenant_id)
    await m.update_tenant(tenant_id, await read_json(request))
    return json_response(_tenant_out(m, tenant_id))


@operation(
    "suspend: every request of the tenant gets 403",
    tag="tenants",
    answers={200: _TENANT},
    errors=(404, 503),
    role="operator",
)
async def suspend_tenant(request: web.Request) -> web.Response:
    m = _manager(request)
    entry = await m.set_status(request.match_info["tenant"], "suspended")
    return json_response(_tenant_out(m, entry.tenant.id))


@operation("resume a suspended tenant", tag="tenants", answers={200: _TENANT}, errors=(404, 503), role="operator")
async def resume_tenant(request: web.Request) -> web.Response:
    m = _manager(request)
    entry = await m.set_status(request.match_info["tenant"], "active")
    return json_response(_tenant_out(m, entry.tenant.id))


async def _store_keys(config: Config, tenant_id: str) -> dict[str, Any]:
    """Limiter counters and usage of a tenant: the store keys carrying its ``{tenant}`` hash tag."""
    store = config.store
    url = store.url if store.backend == "redis" else None
    if not url:
        return {"store": "embedded", "keys": [], "note": "in-process counters expire with their TTL"}
    import redis.asyncio as aioredis

    # Limiter counters carry the encoded {t.<tenant>} tag under the store's prefix; usage totals {tenant} under theirs.
    counter_pattern = tenant_key_pattern(tenant_id, store.key_prefix)
    usage_pattern = f"{config.accounting.usage.key_prefix}:{{{tenant_id}}}:*"
    client = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        counters = sorted([k.decode() async for k in client.scan_iter(match=counter_pattern, count=1000)])
        usage = sorted([k.decode() async for k in client.scan_iter(match=usage_pattern, count=1000)])
    except (aioredis.RedisError, OSError) as exc:
        raise StoreError(f"cannot list the tenant's counters: {exc}") from exc
    finally:
        await client.aclose()
    return {"store": "redis", "counters": counters, "usage": usage}


async def _drop_store_keys(config: Config, found: dict[str, Any]) -> None:
    names = found.get("counters", []) + found.get("usage", [])
    url = config.store.url
    if not names or not url:
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        for i in range(0, len(names), 500):
            await client.unlink(*names[i : i + 500])
    except (aioredis.RedisError, OSError) as exc:
        raise StoreError(f"cannot delete the tenant's counters: {exc}") from exc
    finally:
        await client.aclose()


@operation(
    "delete a tenant created through this API, its keys and its limiter counters; dry_run=true only reports",
    tag="tenants",
    answers={200: DocumentedAnswer("what went (or would go)", DeleteReport)},
    params=(query("dry_run", {"type": "boolean", "default": False}, "report what would go, remove nothing"),),
    errors=(400, 404, 503),
    role="operator",
)
async def delete_tenant(request: web.Request) -> web.Response:
    m = _manager(request)
    tenant_id = request.match_info["tenant"]
    dry_run = request.query.get("dry_run", "false").lower() in _TRUE
    plan = m.deletion_plan(tenant_id)
    found = await _store_keys(m.config, tenant_id)
    report = {"tenant": tenant_id, "dry_run": dry_run, "keys": plan["keys"], "store": found}
    if not dry_run:
        await m.delete_tenant(tenant_id)
        await _drop_store_keys(m.config, found)
        log.info("tenant %s deleted with %d keys", tenant_id, len(plan["keys"]))
    return json_response(report)


# -- keys -------------------------------------------------------------------


@operation(
    "the tenant's keys (never the keys themselves)",
    tag="keys",
    answers={200: DocumentedAnswer("keys", KeyList)},
    errors=(404,),
    role="viewer",
    tenant_admin="path",
)
async def list_keys(request: web.Request) -> web.Response:
    m = _manager(request)
    tenant_id = request.match_info["tenant"]
    m.tenant(tenant_id)
    return json_response({"object": "list", "data": [key_view(e) for e in m.directory.keys_of(tenant_id)]})


@operation(
    "create a key; the answer is the only time it is shown",
    tag="keys",
    answers={201: DocumentedAnswer("created", CreatedKey)},
    body=body_schema("key"),
    body_required=False,
    errors=(400, 404, 503),
    role="operator",
    tenant_admin="path",
)
async def create_key(request: web.Request) -> web.Response:
    m = _manager(request)
    tenant_id = request.match_info["tenant"]
    m.tenant(tenant_id)
    doc = await read_json(request, empty={})
    key, plaintext = await m.create_key(tenant_id, doc)
    log.info("API key %s created for tenant %s", key.id, tenant_id)
    return json_response({**key_view(m.key(key.id)), "key": plaintext}, status=201)


@operation(
    "one key",
    tag="keys",
    answers={200: DocumentedAnswer("the key", KeyView)},
    errors=(404,),
    role="viewer",
    tenant_admin="key",
)
async def get_key(request: web.Request) -> web.Response:
    return json_response(key_view(_manager(request).key(request.match_info["key"])))


@operation(
    "revoke a key on every gateway process (within registry.poll_interval)",
    tag="keys",
    answers={200: DocumentedAnswer("the revoked key", KeyView)},
    errors=(404, 503),
    role="operator",
    tenant_admin="key",
)
async def revoke_key(request: web.Request) -> web.Response:
    m = _manager(request)
    entry = await m.revoke_key(request.match_info["key"])
    log.info("API key %s of tenant %s revoked", entry.key.id, entry.key.tenant)
    return json_response(key_view(entry))


@operation(
    "list plans (from the config file)", tag="plans", answers={200: DocumentedAnswer("plans", PlanList)}, role="viewer"
)
async def list_plans(request: web.Request) -> web.Response:
    config = request.app[STATE].config
    return json_response({"object": "list", "data": [p.to_json() for p in config.plans.values()]})


TENANT_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/admin/plans", list_plans),
    ("GET", "/admin/tenants", list_tenants),
    ("POST", "/admin/tenants", create_tenant),
    ("POST", "/admin/tenants/bulk", bulk_create_tenants),
    ("GET", "/admin/tenants/{tenant}", get_tenant),
    ("PATCH", "/admin/tenants/{tenant}", update_tenant),
    ("DELETE", "/admin/tenants/{tenant}", delete_tenant),
    ("POST", "/admin/tenants/{tenant}/suspend", suspend_tenant),
    ("POST", "/admin/tenants/{tenant}/resume", resume_tenant),
    ("GET", "/admin/tenants/{tenant}/keys", list_keys),
    ("POST", "/admin/tenants/{tenant}/keys", create_key),
    ("GET", "/admin/keys/{key}", get_key),
    ("POST", "/admin/keys/{key}/revoke", revoke_key),
)
