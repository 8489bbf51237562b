"""End-user usage in every usage store (the database ones too): the same figures, and the same cap on how many end users a tenant's month keeps apart."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tollgate.accounting.aggregates import OTHER_USERS, Batch, month_of
from tollgate.accounting.db_usage_store import DatabaseUsageStore
from tollgate.accounting.usage_store import FileUsageStore, MemoryUsageStore, RedisUsageStore, UsageStore
from tollgate.database import migrate, open_database

from ..support.redis import RedisServer

DAY = 86400.0
WALL = time.time()
MONTH = month_of(WALL)
CAP = 3


def _batch(*users: str, tenant: str = "acme") -> Batch:
    """One request of each end user: 10 prompt and 2 completion tokens, 5 nanos; an end user named ``err-*`` failed."""
    batch = Batch()
    for user in users:
        batch.add_counts(tenant, WALL, "m", 1, 0, 10, 2, 5, estimated=False)
        batch.add_user(tenant, WALL, user, (1, 1 if user.startswith("err-") else 0, 10, 2, 5))
    return batch


def _fields(requests: int, errors: int = 0) -> dict[str, int]:
    return {
        "requests": requests,
        "errors": errors,
        "prompt_tokens": 10 * requests,
        "completion_tokens": 2 * requests,
        "cost_n": 5 * requests,
    }


@pytest.fixture(
    params=[
        "memory",
        "file",
        pytest.param("redis", marks=pytest.mark.process),
        pytest.param("redis-two-processes", marks=pytest.mark.process),
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.process),
    ]
)
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[int], UsageStore]]:
    """``stores(i)``: the store the i-th batch is written through (two processes alternate on one Redis; the
    database ones alternate two connections to one database)."""
    ttls = (40 * DAY, 400 * DAY)
    if request.param == "memory":
        memory = MemoryUsageStore(*ttls, max_end_users=CAP)
        yield lambda i: memory
    elif request.param in ("sqlite", "postgresql"):
        url = (
            f"sqlite:///{tmp_path / 'usage.db'}"
            if request.param == "sqlite"
            else request.getfixturevalue("postgres_url")
        )
        dbs = [open_database(url), open_database(url)]
        for db in dbs:
            await db.open()
        await migrate(dbs[0])
        made_db = [DatabaseUsageStore(db, max_end_users=CAP) for db in dbs]
        yield lambda i: made_db[i % 2]
        for db in dbs:
            await db.close()
    elif request.param == "file":
        path = tmp_path / "usage.json"
        yield lambda i: FileUsageStore(path, *ttls, max_end_users=CAP)
    else:
        redis: RedisServer = request.getfixturevalue("redis")
        client = Redis.from_url(redis.url)
        prefix = f"eu{time.monotonic_ns()}"
        count = 2 if request.param == "redis-two-processes" else 1
        made = [RedisUsageStore(client, prefix, *ttls, max_end_users=CAP) for _ in range(count)]
        yield lambda i: made[i % count]
        await client.aclose()


async def test_end_users_past_the_cap_are_added_up_as_other_and_kept_ones_keep_counting(
    stores: Callable[[int], UsageStore],
) -> None:
    batches = [
        _batch("ann", "bo"),
        _batch("cy", "dee", "ann"),  # cy is the third: kept; dee is past the cap
        _batch("err-eve", "bo", "cy"),  # eve past the cap, bo and cy kept
        _batch("fay", "ann", tenant="other-tenant"),  # another tenant has a cap of its own
    ]
    for i, batch in enumerate(batches):
        await stores(i).apply(batch)
    store = stores(0)
    users = await store.users("acme", MONTH)
    assert users == {"ann": _fields(2), "bo": _fields(2), "cy": _fields(2), OTHER_USERS: _fields(2, errors=1)}
    assert await store.users("other-tenant", MONTH) == {"fay": _fields(1), "ann": _fields(1)}
    assert await store.users("acme", MONTH, "bo") == {"bo": _fields(2)}
    assert await store.users("acme", MONTH, "dee") == {}
    assert await store.users("nobody", MONTH) == {}
    totals, _days = await store.read("acme", MONTH)
    assert totals["requests"] == sum(f["requests"] for f in users.values())


async def test_no_end_user_is_kept_with_a_cap_of_zero(tmp_path: Path) -> None:
    store = FileUsageStore(tmp_path / "usage.json", 40 * DAY, 400 * DAY, max_end_users=0)
    await store.apply(_batch("ann"))
    assert await store.users("acme", MONTH) == {}
    assert (await store.read("acme", MONTH))[0]["requests"] == 1


async def test_a_batch_that_could_not_be_written_keeps_its_end_users_when_merged() -> None:
    later = _batch("ann", "bo")
    later.merge(_batch("ann"))
    assert later.users[("acme", MONTH)] == {"ann": [2, 0, 20, 4, 10], "bo": [1, 0, 10, 2, 5]}
    assert later.size() == 2 + 2  # a month, a day, two end users
