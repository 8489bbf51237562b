"""The spend log's writer against a fake database: batches, the memory bound, the spill file, replay, counted drops.

The fake keeps rows by their key (ts_ms, request_id) the way the bulk insert's ``ON CONFLICT DO NOTHING`` does, and can
be told to be down.
The same behaviour on the real engines is in test_spend_gateway.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from tollgate.accounting.pricing import Pricing
from tollgate.accounting.records import fields_of
from tollgate.accounting.spend_log import DROP_LOG_INTERVAL, SpendLog, spend_row
from tollgate.config import config_from_dict
from tollgate.database.spend import SPEND_COLUMNS
from tollgate.errors import StoreUnavailable

WALL = 1_790_000_000.0
PRICING = Pricing(
    config_from_dict(
        {
            "upstreams": {"mock": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": {"gpt-4o": {"deployments": [{"upstream": "mock"}]}},
            "pricing": {"models": {"gpt-4o": {"input_per_1k": 2.5, "output_per_1k": 10.0}}},
        }
    ).accounting.pricing
)


class FakeDatabase:
    """Rows by key (a replayed row changes nothing); ``down`` makes every statement fail as unreachable."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self.rows: dict[str, tuple[Any, ...]] = {}
        self.order: list[str] = []
        self.keys: set[tuple[int, str]] = set()  # (ts_ms, request_id): the primary key
        self.statements = 0
        self.down = False
        self.fail_after: int | None = None  # statements that succeed before it goes down

    async def copy_records(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        assert table == "spend_log" and tuple(columns) == SPEND_COLUMNS
        if self.fail_after is not None:
            if self.fail_after == 0:
                self.down = True
            self.fail_after -= 1
        if self.down:
            raise StoreUnavailable("the fake database is down")
        self.statements += 1
        for row in rows:
            assert len(row) == len(SPEND_COLUMNS)
            if (row[1], row[0]) not in self.keys:
                self.keys.add((row[1], row[0]))
                self.rows[row[0]] = tuple(row)
                self.order.append(row[0])

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise AssertionError("not used")

    async def execute(self, sql: str, *args: Any) -> int:
        raise AssertionError("not used")

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        raise AssertionError("not used")


def fields(i: int, *, error: str | None = None, status: int = 200) -> tuple[Any, ...]:
    """Entry fields (records.fields_of order) of a request ``req_<i>``."""
    usage = SimpleNamespace(
        prompt_tokens=10, completion_tokens=i, reported=True, cached_tokens=2, cache_write_tokens=1, reasoning_tokens=3
    )
    rec = (
        f"req_{i:06d}",
        SimpleNamespace(kind="chat"),
        "gpt-4o",
        "gpt-4o-2024",
        "mock",
        status,
        error,
        True,
        False,
        "127.0.0.1",
        100.0,
        100.25,
        101.0,
        usage,
        40,
        SimpleNamespace(tenant="acme", key_id="acme-1", plan="open"),
        "alice",
        "ns1",
        100.1,
        2,
        101.5,
        WALL + i,
        SimpleNamespace(provider="azure", model="gpt-4o-dep"),
    )
    return fields_of(rec, PRICING)


def spend_log(
    db: FakeDatabase, tmp_path: Path | None, *, memory_rows: int = 10, spill_max_bytes: int = 1 << 20
) -> SpendLog:
    registry = CollectorRegistry()
    now = [WALL]
    log = SpendLog(
        db,
        memory_rows=memory_rows,
        spill_path=tmp_path / "spend.spill" if tmp_path is not None else None,
        spill_max_bytes=spill_max_bytes,
        dropped=Counter("tollgate_spend_rows_dropped", "dropped", (), registry=registry),
        clock=lambda: now[0],
    )
    log.registry = registry  # type: ignore[attr-defined]
    log.now = now  # type: ignore[attr-defined]
    return log


def dropped_metric(log: SpendLog) -> float | None:
    value: float | None = log.registry.get_sample_value("tollgate_spend_rows_dropped_total")  # type: ignore[attr-defined]
    return value


def test_a_row_carries_every_column_of_its_entry_and_a_budget_cut_sets_cut() -> None:
    row = dict(zip(SPEND_COLUMNS, spend_row(fields(7, error="token_budget_exceeded"), "USD"), strict=True))
    assert row == {
        "request_id": "req_000007",
        "ts_ms": int((WALL + 7) * 1000),
        "tenant": "acme",
        "key_id": "acme-1",
        "end_user": "alice",
        "namespace": "ns1",
        "endpoint": "chat",
        "model": "gpt-4o",
        "model_served": "gpt-4o-2024",
        "provider": "azure",
        "upstream": "mock",
        "deployment_model": "gpt-4o-dep",
        "prompt_tokens": 10,
        "completion_tokens": 7,
        "cached_tokens": 2,
        "cache_write_tokens": 1,
        "reasoning_tokens": 3,
        "usage_reported": 1,
        "cost_nanos": row["cost_nanos"],
        "currency": "USD",
        "status": 200,
        "error": "token_budget_exceeded",
        "total_ms": pytest.approx(1500.0),
        "ttfb_ms": pytest.approx(250.0),
        "stream": 1,
        "cut": 1,
        "attempts": 2,
        "cache_hit": 0,
    }
    assert row["cost_nanos"] > 0
    assert spend_row(fields(1, error="budget_exceeded"), "USD")[SPEND_COLUMNS.index("cut")] == 1
    assert spend_row(fields(1, error="upstream_idle_timeout"), "USD")[SPEND_COLUMNS.index("cut")] == 0


async def test_one_flush_is_one_insert_statement() -> None:
    db = FakeDatabase()
    log = spend_log(db, None, memory_rows=1000)
    log.add([fields(i) for i in range(300)], "USD")
    assert await log.write()
    assert db.statements == 1 and len(db.rows) == 300 and log.pending == 0


async def test_database_down_spills_past_memory_rows_and_replays_spill_then_memory_in_order(tmp_path: Path) -> None:
    db = FakeDatabase()
    db.down = True
    log = spend_log(db, tmp_path, memory_rows=10)
    for start in range(0, 35, 5):  # seven flushes of five rows while the database is down
        log.add([fields(i) for i in range(start, start + 5)], "USD")
        assert not await log.write()
        assert log.pending <= 10
    spill = tmp_path / "spend.spill"
    assert spill.exists() and log.spilled_bytes == spill.stat().st_size > 0
    assert len(spill.read_bytes().splitlines()) + log.pending == 35
    db.down = False
    assert await log.write()
    assert db.order == [f"req_{i:06d}" for i in range(35)]  # the spill's older rows first, then memory
    assert not spill.exists() and log.pending == 0 and log.dropped == 0


async def test_past_memory_and_spill_bounds_rows_are_dropped_counted_and_logged_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = FakeDatabase()
    db.down = True
    line = len(orjson.dumps(spend_row(fields(0), "USD"))) + 1
    log = spend_log(db, tmp_path, memory_rows=5, spill_max_bytes=line * 8)  # room for about eight rows
    with caplog.at_level(logging.ERROR, logger="tollgate.accounting.spend"):
        for start in range(0, 60, 6):
            log.add([fields(i) for i in range(start, start + 6)], "USD")
            await log.write()
    dropped_lines = [r for r in caplog.records if "rows dropped" in r.getMessage()]
    assert log.dropped > 0 and dropped_metric(log) == log.dropped
    assert len(dropped_lines) == 1  # one line within the interval, however many flushes dropped
    log.now[0] += DROP_LOG_INTERVAL  # type: ignore[attr-defined]
    log.add([fields(i) for i in range(60, 66)], "USD")
    with caplog.at_level(logging.ERROR, logger="tollgate.accounting.spend"):
        await log.write()
    assert len([r for r in caplog.records if "rows dropped" in r.getMessage()]) == 2
    db.down = False
    assert await log.write()
    assert len(db.rows) + log.dropped == 66  # every row is either written or counted as dropped
    assert not (tmp_path / "spend.spill").exists()


async def test_without_a_spill_file_memory_stays_at_memory_rows_and_the_rest_is_counted(tmp_path: Path) -> None:
    db = FakeDatabase()
    db.down = True
    log = spend_log(db, None, memory_rows=10)
    log.add([fields(i) for i in range(25)], "USD")
    await log.write()
    assert log.pending == 10 and log.dropped == 15 and dropped_metric(log) == 15


async def test_a_spill_file_left_by_an_earlier_run_is_replayed_at_start_without_duplicates(tmp_path: Path) -> None:
    db = FakeDatabase()
    db.down = True
    first = spend_log(db, tmp_path, memory_rows=4)
    first.add([fields(i) for i in range(20)], "USD")
    await first.write()
    await first.close(timeout=0.5)  # down at shutdown: memory goes to the spill file too
    assert (tmp_path / "spend.spill").exists() and first.dropped == 0
    db.down = False
    await db.copy_records("spend_log", SPEND_COLUMNS, [spend_row(fields(3), "USD")])  # already there
    second = spend_log(db, tmp_path, memory_rows=4)
    await second.start()
    second.add([fields(20)], "USD")
    for _ in range(200):
        if len(db.rows) == 21:
            break
        await asyncio.sleep(0.01)
    await second.close()
    assert sorted(db.rows) == [f"req_{i:06d}" for i in range(21)]
    assert not (tmp_path / "spend.spill").exists()


async def test_a_replay_broken_half_way_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tollgate.accounting import spend_log as module

    monkeypatch.setattr(module, "_CHUNK", 10)
    db = FakeDatabase()
    db.down = True
    log = spend_log(db, tmp_path, memory_rows=5)
    log.add([fields(i) for i in range(50)], "USD")
    await log.write()
    db.down, db.fail_after = False, 2  # two chunks of the replay get through, then the database goes again
    assert not await log.write()
    assert len(db.rows) == 20 and log.spilled_bytes > 0
    db.down, db.fail_after = False, None
    assert await log.write()
    assert sorted(db.rows) == [f"req_{i:06d}" for i in range(50)] and db.order == sorted(db.order)


async def test_the_writer_task_writes_what_the_flusher_hands_without_being_awaited() -> None:
    db = FakeDatabase()
    log = spend_log(db, None, memory_rows=100)
    await log.start()
    try:
        log.add([fields(i) for i in range(30)], "USD")  # returns at once: nothing awaited here
        for _ in range(200):
            if len(db.rows) == 30:
                break
            await asyncio.sleep(0.01)
        assert len(db.rows) == 30
    finally:
        await log.close()


async def test_processes_sharing_a_spill_path_each_claim_a_file_and_a_restart_replays_those_left(
    tmp_path: Path,
) -> None:
    db = FakeDatabase()
    db.down = True
    first, second = spend_log(db, tmp_path, memory_rows=2), spend_log(db, tmp_path, memory_rows=2)
    await first.start()
    await second.start()
    try:
        assert first.spill_path == tmp_path / "spend.spill"
        assert second.spill_path == tmp_path / "spend.spill.1"
        first.add([fields(i) for i in range(5)], "USD")
        second.add([fields(i) for i in range(5, 10)], "USD")
        await first.write()
        await second.write()
        assert first.spilled_bytes > 0 and second.spilled_bytes > 0
    finally:
        await first.close(timeout=0.2)
        await second.close(timeout=0.2)
    db.down = False
    third = spend_log(db, tmp_path, memory_rows=2)  # one process restarted: it replays both files
    await third.start()
    await third.close()
    assert sorted(db.rows) == [f"req_{i:06d}" for i in range(10)]
    assert not (tmp_path / "spend.spill").exists() and not (tmp_path / "spend.spill.1").exists()


async def test_a_full_spill_file_leaves_memory_rows_in_memory_and_a_stop_without_one_counts_the_rest(
    tmp_path: Path,
) -> None:
    db = FakeDatabase()
    db.down = True
    log = spend_log(db, tmp_path, memory_rows=10, spill_max_bytes=1)  # no room for one row
    log.add([fields(i) for i in range(25)], "USD")
    await log.write()
    assert log.pending == 10 and log.dropped == 15
    nowhere = spend_log(db, None, memory_rows=10)
    nowhere.add([fields(i) for i in range(5)], "USD")
    await nowhere.close(timeout=0.2)
    assert nowhere.dropped == 5 and dropped_metric(nowhere) == 5
