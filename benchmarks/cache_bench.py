"""The response cache's own work per request, in-process: CPU µs of the eligibility check, the key, the lookup and
the store of a miss, and of a hit's lookup and JSON answer (no HTTP, no upstream). ``run.py``'s full-cache-* rows
remain the figures that count; this one has little noise, for changes to tollgate/pipeline/cache.py.

    python benchmarks/cache_bench.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from types import SimpleNamespace
from typing import Any

import orjson
from multidict import CIMultiDict, CIMultiDictProxy

from tollgate.clock import SystemClock
from tollgate.config.cache import ResponseCacheConfig
from tollgate.config.store import StoreConfig
from tollgate.edge.answers import Response
from tollgate.pipeline import cache as stage
from tollgate.pipeline.context import ENDPOINTS, RequestContext
from tollgate.policy.response_cache import ResponseCache

BODY = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write one sentence about rate limits."},
    ],
    "max_tokens": 16,
    "temperature": 0,
}
ANSWER = orjson.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": [], "usage": {}}) * 8


class _Metrics:
    def cache_result(self, result: str, tokens_saved: int = 0) -> None:
        pass


def _ctx(i: int) -> RequestContext:
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Bearer x"}))
    request: Any = SimpleNamespace(headers=headers)
    ctx = RequestContext(request, f"req_{i}", ENDPOINTS["/v1/chat/completions"], 0.0, "127.0.0.1")
    ctx.body = {**BODY, "seed": i}
    ctx.model = "gpt-4o-mini"
    ctx.principal = SimpleNamespace(tenant="acme")  # type: ignore[assignment]
    return ctx


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    n = parser.parse_args().n
    cache = ResponseCache(ResponseCacheConfig(enabled=True), StoreConfig(), SystemClock())
    served = Response(200, ANSWER, {"Content-Type": "application/json"})

    async def upstream(ctx: RequestContext, _deps: Any) -> Response:
        ctx.status = 200
        return Response(200, served.body, dict(served.headers))

    stage.serve = upstream  # type: ignore[assignment]  # the stage's own work only: no routing, no upstream
    deps = stage.CacheDeps(cache, cache.config, None, _Metrics(), SystemClock(), 0.0)  # type: ignore[arg-type]
    contexts = [_ctx(i) for i in range(n)]
    for label in ("miss (key, lookup, serve, store)", "hit (key, lookup, JSON answer)"):
        start = time.process_time()
        for ctx in contexts:
            await stage.serve_cached(ctx, deps)
        spent = time.process_time() - start
        print(f"{label}: {spent / n * 1e6:.2f} µs per request ({n} requests, {len(cache.local)} entries)")
    bare = [_ctx(i) for i in range(n)]
    start = time.process_time()
    for ctx in bare:
        await upstream(ctx, None)
    print(f"the stand-in upstream alone: {(time.process_time() - start) / n * 1e6:.2f} µs per request")


if __name__ == "__main__":
    asyncio.run(main())
