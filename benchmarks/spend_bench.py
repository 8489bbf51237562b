"""Spend log cost per request: ``python -m benchmarks.spend_bench`` prints the CPU µs the spend log adds per request.

The accounting flusher is fed records as a gateway at ``--rate`` requests a
second does (``usage.batch_size`` records per flush, ``--seconds`` of traffic a
round): without a spend log, with one whose database discards the rows (the
spend log's own code: rows made, buffered, handed to a statement), with one on
SQLite, and with ``--postgres URL`` one on PostgreSQL (the gateway's side only:
the server's CPU is another process's). A round ends when every row is written.
The figure is the whole process's CPU time (``time.process_time``: the event
loop and the SQLite thread) divided by the records, minus the figure without a
spend log, the median of interleaved rounds (so all see the same machine load).
Each round has fresh random request ids, as the gateway's are (an insert of a
row already there, or of ordered keys, is cheaper than a real one).

The cyclic collector runs as in the gateway (tollgate/process/server.py): what
exists before a round (here also the round's prepared requests, which a
gateway would not hold) is frozen, and the young generation is collected every
``GC_THRESHOLDS[0]`` allocations. ``--default-gc`` keeps Python's defaults
instead: then rows the spend log holds between a flush and its insert survive
young collections, and the full collections they bring walk this benchmark's
whole heap (about 100 ms each, landing in some rounds and not others): that,
not the writer, was the difference between this figure and spend_writer_bench's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import secrets
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tollgate.accounting.recorder import Accounting
from tollgate.config import config_from_dict
from tollgate.config.identity import Limits
from tollgate.config.model import Deployment
from tollgate.identity.directory import Principal
from tollgate.pipeline.account import capture
from tollgate.pipeline.context import ENDPOINTS, RequestContext
from tollgate.process.server import GC_THRESHOLDS
from tollgate.upstream.usage import Usage


def _contexts(n: int, tenants: int) -> list[RequestContext]:
    principals = [
        Principal(tenant=f"t{i}", plan="enterprise", limits=Limits(), allowed_models=None, key_id=f"k{i}")
        for i in range(tenants)
    ]
    deployment = Deployment(upstream="mock", model="gpt-4o-mini-2024", provider="openai")
    out = []
    for i in range(n):
        request_id = f"req_{secrets.token_hex(12)}"
        ctx = RequestContext(None, request_id, ENDPOINTS["/v1/chat/completions"], 100.0, "127.0.0.1")  # type: ignore[arg-type]
        ctx.body_bytes = b"x" * 200
        ctx.model = ctx.model_served = "gpt-4o-mini"
        ctx.upstream_name = "mock"
        ctx.status = 200 if i % 20 else 429
        ctx.first_byte_at, ctx.finished_at = 100.01, 100.02
        ctx.usage = Usage(40, 16, True)
        ctx.principal = principals[i % tenants]
        ctx.end_user = f"user-{i % 50}"
        ctx.stream = bool(i % 2)
        ctx.deployment = deployment
        out.append(ctx)
    return out


def _doc(batch: int, database: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "upstreams": {"mock": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"gpt-4o-mini": {"deployments": [{"upstream": "mock"}]}},
        "usage": {"backend": "memory", "max_pending": 10_000_000, "batch_size": batch, "flush_interval": "1h"},
        "pricing": {"models": {"gpt-4o-mini": {"input_per_1k": 0.15, "output_per_1k": 0.6}}},
        "access_log": {"enabled": False},
    }
    if database is not None:
        doc["database"] = {"url": database}
    return doc


async def _round(acc: Accounting, contexts: list[RequestContext], batch: int, *, freeze: bool = True) -> float:
    """CPU seconds per record to record, flush and (with a spend log) write ``contexts``."""
    loop_time, wall, cpu = asyncio.get_running_loop().time, acc.wall, time.process_time
    spend = acc.spend_log
    target = (spend.written + len(contexts)) if spend is not None else 0
    if freeze:  # as the gateway after start-up: the collector walks only what the round makes
        gc.collect()
        gc.freeze()
    t0 = cpu()
    for start in range(0, len(contexts), batch):
        for ctx in contexts[start : start + batch]:
            acc.record(capture(ctx, loop_time(), wall()))
        await acc.flush()
    while spend is not None and spend.written < target:
        await asyncio.sleep(0.02)  # seldom: the polling itself costs CPU
    return (cpu() - t0) / len(contexts)


class _Discard:
    """A database that takes every statement and keeps nothing: what is left is the spend log's own CPU."""

    dialect = "sqlite"

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Discard]:
        yield self

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        return None

    async def copy_records(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        return None

    async def execute(self, sql: str, *args: Any) -> int:
        return 0

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return []


async def _main(
    rate: int, seconds: float, batch: int, rounds: int, tenants: int, postgres: str | None, default_gc: bool
) -> None:
    n = int(rate * seconds)
    if not default_gc:
        gc.set_threshold(*GC_THRESHOLDS)
    with tempfile.TemporaryDirectory() as tmp:
        variants: dict[str, Accounting] = {
            "no spend log": Accounting(config_from_dict(_doc(batch, None))),
            "spend log, rows discarded": Accounting(config_from_dict(_doc(batch, f"sqlite:///{Path(tmp) / 'd.db'}"))),
            "spend log on SQLite": Accounting(config_from_dict(_doc(batch, f"sqlite:///{Path(tmp) / 'spend.db'}"))),
        }
        if postgres is not None:
            variants["spend log on PostgreSQL"] = Accounting(config_from_dict(_doc(batch, postgres)))
        for acc in variants.values():
            await acc.start()
            await _round(acc, _contexts(batch, tenants), batch)  # open, migrate, warm up
        discard = variants["spend log, rows discarded"].spend_log
        assert discard is not None
        discard.database = _Discard()
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        try:
            names = list(variants)
            for r in range(rounds):
                contexts = _contexts(n, tenants)
                for name in names[r % len(names) :] + names[: r % len(names)]:  # a different order each round
                    fresh = [_renamed(ctx) for ctx in contexts]
                    cpu[name].append(await _round(variants[name], fresh, batch, freeze=not default_gc))
        finally:
            for acc in variants.values():
                await acc.close()
    base = cpu["no spend log"]
    print(
        f"{n} records a round ({rate} req/s for {seconds:g} s, {batch} per flush), {rounds} interleaved rounds, "
        + ("Python's default collector" if default_gc else "the gateway's collector settings")
    )
    print(f"{'no spend log':28s} {statistics.median(base) * 1e6:7.2f} µs CPU per request (median)")
    for name, values in cpu.items():
        if name == "no spend log":
            continue
        added = statistics.median(v - b for v, b in zip(values, base, strict=True))
        print(f"{name:28s} {statistics.median(values) * 1e6:7.2f} µs CPU per request; added {added * 1e6:6.2f} µs")


def _renamed(ctx: RequestContext) -> RequestContext:
    """``ctx`` under a fresh random request id (each variant inserts rows of its own)."""
    ctx.request_id = f"req_{secrets.token_hex(12)}"
    return ctx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5000, help="requests a second the records stand for")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of traffic a round")
    parser.add_argument("--batch", type=int, default=1000, help="records per flush (usage.batch_size)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--postgres", help="postgresql:// URL of an empty database, to measure it too")
    parser.add_argument("--default-gc", action="store_true", help="Python's collector settings, not the gateway's")
    args = parser.parse_args()
    asyncio.run(_main(args.rate, args.seconds, args.batch, args.rounds, args.tenants, args.postgres, args.default_gc))


if __name__ == "__main__":
    main()
