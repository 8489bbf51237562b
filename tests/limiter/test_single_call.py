"""A request whose limits go in one admit.lua call is read straight from the reply, as the general path reads it."""

from __future__ import annotations

import operator

import pytest

from tollgate.limiter import Consumed, Lease, LimitSpec, Reservation, build_limiter
from tollgate.limiter.keys import KeyBuilder
from tollgate.limiter.script_args import ADMIT_STRIDE
from tollgate.limiter.slot_groups import alone, group_outcome, layout_of, retry_after


def _spec(name: str, kind: str, **kw: object) -> LimitSpec:
    return LimitSpec(name=name, kind=kind, tenant="t", scope_key=(("tenant", "t"),), **kw)  # type: ignore[arg-type]


SPECS = (
    _spec("rpm", "sliding_window", limit=100, window_ms=60_000),
    _spec("tpm", "sliding_window", limit=10_000, window_ms=60_000, cost=80, unit="tokens"),
    _spec("inflight", "concurrency", limit=10),
    _spec("free", "concurrency", limit=10, cost=0),  # costs nothing: nothing to release
    _spec("watch", "fixed_window", limit=5, window_ms=60_000, calendar="minute", shadow=True),
    _spec("budget", "fixed_window", limit=10**9, calendar="month", cost=0, unit="nanos"),
)


def _reply(admitted: bool) -> list[int]:
    """An admit.lua reply for SPECS: per limit allowed, remaining, reset, retry-after, mark (made-up values)."""
    reply = [1 if admitted else 0, 1_700_000_000_000_000]
    for n, spec in enumerate(SPECS):
        allowed = admitted or n != 1  # refused: by tpm
        reply += [1 if allowed else 0, spec.limit - 7 * n, 1000 + n, 0 if allowed else 1500, 40 + n]
    assert len(reply) == 2 + ADMIT_STRIDE * len(SPECS)
    return reply


@pytest.mark.parametrize("as_tuple", [False, True], ids=["list", "tuple"])
@pytest.mark.parametrize("admitted", [True, False])
def test_one_call_reads_the_same_decision_as_the_general_assembly_of_outcomes(admitted: bool, as_tuple: bool) -> None:
    layout = layout_of(SPECS, False, KeyBuilder())
    assert len(layout.groups) == 1
    group = layout.groups[0]
    reply = _reply(admitted)

    # The engines reply with a list, read as it is; any other sequence is read the same.
    decision = alone("main", group, tuple(reply) if as_tuple else reply, "lease-1")
    assert all(type(st.allowed) is bool for st in decision.limits)

    outcome = group_outcome("main", group.items, reply, "lease-1", True)
    states = tuple(st for _, st in sorted(outcome.states, key=operator.itemgetter(0)))
    assert decision.allowed is admitted is outcome.allowed
    assert decision.limits == states
    assert not decision.degraded and not decision.cached
    if not admitted:
        assert decision.retry_after_ms == retry_after(states) == 1500
        assert decision.reservation is None and decision.lease is None
        return
    assert decision.retry_after_ms == 0
    reserved = tuple(c for c in outcome.charges if c.spec.reserves)
    leased = tuple(c for c in outcome.charges if c.spec.kind == "concurrency")
    assert isinstance(decision.reservation, Reservation) and decision.reservation.charges == reserved
    assert [c.spec.name for c in reserved] == ["tpm"]
    assert isinstance(decision.lease, Lease) and decision.lease.charges == leased
    assert [c.spec.name for c in leased] == ["inflight"]  # "free" cost nothing
    assert decision.lease.ttl_ms == 60_000 and not decision.lease.released
    assert [c.mark for c in reserved + leased] == [41, 42]


async def test_a_request_admitted_in_one_call_settles_and_releases_what_it_took() -> None:
    limiter = build_limiter()
    decision = await limiter.admit(SPECS[:3])
    assert decision.allowed and decision.reservation is not None and decision.lease is not None
    [(settled, released)] = await limiter.finish_many(
        [(decision.reservation, Consumed.of_usage(20, 10), decision.lease)]
    )
    assert released and settled is not None
    assert [(s.name, s.applied) for s in settled.limits] == [("tpm", -50)]
    assert (await limiter.peek(SPECS[1].with_cost(0))).remaining == 10_000 - 30
    assert (await limiter.peek(SPECS[2].with_cost(0))).remaining == 10  # the lease is back
    await limiter.close()


async def test_settling_reads_each_charge_against_its_own_limit_when_a_key_changes_limit() -> None:
    """A reload that changes a limit keeps its key: each settlement still sends the limit its admission used."""
    limiter = build_limiter()
    small = _spec("tpd", "fixed_window", limit=1_000, calendar="day", cost=100, unit="tokens")
    large = _spec("tpd", "fixed_window", limit=5_000, calendar="day", cost=100, unit="tokens")
    first = await limiter.admit([small])
    second = await limiter.admit([large])
    assert first.reservation is not None and second.reservation is not None
    assert limiter.key(small) == limiter.key(large)
    results = await limiter.finish_many([(first.reservation, 40, None), (second.reservation, 40, None)])
    remaining = [s.limits[0].remaining for s, _ in results if s is not None]
    assert remaining == [1_000 - 140, 5_000 - 80]  # the same count (140, then 80), each against its own limit
    await limiter.close()
