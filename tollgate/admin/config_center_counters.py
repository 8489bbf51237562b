"""The config-center API's counters (read, increment, reset; the writes audited like every admin write) and health."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tollgate.admin.app_keys import STATE
from tollgate.admin.body import read_json
from tollgate.admin.config_center_models import CenterCounter, CenterHealth, refused
from tollgate.admin.config_center_view import CenterView, adopt, invalid
from tollgate.admin.models import Body, Problem, parse
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, operation
from tollgate.admin.responses import json_response
from tollgate.config.rules import RuleSpec
from tollgate.errors import BadRequest, NotFound, StoreError
from tollgate.limiter.decision import Charge
from tollgate.limiter.spec import LimitSpec
from tollgate.policy.admission import limit_spec, scope_key
from tollgate.registry.config_center import NAMESPACE
from tollgate.runtime.state import GatewayState

__all__ = ["COUNTER_ROUTES", "CounterIncrement"]

_PROBE_TIMEOUT = 1.0
_TENANT_SCOPES = frozenset({"tenant", "key", "user"})


# -- counters ------------------------------------------------------------------------

_COUNTERS = "config center: counters"


class _Counted:
    """The limits a counter key names: the rule, its scope value, and a spec per native limit."""

    def __init__(self, request: web.Request) -> None:
        state = request.app[STATE]
        self.key = request.match_info["counter_key"]
        rule_part, _, value = self.key.partition(":")
        if not rule_part.isdigit():
            raise BadRequest(
                f"counter key {self.key!r}: give <rule id> or <rule id>:<scope value> (the namespace code for a "
                "namespace's rule)",
                param="counter_key",
                code="invalid_input",
            )
        self.rule_id = int(rule_part)
        view = CenterView(state)
        _rec, names, ns_id = view.rule(self.rule_id)
        in_force = {r.name: r for r in state.runtime.rules_config.rules}
        specs = [in_force[n] for n in names if n in in_force]
        if not specs:
            raise NotFound(f"rule {self.rule_id} is not in force on this process", code="rule_not_found")
        self.rule_type = specs[0].type
        if self.rule_type == "field_check":
            raise BadRequest(f"rule {self.rule_id} is a field_check: it keeps no counter", code="no_counter")
        code = view.records.live(NAMESPACE, ns_id) or {}
        self.namespace = str(code.get("code", ""))
        self.limits = [self._spec(state, rule, value) for rule in specs]

    def _spec(self, state: GatewayState, rule: RuleSpec, value: str) -> tuple[RuleSpec, LimitSpec, str]:
        needed = [s for s in rule.scope if s != "global"]
        if len(needed) > 1 or (needed and needed[0] in _TENANT_SCOPES and needed[0] != "tenant"):
            raise BadRequest(
                f"rule {self.rule_id} counts per {', '.join(rule.scope)}: read it with "
                f"GET /admin/rules/{rule.name}/counter",
                param="counter_key",
                code="invalid_input",
            )
        values: dict[str, str] = {}
        if needed:
            scope = needed[0]
            given = value or (self.namespace if scope == "namespace" else "")
            if not given:
                raise BadRequest(
                    f"rule {self.rule_id} counts per {scope}: give the counter key as {self.rule_id}:<{scope}>",
                    param="counter_key",
                    code="invalid_input",
                )
            values[scope] = given
        tenant = values.get("tenant", "-")
        spec = limit_spec(rule, scope_key(rule, values), tenant, 0)
        entry = state.registry.directory.tenants.get(tenant)
        store = state.limiter.store_for(tenant=spec.tenant, plan=entry.tenant.plan if entry is not None else None)
        return rule, spec, store

    @property
    def scope(self) -> dict[str, str]:
        return dict(self.limits[0][1].scope_key)


async def _counter_answer(state: GatewayState, counted: _Counted) -> dict[str, Any]:
    counters = []
    for rule, spec, store in counted.limits:
        st, used = await state.limiter.counter(spec, store=store)
        counters.append(
            {
                "rule": rule.name,
                "window": None if rule.type == "connection_limit" else rule.per,
                "unit": st.unit,
                "limit": st.limit,
                "used": used,
                "remaining": max(st.remaining, 0),
                "reset_ms": st.reset_ms,
            }
        )
    return {
        "counter_key": counted.key,
        "rule_id": counted.rule_id,
        "rule_type": counted.rule_type,
        "scope": counted.scope,
        "store": counted.limits[0][2],
        "counters": counters,
    }


@operation(
    "a rule's counters for one scope value (counter key <rule id>[:<scope value>]), read without consuming",
    tag=_COUNTERS,
    answers={200: DocumentedAnswer("the counters", CenterCounter)},
    errors=(400, 404, 503),
    role="viewer",
)
async def get_counter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await adopt(state)
    return json_response(await _counter_answer(state, _Counted(request)))


class CounterIncrement(Body):
    """How much to add to every limit of the rule (default 1); an empty body adds 1."""

    amount: int = 1


def _settled(reply_degraded: bool) -> None:
    if reply_degraded:
        raise StoreError("the limiter store did not answer; the change is applied when it answers again")


@operation(
    "add to a rule's counters (each of its windows), even past the limit; audited",
    tag=_COUNTERS,
    answers={200: DocumentedAnswer("the counters after", CenterCounter)},
    body=CounterIncrement,
    body_required=False,
    errors=(400, 404, 503),
    role="operator",
)
async def increment_counter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = parse(CounterIncrement, await read_json(request, empty={}), refused())
    if body.amount < 1:
        raise invalid([Problem("amount", "must be an integer >= 1")])
    await adopt(state)
    counted = _Counted(request)
    if counted.rule_type == "connection_limit":
        raise BadRequest(
            f"rule {counted.rule_id} is a connection_limit: it counts requests in flight, which only requests change",
            code="no_counter",
        )
    charges = [(Charge(store, state.limiter.key(spec), "", spec, 0), body.amount) for _r, spec, store in counted.limits]
    _settled((await state.limiter.adjust(charges)).degraded)
    return json_response(await _counter_answer(state, counted))


def _reset_marks(spec: LimitSpec, now_ms: int) -> list[int]:
    """Where a window keeps what it counted now: the sliding window's slots, the fixed window's start."""
    if spec.kind == "sliding_window":
        slot_ms = max(1, -(-spec.window_ms // spec.slots))
        return list(range((now_ms - spec.window_ms) // slot_ms - 1, now_ms // slot_ms + 2))
    if spec.kind == "fixed_window":
        if spec.calendar == "month":
            day = datetime.fromtimestamp(now_ms / 1000, UTC)
            return [int(datetime(day.year, day.month, 1, tzinfo=UTC).timestamp() * 1000)]
        length = {"hour": 3_600_000, "day": 86_400_000}.get(spec.calendar or "", spec.window_ms)
        return [now_ms // length * length]
    return [0]


@operation(
    "set a rule's counters (each of its windows) back to zero; audited",
    tag=_COUNTERS,
    answers={200: DocumentedAnswer("the counters after", CenterCounter)},
    errors=(400, 404, 503),
    role="operator",
)
async def reset_counter(request: web.Request) -> web.Response:
    state = request.app[STATE]
    await adopt(state)
    counted = _Counted(request)
    if counted.rule_type == "connection_limit":
        raise BadRequest(
            f"rule {counted.rule_id} is a connection_limit: its leases end with their requests", code="no_counter"
        )
    now_ms = int(time.time() * 1000)
    charges = []
    for _rule, spec, store in counted.limits:
        _st, used = await state.limiter.counter(spec, store=store)
        if used > 0:
            key = state.limiter.key(spec)
            charges += [(Charge(store, key, "", spec, mark), -used) for mark in _reset_marks(spec, now_ms)]
    if charges:
        _settled((await state.limiter.adjust(charges)).degraded)
    return json_response(await _counter_answer(state, counted))


# -- health --------------------------------------------------------------------------


async def _probe(probe: Any) -> str:
    try:
        await asyncio.wait_for(probe, _PROBE_TIMEOUT)
    except Exception:  # any failure of the probe is the store's status, not this route's
        return "unhealthy"
    return "healthy"


@operation(
    "each storage's status: the limiter's Redis stores, the database, the registry",
    tag="config center",
    answers={200: DocumentedAnswer("healthy, or degraded naming the storage that is not", CenterHealth)},
    role="viewer",
)
async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    redis = []
    for name in state.config.store.stores:
        try:
            engine = state.limiter.engine(name)
        except ValueError:  # added by a reload: in force after a restart
            continue
        if engine.remote:
            redis.append(_probe(engine.ping(_PROBE_TIMEOUT)))
    database = state.database
    asked = await asyncio.gather(*redis, _probe(database.fetchval("SELECT 1")) if database is not None else _none())
    storage = {
        "redis": ("healthy" if all(s == "healthy" for s in asked[:-1]) else "unhealthy") if redis else "embedded",
        "database": asked[-1],
        "registry": "unhealthy" if state.registry.problems() else "healthy",
    }
    status = "healthy" if all(s != "unhealthy" for s in storage.values()) else "degraded"
    return json_response({"status": status, "storage": storage})


async def _none() -> str:
    return "not_configured"


COUNTER_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/api/v1/counters/{counter_key}", get_counter),
    ("POST", "/api/v1/counters/{counter_key}/increment", increment_counter),
    ("POST", "/api/v1/counters/{counter_key}/reset", reset_counter),
    ("GET", "/api/v1/health", health),
)
