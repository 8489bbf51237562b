"""Admin routes of the response cache: its state in this process, and invalidation by tenant, model or all.

An invalidation takes effect at once in the process that answers it and, through the generations kept in Redis,
in every other gateway process within ``cache.generation_poll`` (tollgate/policy/response_cache.py). Like every
admin write it is audited (tollgate/admin/audit.py).
"""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from tollgate.admin.app_keys import STATE
from tollgate.admin.models import View
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation, query
from tollgate.admin.responses import json_response
from tollgate.errors import StoreError

__all__ = ["CACHE_ROUTES", "CacheInvalidated", "CacheState"]


class CacheState(View):
    """The response cache as this process holds it."""

    enabled: bool
    entries: int = Field(description="answers held in this process")
    bytes: int = Field(description="what they take, counted against cache.max_bytes")
    max_bytes: int
    shared_store: bool = Field(description="true: a second level in Redis, shared by every gateway process")
    generation_poll_s: float = Field(description="how long an invalidation takes at most to reach other processes")


class CacheInvalidated(View):
    """What was invalidated, and how far it has reached."""

    tenant: str | None
    model: str | None
    dropped_here: int = Field(description="entries this process dropped at once")
    other_processes_within_s: float | None = Field(
        description="every other process stops answering from them within this many seconds (null: no Redis, "
        "this process only)"
    )


@operation(
    "the response cache of this process: entries, bytes, whether Redis shares it",
    tag="cache",
    answers={200: DocumentedAnswer("the cache", CacheState)},
    role="viewer",
)
async def cache_state(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cache = state.response_cache
    config = state.config.cache
    return json_response(
        {
            "enabled": config.enabled,
            "entries": len(cache.local),
            "bytes": cache.local.size,
            "max_bytes": config.max_bytes,
            "shared_store": cache.redis is not None,
            "generation_poll_s": config.generation_poll,
        }
    )


@operation(
    "invalidate cached answers: of a tenant, of a model (the one requested), of both, or (neither given) all",
    tag="cache",
    answers={200: DocumentedAnswer("invalidated", CacheInvalidated)},
    params=(
        query("tenant", {"type": "string", "minLength": 1}, "the tenant whose answers go"),
        query("model", {"type": "string", "minLength": 1}, "the model whose answers go (as clients name it)"),
    ),
    errors=(503,),
    role="operator",
    tenant_admin="query",
)
async def invalidate_cache(request: web.Request) -> web.Response:
    state = request.app[STATE]
    cache = state.response_cache
    tenant = request.query.get("tenant") or None
    model = request.query.get("model") or None
    try:
        dropped = await cache.invalidate(tenant, model)
    except StoreError:
        raise
    except Exception as exc:  # Redis did not record it: other processes would keep serving the entries
        raise StoreError(
            f"the invalidation could not be recorded in Redis ({type(exc).__name__}); other gateway processes "
            "keep their entries until it is: try again",
            code="cache_invalidation_failed",
        ) from None
    return json_response(
        {
            "tenant": tenant,
            "model": model,
            "dropped_here": dropped,
            "other_processes_within_s": state.config.cache.generation_poll if cache.redis is not None else None,
        }
    )


CACHE_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/admin/cache", cache_state),
    ("DELETE", "/admin/cache", invalidate_cache),
)
