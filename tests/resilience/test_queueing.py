"""The fair queue with real concurrency: slots, priority classes, tenant round robin, deadlines, a full queue."""

from __future__ import annotations

import asyncio

import pytest

from tollgate.routing.slot_queue import FairQueue, QueueRefused


async def _hold(
    queue: FairQueue, tenant: str, priority: int, order: list[str], release: asyncio.Event, deadline: float = 5.0
) -> None:
    async with queue.slot(tenant, priority, deadline):
        order.append(tenant)
        await release.wait()


async def _drain(order: list[str], n: int, queue: FairQueue) -> None:
    """Let the queue hand the slot on n times: each holder leaves as soon as it got in."""
    while len(order) < n:
        await asyncio.sleep(0)


async def test_free_slot_is_taken_without_waiting_and_limit_is_respected() -> None:
    queue = FairQueue(limit=2, size=10)
    assert queue.try_acquire() and queue.try_acquire()
    assert not queue.try_acquire()
    queue.release()
    assert queue.try_acquire()


async def test_one_tenant_with_a_thousand_queued_delays_another_by_at_most_one_turn() -> None:
    queue = FairQueue(limit=1, size=2000)
    served: list[str] = []

    async def one(tenant: str) -> None:
        async with queue.slot(tenant, 0, 30):
            served.append(tenant)
            await asyncio.sleep(0)

    assert queue.try_acquire()  # the slot is busy while everyone queues
    heavy = [asyncio.create_task(one("heavy")) for _ in range(1000)]
    await asyncio.sleep(0)
    light = asyncio.create_task(one("light"))
    await asyncio.sleep(0)
    assert queue.waiting == 1001
    queue.release()
    await asyncio.gather(light, *heavy)
    assert served.index("light") <= 1


async def test_higher_priority_class_is_served_first() -> None:
    queue = FairQueue(limit=1, size=100)
    served: list[str] = []

    async def one(name: str, priority: int) -> None:
        async with queue.slot(name, priority, 5):
            served.append(name)

    assert queue.try_acquire()
    tasks = [asyncio.create_task(one(f"low{i}", 0)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(one("high", 2)))
    await asyncio.sleep(0)
    queue.release()
    await asyncio.gather(*tasks)
    assert served[0] == "high"


async def test_waiter_past_its_deadline_is_refused_and_the_slot_goes_to_the_next() -> None:
    queue = FairQueue(limit=1, size=10)
    assert queue.try_acquire()
    with pytest.raises(QueueRefused) as info:
        await queue.acquire("t", 0, 0.05)
    assert info.value.reason == "deadline" and info.value.waited >= 0.04
    assert queue.waiting == 0 and queue.expired == 1
    later = asyncio.create_task(queue.acquire("u", 0, 5))
    await asyncio.sleep(0)
    queue.release()
    await later  # the expired waiter did not swallow the slot
    assert queue.in_use == 1


async def test_full_queue_refuses_at_once() -> None:
    queue = FairQueue(limit=1, size=2)
    assert queue.try_acquire()
    waiters = [asyncio.create_task(queue.acquire("t", 0, 5)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueRefused) as info:
        await queue.acquire("t", 0, 5)
    assert info.value.reason == "full" and queue.refused_full == 1
    for _ in waiters:
        queue.release()
    queue.release()
    await asyncio.gather(*waiters)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    queue = FairQueue(limit=1, size=10)
    assert queue.try_acquire()
    waiter = asyncio.create_task(queue.acquire("t", 0, 5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert queue.waiting == 0
    queue.release()
    assert queue.in_use == 0


async def test_raising_the_limit_lets_waiters_in() -> None:
    queue = FairQueue(limit=1, size=10)
    assert queue.try_acquire()
    waiters = [asyncio.create_task(queue.acquire("t", 0, 5)) for _ in range(2)]
    await asyncio.sleep(0)
    queue.set_limit(3, 10)
    await asyncio.gather(*waiters)
    assert queue.in_use == 3
