"""Spend log cost per request: ``python -m benchmarks.spend_bench`` prints the CPU µs the spend log adds per request.

The accounting flusher is fed records as a gateway at ``--rate`` requests a
second does (``usage.batch_size`` records per flush, ``--seconds`` of traffic a
round), once without a database and once with the spend log on SQLite; a round
ends when every row is in the database. The figure is the whole process's CPU
time (``time.process_time``: the event loop, the SQLite thread, the spill
thread) divided by the records, with minus without, the median of interleaved
rounds (so both see the same machine load). Each round has fresh request ids
(an insert of a row already there would be cheaper than a real one).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tollgate.accounting.recorder import Accounting
from tollgate.config import config_from_dict
from tollgate.config.identity import Limits
from tollgate.config.model import Deployment
from tollgate.identity.directory import Principal
from tollgate.pipeline.account import capture
from tollgate.pipeline.context import ENDPOINTS, RequestContext
from tollgate.upstream.usage import Usage


def _contexts(n: int, round_no: int, tenants: int) -> list[RequestContext]:
    principals = [
        Principal(tenant=f"t{i}", plan="enterprise", limits=Limits(), allowed_models=None, key_id=f"k{i}")
        for i in range(tenants)
    ]
    deployment = Deployment(upstream="mock", model="gpt-4o-mini-2024", provider="openai")
    out = []
    for i in range(n):
        ctx = RequestContext(None, f"req_{round_no:04d}_{i:08d}", ENDPOINTS["/v1/chat/completions"], 100.0, "127.0.0.1")  # type: ignore[arg-type]
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


async def _round(acc: Accounting, contexts: list[RequestContext], batch: int) -> float:
    """CPU seconds per record to record, flush and (with a spend log) write ``contexts``."""
    loop_time, wall, cpu = asyncio.get_running_loop().time, acc.wall, time.process_time
    spend = acc.spend
    target = (spend.written + len(contexts)) if spend is not None else 0
    t0 = cpu()
    for start in range(0, len(contexts), batch):
        for ctx in contexts[start : start + batch]:
            acc.record(capture(ctx, loop_time(), wall()))
        await acc.flush()
    while spend is not None and spend.written < target:
        await asyncio.sleep(0.001)
    return (cpu() - t0) / len(contexts)


async def _main(rate: int, seconds: float, batch: int, rounds: int, tenants: int) -> None:
    n = int(rate * seconds)
    with tempfile.TemporaryDirectory() as tmp:
        plain = Accounting(config_from_dict(_doc(batch, None)))
        logged = Accounting(config_from_dict(_doc(batch, f"sqlite:///{Path(tmp) / 'spend.db'}")))
        await plain.start()
        await logged.start()
        try:
            await _round(logged, _contexts(batch, 9999, tenants), batch)  # open, migrate, warm up
            without, with_log = [], []
            for r in range(rounds):
                contexts = _contexts(n, r, tenants)
                first, second = (plain, logged) if r % 2 else (logged, plain)
                a = await _round(first, contexts, batch)
                b = await _round(second, contexts, batch)
                (without if first is plain else with_log).append(a)
                (with_log if first is plain else without).append(b)
        finally:
            await plain.close()
            await logged.close()
    added = statistics.median(w - o for w, o in zip(with_log, without, strict=True))
    print(f"{n} records a round ({rate} req/s for {seconds:g} s, {batch} per flush), {rounds} interleaved rounds")
    print(f"without spend log: {statistics.median(without) * 1e6:6.2f} µs CPU per request (median)")
    print(f"with spend log   : {statistics.median(with_log) * 1e6:6.2f} µs CPU per request (median), SQLite")
    print(f"added by the spend log: {added * 1e6:6.2f} µs CPU per request (median of the rounds' differences)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5000, help="requests a second the records stand for")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds of traffic a round")
    parser.add_argument("--batch", type=int, default=1000, help="records per flush (usage.batch_size)")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--tenants", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(_main(args.rate, args.seconds, args.batch, args.rounds, args.tenants))


if __name__ == "__main__":
    main()
