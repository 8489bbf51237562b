"""Calendar quotas in UTC: month windows start on the 1st at 00:00 UTC, leap years included (embedded, manual clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tollgate.clock import ManualClock
from tollgate.limiter.store import EmbeddedEngine

from .scriptcalls import Lim, admit

UTC = UTC


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def next_month(dt: datetime) -> datetime:
    return (dt.replace(day=28) + timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 2, 29, 23, 59, 59, 999000, tzinfo=UTC),
        datetime(2024, 3, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2023, 12, 31, 23, 0, tzinfo=UTC),
        datetime(2100, 2, 28, 12, 0, tzinfo=UTC),
        datetime(2000, 2, 29, 1, 0, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
    ],
)
async def test_month_window_spans_the_calendar_month_in_utc(moment: datetime) -> None:
    clock = ManualClock(wall_ns=ms(moment) * 1_000_000)
    engine = EmbeddedEngine(clock)
    reply = await admit(engine, Lim("{t}:m", "fixed_window", 10, 0, param="month"))
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    assert reply[0].mark == ms(start)
    assert reply[0].reset_ms == ms(next_month(moment)) - ms(moment)


@pytest.mark.parametrize(("calendar", "unit_ms"), [("minute", 60_000), ("hour", 3_600_000), ("day", 86_400_000)])
async def test_minute_hour_and_day_windows_reset_at_their_utc_boundary(calendar: str, unit_ms: int) -> None:
    clock = ManualClock(wall_ns=(1_700_000_000_000 + 1234) * 1_000_000)
    engine = EmbeddedEngine(clock)
    lim = Lim("{t}:c", "fixed_window", 2, 0, param=calendar)
    first = await admit(engine, lim)
    await admit(engine, lim)
    refused = await admit(engine, lim)
    assert not refused.admitted and refused[0].retry_ms == first[0].reset_ms
    clock.advance(first[0].reset_ms / 1000)
    again = await admit(engine, lim)
    assert again.admitted and again[0].mark % unit_ms == 0 and again[0].remaining == 1


async def test_a_quota_key_expires_with_its_window() -> None:
    clock = ManualClock(wall_ns=ms(datetime(2024, 1, 31, 23, 0, tzinfo=UTC)) * 1_000_000)
    engine = EmbeddedEngine(clock)
    await admit(engine, Lim("{t}:q", "fixed_window", 10, 0, cost=3, param="month"))
    assert engine.keyspace.ttl_ms("{t}:q") == 3_600_001  # one extra ms, see ttl_ms() in lua/common.lua
    clock.advance(3600.001)
    await admit(engine, Lim("{t}:other", "fixed_window", 10, 0, cost=0, param="month"))
    assert engine.keyspace.keys() == []
