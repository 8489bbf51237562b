"""The policy stages alone, in-process: CPU per request of identify → match → admit → settle/release → account.

No HTTP and no upstream: the same config as ``run.py``'s full-policy row
(API key, two namespace matchers, three rules plus the plan's two limits,
accounting with an access-log line per request, written to /dev/null), a
request context built the way the proxy builds it, and the real
``GatewayState``. It isolates what the policy costs from what aiohttp and the
upstream client cost, so a change to admission or settlement can be measured
in seconds with little noise; ``run.py`` remains the figure that counts.

    python benchmarks/policy_bench.py                 # full policy, embedded store
    python benchmarks/policy_bench.py --no-rules      # the same stages with no rules (the floor)

The cyclic collector runs as in the gateway: what the warm-up made is frozen
and the young generation collected every ``GC_THRESHOLDS[0]`` allocations
(Python's default, 700, would charge the policy stages several times the
collections the gateway makes).

The store runs each script call at once here (no end-of-tick coalescing):
requests are issued one after another, so there is nothing to coalesce and a
tick per request would only add the event loop's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from string import Template

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import uvloop  # noqa: E402
from multidict import CIMultiDict, CIMultiDictProxy  # noqa: E402
from run import BODIES, CLIENT_HEADERS, GATEWAY_FULL_POLICY, GATEWAY_NO_RULES, tenants_yaml  # noqa: E402

from tollgate.config import load_config  # noqa: E402
from tollgate.edge.messages import Body, Request  # noqa: E402
from tollgate.pipeline.account import account  # noqa: E402
from tollgate.pipeline.admit import admit  # noqa: E402
from tollgate.pipeline.context import ENDPOINTS, RequestContext  # noqa: E402
from tollgate.pipeline.identify import identify  # noqa: E402
from tollgate.pipeline.match import match  # noqa: E402
from tollgate.process.server import GC_THRESHOLDS  # noqa: E402
from tollgate.runtime.state import GatewayState  # noqa: E402
from tollgate.upstream.usage import usage_from_body  # noqa: E402

ANSWER = b'{"usage":{"prompt_tokens":24,"completion_tokens":16,"total_tokens":40}}'


class _Arrived:
    """The connection of a body that has all arrived: nothing is ever asked of it."""

    def body_wanted(self, body: Body) -> None:
        return None


def _request(headers: dict[str, str], body: bytes) -> Request:
    """The request as the public listener makes it (compiled, the stages take nothing else), its body arrived."""
    content = Body(_Arrived(), True, False)  # type: ignore[arg-type]
    content.feed(body)
    proxy = CIMultiDictProxy(CIMultiDict(headers))
    return Request("POST", "/v1/chat/completions", "", 1, proxy, (), None, len(body), False, True, content, "127.0.0.1")  # type: ignore[arg-type]


def gateway_state(config_text: str) -> GatewayState:
    """The gateway's state for ``config_text`` (written to a temp file for load_config, then removed)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config_text)
    try:
        return GatewayState(load_config(f.name))
    finally:
        os.unlink(f.name)


def policy_request(state: GatewayState) -> Callable[[], Awaitable[RequestContext]]:
    """One chat request through the policy stages as the gateway runs them (identify, match, admit, then account
    as if the upstream answered ANSWER at once); each call returns the request's context."""
    body = orjson.dumps(BODIES["chat"])
    headers = dict(h.split(": ", 1) for h in CLIENT_HEADERS)
    request = _request({**headers, "Content-Type": "application/json", "Content-Length": str(len(body))}, body)
    endpoint = ENDPOINTS["/v1/chat/completions"]
    loop = asyncio.get_running_loop()
    stages = state.runtime.stages

    async def one() -> RequestContext:
        ctx = RequestContext(request, "req_bench", endpoint, stages.clock.loop_time(), "127.0.0.1")
        stages.shedder.enter()
        ctx.body_bytes = body
        ctx.body = orjson.loads(body)
        ctx.model = ctx.body["model"]
        identify(ctx, stages.identify)
        match(ctx, stages.match)
        await admit(ctx, stages.admit)
        ctx.status = 200
        ctx.usage = usage_from_body(ANSWER)
        ctx.first_byte_at = ctx.finished_at = loop.time()
        stages.shedder.leave()
        account(ctx, stages.account)
        return ctx

    return one


async def measure(config_text: str, requests: int, rounds: int) -> float:
    state = gateway_state(config_text)
    await state.start()
    for engine in state.limiter._stores.values():
        if hasattr(engine, "coalesce"):
            engine.coalesce = False
    one = policy_request(state)

    try:
        for _ in range(2000):  # warm-up: caches filled, scripts loaded
            await one()
        await asyncio.sleep(0.05)
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)  # the gateway's own (tollgate/process/server.py), not Python's default 700
        best = float("inf")
        for _ in range(rounds):
            started = time.process_time()
            for i in range(requests):
                await one()
                if i % 64 == 63:
                    await asyncio.sleep(0)  # let the settler and the accounting flusher run, as they would
            await asyncio.sleep(0.01)
            best = min(best, (time.process_time() - started) / requests * 1e6)
        return best
    finally:
        await state.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-rules", action="store_true", help="the gateway with no identity and no rules")
    p.add_argument("--requests", type=int, default=20_000, help="requests per round")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the best is reported")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # start-up notices (in-memory usage store, ...) are not the point here
    template = GATEWAY_NO_RULES if args.no_rules else GATEWAY_FULL_POLICY
    config = Template(template).substitute(port=8080, upstream_url="http://127.0.0.1:9/v1", tenants=tenants_yaml(10))
    config += 'access_log: {enabled: true, path: "/dev/null"}\n'
    # Accounting flushes every usage.batch_size records, as under load: never on its one-second timer, which would
    # make the batches (and any count of instructions, under callgrind's slowdown) depend on the machine's speed.
    config += "usage: {flush_interval: 1h}\n"
    us = uvloop.run(measure(config, args.requests, args.rounds))
    what = "no rules" if args.no_rules else "full policy, embedded store"
    print(f"policy stages, {what}: {us:.1f} us of CPU per request (best of {args.rounds} x {args.requests:,})")


if __name__ == "__main__":
    main()
