"""Admin routes: tenants (CRUD, bulk, suspend/resume, delete with dry run), keys (create, list, revoke), plans;
namespaces and rules (``rules_routes``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from tollgate.admin.resilience_routes import RESILIENCE_ROUTES
from tollgate.admin.rules_routes import RULE_ROUTES
from tollgate.config.model import Config
from tollgate.edge.answers import json_response
from tollgate.errors import BadRequest, StoreError
from tollgate.limiter.keys import tenant_key_pattern
from tollgate.registry.manage import Manager, key_view, tenant_view
from tollgate.runtime.state import STATE

__all__ = ["ROUTES"]

log = logging.getLogger("tollgate.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_TRUE = ("1", "true", "yes")


def _manager(request: web.Request) -> Manager:
    state = request.app[STATE]
    return Manager(state.registry, state.config)


async def _body(request: web.Request, *, empty: Any = None) -> Any:
    raw = await request.read()
    if not raw and empty is not None:
        return empty
    if not raw:
        raise BadRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}", code="invalid_json") from None


def _tenant_out(m: Manager, tenant_id: str) -> dict[str, Any]:
    return tenant_view(m.tenant(tenant_id), len(m.directory.keys_of(tenant_id)))


# -- tenants ----------------------------------------------------------------


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
    ids = sorted(t for t in m.directory.tenant_ids() if t > after)
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


async def create_tenant(request: web.Request) -> web.Response:
    m = _manager(request)
    tenants, keys = await m.create_tenants([await _body(request)], single=True)
    body = _tenant_out(m, tenants[0].id)
    body["created_keys"] = [{**key_view(m.key(k.id)), "key": plain} for k, plain in keys]
    return json_response(body, status=201)


async def bulk_create_tenants(request: web.Request) -> web.Response:
    m = _manager(request)
    doc = await _body(request)
    if not isinstance(doc, dict) or set(doc) != {"tenants"}:
        raise BadRequest('send {"tenants": [ ... ]}', code="invalid_input")
    tenants, keys = await m.create_tenants(doc["tenants"])
    return json_response(
        {
            "created": len(tenants),
            "tenants": [t.id for t in tenants],
            "created_keys": [{"id": k.id, "tenant": k.tenant, "name": k.name, "key": plain} for k, plain in keys],
        },
        status=201,
    )


async def get_tenant(request: web.Request) -> web.Response:
    return json_response(_tenant_out(_manager(request), request.match_info["tenant"]))


async def update_tenant(request: web.Request) -> web.Response:
    m = _manager(request)
    tenant_id = request.match_info["tenant"]
    m.tenant(tenant_id)
    await m.update_tenant(tenant_id, await _body(request))
    return json_response(_tenant_out(m, tenant_id))


async def suspend_tenant(request: web.Request) -> web.Response:
    m = _manager(request)
    entry = await m.set_status(request.match_info["tenant"], "suspended")
    return json_response(_tenant_out(m, entry.tenant.id))


async def resume_tenant(request: web.Request) -> web.Response:
    m = _manager(request)
    entry = await m.set_status(request.match_info["tenant"], "active")
    return json_response(_tenant_out(m, entry.tenant.id))


async def _store_keys(config: Config, tenant_id: str) -> dict[str, Any]:
    """Limiter counters and usage of a tenant: the store keys carrying its ``{tenant}`` hash tag."""
    store = config.store
    if getattr(store, "backend", None) != "redis" or not getattr(store, "url", None):
        return {"store": "embedded", "keys": [], "note": "in-process counters expire with their TTL"}
    import redis.asyncio as aioredis

    # Limiter counters carry the encoded {t.<tenant>} tag under the store's prefix; usage totals {tenant} under theirs.
    counter_pattern = tenant_key_pattern(tenant_id, store.key_prefix)
    usage_pattern = f"{config.accounting.usage.key_prefix}:{{{tenant_id}}}:*"
    client = aioredis.from_url(store.url, socket_timeout=2.0, socket_connect_timeout=2.0)
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
    if not names:
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url(config.store.url, socket_timeout=2.0, socket_connect_timeout=2.0)  # type: ignore[arg-type]
    try:
        for i in range(0, len(names), 500):
            await client.unlink(*names[i : i + 500])
    except (aioredis.RedisError, OSError) as exc:
        raise StoreError(f"cannot delete the tenant's counters: {exc}") from exc
    finally:
        await client.aclose()


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


async def list_keys(request: web.Request) -> web.Response:
    m = _manager(request)
    tenant_id = request.match_info["tenant"]
    m.tenant(tenant_id)
    return json_response({"object": "list", "data": [key_view(e) for e in m.directory.keys_of(tenant_id)]})


async def create_key(request: web.Request) -> web.Response:
    m = _manager(request)
    tenant_id = request.match_info["tenant"]
    m.tenant(tenant_id)
    doc = await _body(request, empty={})
    key, plaintext = await m.create_key(tenant_id, doc)
    log.info("API key %s created for tenant %s", key.id, tenant_id)
    return json_response({**key_view(m.key(key.id)), "key": plaintext}, status=201)


async def get_key(request: web.Request) -> web.Response:
    return json_response(key_view(_manager(request).key(request.match_info["key"])))


async def revoke_key(request: web.Request) -> web.Response:
    m = _manager(request)
    entry = await m.revoke_key(request.match_info["key"])
    log.info("API key %s of tenant %s revoked", entry.key.id, entry.key.tenant)
    return json_response(key_view(entry))


async def list_plans(request: web.Request) -> web.Response:
    config = request.app[STATE].config
    return json_response({"object": "list", "data": [p.to_json() for p in config.plans.values()]})


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    (
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
    + RULE_ROUTES
    + RESILIENCE_ROUTES
)
