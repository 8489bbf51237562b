"""Accounting cost per request: ``python -m gateway.accounting.bench`` prints µs on the hot path and in the flusher.

The hot path is :meth:`Accounting.record` (what a request pays, in its
handler's ``finally``); the flusher's work per record (metrics, access-log
line, aggregate deltas, store write) runs later on the same event loop, so
it is CPU the process spends per request too, just not in the request's
latency.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import config_from_dict
from ..context import ENDPOINTS, RequestContext, Usage
from ..identity.directory import Principal
from ..config.identity import Limits
from .recorder import Accounting


def _contexts(n: int, tenants: int) -> list[RequestContext]:
    out = []
    principals = [
        Principal(tenant=f"t{i}", plan="enterprise", limits=Limits(monthly_requests=10**9), allowed_models=None, key_id=f"k{i}")
        for i in range(tenants)
    ]
    for i in range(n):
        ctx = RequestContext(None, None, f"req_{i:08d}", ENDPOINTS["/v1/chat/completions"], 100.0, "127.0.0.1")  # type: ignore[arg-type]
        ctx.body_bytes = b"x" * 200
        ctx.model = ctx.model_served = "gpt-4o-mini"
        ctx.upstream_name = "mock"
        ctx.status = 200
        ctx.first_byte_at, ctx.finished_at = 100.01, 100.02
        ctx.usage = Usage(40, 16, True)
        ctx.principal = principals[i % tenants]
        out.append(ctx)
    return out


async def _run(n: int, tenants: int, backend: dict[str, Any]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        doc = {
            "upstreams": {"mock": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": {"gpt-4o-mini": {"deployments": [{"upstream": "mock"}]}},
            "usage": {**backend, "max_pending": n + 1, "batch_size": n + 1, "flush_interval": "1h"},
            "pricing": {"models": {"gpt-4o-mini": {"input_per_1k": 0.15, "output_per_1k": 0.6}}},
            "access_log": {"path": str(Path(tmp) / "access.jsonl")},
        }
        if backend.get("backend") == "file":
            doc["usage"]["path"] = str(Path(tmp) / "usage.json")
        acc = Accounting(config_from_dict(doc))
        await acc.start()
        contexts = _contexts(n, tenants)
        record = acc.record
        t0 = time.perf_counter()
        for ctx in contexts:
            record(ctx)
        t1 = time.perf_counter()
        await acc.flush()
        t2 = time.perf_counter()
        await acc.close()
    return {"record_us": (t1 - t0) / n * 1e6, "flush_us": (t2 - t1) / n * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--redis", help="redis:// URL to measure the Redis usage store too")
    args = parser.parse_args()
    backends: list[tuple[str, dict[str, Any]]] = [("memory", {"backend": "memory"}), ("file", {"backend": "file"})]
    if args.redis:
        backends.append(("redis", {"backend": "redis", "url": args.redis, "key_prefix": "bench"}))
    for name, backend in backends:
        best: dict[str, float] | None = None
        for _ in range(3):
            r = asyncio.run(_run(args.records, args.tenants, backend))
            best = r if best is None or r["record_us"] + r["flush_us"] < best["record_us"] + best["flush_us"] else best
        assert best is not None
        print(f"{name:7s} record (hot path) {best['record_us']:.2f} µs/request   flush (background) {best['flush_us']:.2f} µs/request")


if __name__ == "__main__":
    main()
