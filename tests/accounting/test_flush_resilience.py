"""What a flush keeps when something around it fails: a close landing mid-flush, an access log that cannot be written."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

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


def _batch_of(acc: Accounting, requests: list[tuple[Any, float]]) -> Batch:
    want = Batch()
    for ctx, end in requests:
        entry = entry_from(capture(ctx, end, WALL), acc.pricing())
        if entry.upstream is not None:
            want.add(entry)
    return want


async def test_an_access_log_that_cannot_be_written_loses_its_lines_not_the_usage_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    doc = {**DOC, "access_log": {"enabled": True, "path": str(tmp_path / "access.log")}}
    acc = Accounting(config_from_dict(doc), wall=lambda: WALL)
    await acc.start()
    working = acc.access_log._fh
    acc.access_log._fh = full = open("/dev/full", "ab", buffering=0)  # noqa: SIM115 - every write: ENOSPC, a full disk
    requests = varied_requests(600)
    halves = requests[:300], requests[300:]
    try:
        with caplog.at_level(logging.INFO, logger="tollgate.accounting"):
            for half in halves:  # two failing flushes
                for ctx, end in half:
                    acc.record(capture(ctx, end, acc.wall()))
                assert await acc.flush() == len(half)
            failures = [r for r in caplog.records if "access log cannot be written" in r.getMessage()]
            assert len(failures) == 1 and "No space left" in failures[0].getMessage()
            assert acc.access_lines_lost == len(requests)
            for (tenant, month), fields in _batch_of(acc, requests).months.items():
                stored, _days = await acc.store.read(tenant, month)
                assert stored == dict(fields), "every request is in the usage aggregates"
            acc.access_log._fh = working
            full.close()
            ctx, end = requests[0]
            acc.record(capture(ctx, end, acc.wall()))
            await acc.flush()
            assert any("writable again (600 lines lost)" in r.getMessage() for r in caplog.records)
        assert (tmp_path / "access.log").read_text().count("\n") == 1, "the line after recovery is written"
    finally:
        await acc.close()
