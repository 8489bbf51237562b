"""Admin routes for upstream resilience: the dead-letter log and the live state of every deployment."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from tollgate.edge.answers import json_response
from tollgate.errors import BadRequest
from tollgate.runtime.state import STATE

__all__ = ["RESILIENCE_ROUTES"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def list_dead_letters(request: web.Request) -> web.Response:
    """Requests that failed after every retry and fallback (metadata only, never bodies), oldest first."""
    raw = request.query.get("limit")
    limit = None
    if raw is not None:
        if not raw.isdigit() or int(raw) < 1:
            raise BadRequest("limit must be a positive integer", param="limit", code="invalid_input")
        limit = int(raw)
    records = request.app[STATE].dead_letter_records(limit)
    return json_response({"object": "list", "data": records})


async def resilience_state(request: web.Request) -> web.Response:
    """Breakers, in-flight counts, latencies and the retry, fallback and shedding counters."""
    return json_response(request.app[STATE].resilience_snapshot())


RESILIENCE_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("GET", "/admin/dead-letters", list_dead_letters),
    ("GET", "/admin/resilience", resilience_state),
)
