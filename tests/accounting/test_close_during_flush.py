"""Closing accounting while its flusher is half-way through a flush: the flush finishes, no record is lost."""

from __future__ import annotations

import asyncio

from tollgate.accounting import Accounting
from tollgate.accounting.aggregates import Batch
from tollgate.accounting.records import entry_from
from tollgate.config import config_from_dict
from tollgate.pipeline.account import capture

from .test_flush_batching import DOC, WALL, varied_requests


async def test_closing_while_the_flusher_folds_a_large_batch_accounts_every_record() -> None:
    # A batch far larger than the slice a flush folds between two yields to the event loop, so the close lands
    # while the flusher's task holds records it has taken from the queue but not yet applied.
    requests = varied_requests(4000)
    doc = {**DOC, "usage": {**DOC["usage"], "batch_size": 1000}}
    acc = Accounting(config_from_dict(doc), wall=lambda: WALL)
    await acc.start()
    for ctx, end in requests:
        acc.record(capture(ctx, end, acc.wall()))
    for _ in range(1000):  # let the flusher wake and take the queue
        if acc.pending == 0:
            break
        await asyncio.sleep(0)
    assert acc.pending == 0 and acc.records_flushed == 0, "the flusher has taken the records and not finished"
    await acc.close()
    assert acc.records_flushed == len(requests)
    pricing = acc.pricing()
    want = Batch()
    for ctx, end in requests:
        entry = entry_from(capture(ctx, end, WALL), pricing)
        if entry.upstream is not None:
            want.add(entry)
    for (tenant, month), fields in want.months.items():
        stored, _days = await acc.store.read(tenant, month)
        assert stored == dict(fields), tenant
