"""Admin routes of the autoscaling advisor: each pool's state, and a pool's decisions newest first."""

from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import Field, JsonValue

from tollgate.admin.app_keys import STATE
from tollgate.admin.models import View
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation, query
from tollgate.admin.responses import json_response
from tollgate.errors import BadRequest, NotFound

__all__ = ["SCALING_ROUTES", "ScalingHistory", "ScalingState"]

_MAX_LIMIT = 1000


class PoolState(View):
    """One pool as this process knows it (the deciding process knows the current decision)."""

    pool: str
    model: str
    tenant: str | None
    plan: str | None
    min_replicas: int
    max_replicas: int
    replicas: int | None = Field(description="the replicas the leader last set (null: no decision yet here)")
    desired: int | None
    cooldown_up_left: float = Field(description="seconds before another scale-up may happen")
    cooldown_down_left: float = Field(description="seconds before a scale-down may happen")
    last_decision: dict[str, JsonValue] | None
    actuator: str


class ScalingState(View):
    """The scaler of the process that answers."""

    process: str
    leader: bool = Field(description="whether this process decides for the fleet now")
    interval: float
    pools: list[PoolState]


class ScalingHistory(View):
    """A pool's decisions, newest first."""

    object: Literal["list"] = "list"
    data: list[dict[str, JsonValue]]
    has_more: bool
    next_cursor: int | None = Field(description="pass as cursor for the next (older) page")


@operation(
    "each scaling pool's replicas, desired replicas, last decision and cooldowns, and whether this process decides",
    tag="scaling",
    answers={200: DocumentedAnswer("the scaler's state", ScalingState)},
    role="viewer",
)
async def scaling_state(request: web.Request) -> web.Response:
    return json_response(request.app[STATE].scaler.snapshot())


def _positive(request: web.Request, name: str, default: int | None) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest(f"{name} must be a positive integer", param=name, code="invalid_input")
    return int(raw)


@operation(
    "a scaling pool's decisions (from, to, reason, signals, blocked and why), newest first",
    tag="scaling",
    answers={200: DocumentedAnswer("a page of decisions", ScalingHistory)},
    role="viewer",
    params=(
        query("limit", {"type": "integer", "minimum": 1, "maximum": _MAX_LIMIT}, "at most this many (default 100)"),
        query("cursor", {"type": "integer", "minimum": 1}, "the next_cursor of the previous page"),
    ),
    errors=(400, 404, 503),
)
async def scaling_history(request: web.Request) -> web.Response:
    state = request.app[STATE]
    pool = request.match_info["pool"]
    if pool not in state.config.scaling.pools:
        raise NotFound(f"no scaling pool {pool!r}", code="unknown_pool")
    limit = min(_positive(request, "limit", 100) or 100, _MAX_LIMIT)
    cursor = _positive(request, "cursor", None)
    rows = await state.scaler.history.page(pool, limit + 1, cursor)
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response(
        {"object": "list", "data": rows, "has_more": more, "next_cursor": rows[-1]["id"] if more else None}
    )


SCALING_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/admin/scaling", scaling_state),
    ("GET", "/admin/scaling/{pool}/history", scaling_history),
)
