"""Admin routes for upstream resilience: the dead-letter log and the live state of every deployment."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field, JsonValue

from tollgate.admin.app_keys import STATE
from tollgate.admin.models import View
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation, query
from tollgate.admin.responses import json_response
from tollgate.errors import BadRequest

__all__ = ["RESILIENCE_ROUTES", "DeadLetters", "Resilience"]


class DeadLetter(View):
    """A request that failed after every retry and fallback: metadata only, never its body."""

    at: float = Field(description="epoch seconds")
    request_id: str
    tenant: str
    model: str | None
    endpoint: str
    stream: bool
    status: int
    code: str | None
    message: str
    attempts: list[dict[str, JsonValue]]


class DeadLetters(View):
    """Dead letters, oldest first."""

    object: Literal["list"] = "list"
    data: list[DeadLetter]


class Resilience(View):
    """Breakers, in-flight counts, latencies and the retry, fallback and shedding counters of this process."""

    deployments: list[dict[str, JsonValue]] = Field(description="each deployment's breaker, load and latency")
    requests: int
    attempts: int
    retries: int
    retry_budget_refused: int
    fallbacks: dict[str, int]
    queue_refused: int
    failed: int
    dead_letters: int
    shed: dict[str, int]
    inflight: int
    loop_lag: float
    proactive_fallbacks: dict[str, int]
    hotspots: dict[str, int] = Field(description='"tenant/model": how often it was flagged')


@operation(
    "requests that failed after every retry and fallback (metadata only), oldest first",
    tag="resilience",
    answers={200: DocumentedAnswer("dead letters", DeadLetters)},
    params=(query("limit", {"type": "integer", "minimum": 1}, "the newest this many"),),
    errors=(400,),
    role="viewer",
)
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


@operation(
    "breakers, in-flight counts, latencies and retry, fallback and shedding counters",
    tag="resilience",
    answers={200: DocumentedAnswer("the live state", Resilience)},
    role="viewer",
)
async def resilience_state(request: web.Request) -> web.Response:
    """Breakers, in-flight counts, latencies and the retry, fallback and shedding counters."""
    return json_response(request.app[STATE].resilience_snapshot())


RESILIENCE_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/admin/dead-letters", list_dead_letters),
    ("GET", "/admin/resilience", resilience_state),
)
