"""The spend log's writer alone: ``python -m benchmarks.spend_writer_bench [--postgres URL]``.

CPU µs per row that the gateway process spends turning a flush's entry
fields into spend rows and writing them (SQLite: the insert runs on the
database's own thread of this process; PostgreSQL: the client side of a binary
COPY, the server's CPU being another process's), 1,000 rows per flush as at
5,000 req/s with ``usage.batch_size`` 1,000; median of rounds. Unlike
``spend_bench`` (the whole flusher with and without a spend log, whose
difference of two noisy medians also carries the flusher's own variance),
this times only the spend log's work. The collector runs as in the gateway (frozen
start-up heap, its thresholds: see spend_bench).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.spend_bench import _contexts, _doc
from tollgate.accounting.recorder import Accounting
from tollgate.accounting.records import fields_of
from tollgate.accounting.spend_log import SpendLog
from tollgate.config import config_from_dict
from tollgate.database import migrate, open_database
from tollgate.pipeline.account import capture
from tollgate.process.server import GC_THRESHOLDS


async def _per_row(url: str, rows: int, batch: int, rounds: int) -> list[float]:
    pricing = Accounting(config_from_dict(_doc(batch, None))).pricing()
    db = open_database(url)
    await db.open()
    await migrate(db)
    log = SpendLog(db, memory_rows=10 * rows, spill_path=None, spill_max_bytes=0, clock=time.time)
    out = []
    try:
        for _ in range(rounds):
            fields = [fields_of(capture(ctx, 100.03, time.time()), pricing) for ctx in _contexts(rows, 100)]
            gc.collect()
            gc.freeze()
            started = time.process_time()
            for start in range(0, rows, batch):
                log.add(fields[start : start + batch], "USD")
                await log.write()
            out.append((time.process_time() - started) / rows * 1e6)
    finally:
        await db.close()
    return out


async def _main(rows: int, batch: int, rounds: int, postgres: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"SQLite": f"sqlite:///{Path(tmp) / 'spend.db'}"}
        if postgres is not None:
            engines["PostgreSQL"] = postgres
        gc.set_threshold(*GC_THRESHOLDS)
        print(f"{rows} rows a round, {batch} per flush, {rounds} rounds: spend log CPU µs per row (median, rounds)")
        for name, url in engines.items():
            values = await _per_row(url, rows, batch, rounds)
            print(f"  {name:<11} {statistics.median(values):6.2f}   {' '.join(f'{v:.2f}' for v in values)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--postgres", help="postgresql:// URL of an empty database, to measure it too")
    args = parser.parse_args()
    asyncio.run(_main(args.rows, args.batch, args.rounds, args.postgres))


if __name__ == "__main__":
    main()
