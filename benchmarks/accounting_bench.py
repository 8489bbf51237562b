"""Accounting cost per request: ``python -m benchmarks.accounting_bench`` prints CPU µs on the hot path and in the flusher.

The hot path is the account stage's record, taken (``capture``) and queued
(:meth:`Accounting.record`): what a request pays, in its handler's
``finally``; the flusher's work per record (metrics, access-log
line, aggregate deltas, store write) runs later on the same event loop, so
it is CPU the process spends per request too, just not in the request's
latency.

Records are flushed in batches of ``--batch`` (the default ``usage.batch_size``),
as a loaded gateway does. Times are CPU time of the whole process
(``time.process_time``: the event loop plus the threads that write the access
log and the file store), best of ``--repeats`` runs, so that other processes on
the machine inflate them less. Each store is measured with the access log
sampling every successful request away (``sample: 0``, the line is never built)
and with a line for every request (``sample: 1``). Run it with
``PROMETHEUS_MULTIPROC_DIR`` set to an empty directory to measure the
multiprocess metric files instead of in-memory values.

Instructions per record, free of the machine's noise: run one store and one
access-log setting under callgrind at two record counts and divide the
difference of the totals by the difference of the counts::

    valgrind --tool=callgrind python -m benchmarks.accounting_bench --only memory every-line --repeats 1 --records 2000
    valgrind --tool=callgrind python -m benchmarks.accounting_bench --only memory every-line --repeats 1 --records 10000

``--tenants 1 --unpriced`` is closest to ``run.py``'s rows: one tenant sends every request, and their configs
have no pricing section.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from tollgate.accounting.metrics import multiprocess_dir
from tollgate.accounting.recorder import Accounting
from tollgate.config import config_from_dict
from tollgate.config.identity import Limits
from tollgate.identity.directory import Principal
from tollgate.pipeline.account import capture
from tollgate.pipeline.context import ENDPOINTS, RequestContext
from tollgate.upstream.usage import Usage


def _contexts(n: int, tenants: int) -> list[RequestContext]:
    out = []
    principals = [
        Principal(
            tenant=f"t{i}",
            plan="enterprise",
            limits=Limits(monthly_requests=10**9),
            allowed_models=None,
            key_id=f"k{i}",
        )
        for i in range(tenants)
    ]
    for i in range(n):
        ctx = RequestContext(None, f"req_{i:08d}", ENDPOINTS["/v1/chat/completions"], 100.0, "127.0.0.1")  # type: ignore[arg-type]
        ctx.body_bytes = b"x" * 200
        ctx.model = ctx.model_served = "gpt-4o-mini"
        ctx.upstream_name = "mock"
        ctx.status = 200
        ctx.first_byte_at, ctx.finished_at = 100.01, 100.02
        ctx.usage = Usage(40, 16, True)
        ctx.principal = principals[i % tenants]
        out.append(ctx)
    return out


async def _run(
    n: int, tenants: int, batch: int, backend: dict[str, Any], sample: float, priced: bool = True
) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        doc = {
            "upstreams": {"mock": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": {"gpt-4o-mini": {"deployments": [{"upstream": "mock"}]}},
            "usage": {**backend, "max_pending": n + 1, "batch_size": n + 1, "flush_interval": "1h"},
            "access_log": {"path": str(Path(tmp) / "access.jsonl"), "sample": sample},
        }
        if priced:
            doc["pricing"] = {"models": {"gpt-4o-mini": {"input_per_1k": 0.15, "output_per_1k": 0.6}}}
        if backend.get("backend") == "file":
            doc["usage"]["path"] = str(Path(tmp) / "usage.json")
        acc = Accounting(config_from_dict(doc))
        await acc.start()
        contexts = _contexts(n, tenants)
        record, flush, cpu = acc.record, acc.flush, time.process_time
        end, wall = asyncio.get_running_loop().time, acc.wall
        record_s = flush_s = 0.0
        for start in range(0, n, batch):
            chunk = contexts[start : start + batch]
            t0 = cpu()
            for ctx in chunk:
                record(capture(ctx, end(), wall()))  # the account stage's part: the record taken, then queued
            t1 = cpu()
            await flush()
            t2 = cpu()
            record_s += t1 - t0
            flush_s += t2 - t1
        await acc.close()
    return {"record_us": record_s / n * 1e6, "flush_us": flush_s / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1000, help="records per flush (usage.batch_size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--redis", help="redis:// URL to measure the Redis usage store too")
    parser.add_argument(
        "--unpriced",
        action="store_true",
        help="no pricing section (as run.py's configs): the model at the default price",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["memory", "file", "redis", "sampled-away", "every-line"],
        help="some stores and access-log settings only (for instruction counts under callgrind: one of each)",
    )
    args = parser.parse_args()
    backends: list[tuple[str, dict[str, Any]]] = [("memory", {"backend": "memory"}), ("file", {"backend": "file"})]
    if args.redis:
        backends.append(("redis", {"backend": "redis", "url": args.redis, "key_prefix": "bench"}))
    logs = [(0.0, "access log sampled away"), (1.0, "access log every line")]
    if args.only:
        backends = [b for b in backends if b[0] in args.only] or backends
        logs = [s for s in logs if s[1].endswith(tuple(o.replace("-", " ") for o in args.only))] or logs
    mode = "multiprocess files" if multiprocess_dir() else "in-memory values"
    print(
        f"{args.records} records, {args.tenants} tenants, flushed {args.batch} at a time; metrics: {mode}; CPU µs per request, best of {args.repeats}"
    )
    for name, backend in backends:
        for sample, what in logs:
            runs = [
                asyncio.run(_run(args.records, args.tenants, args.batch, backend, sample, not args.unpriced))
                for _ in range(args.repeats)
            ]
            best = min(runs, key=lambda r: r["record_us"] + r["flush_us"])
            print(
                f"{name:7s} {what:24s} record (hot path) {best['record_us']:5.2f}   flush (background) {best['flush_us']:5.2f}"
            )


if __name__ == "__main__":
    main()
