"""The public listener's HTTP server alone, in-process: CPU per request of parsing, the Request, and writing the answer.

No sockets and no policy: a typical OpenAI-SDK request (a 629-byte head with
18 headers and a 1 KB JSON body) is handed to one connection of
``tollgate.edge.server`` on a fake transport, again and again on one
keep-alive connection; the handler reads the body and answers either a 1 KB
JSON body (``ok``) or the gateway's JSON error (``error``, a 401 as the
identity stage makes it). It isolates what the server costs from what the
pipeline and the upstream client cost; ``run.py`` remains the figure that
counts.

    python benchmarks/edge_bench.py                 # both answers, 5 rounds of 20,000 requests
    python benchmarks/edge_bench.py --requests 50000 --rounds 3
    python benchmarks/edge_bench.py --request bench   # run.py's smaller request (5 headers) instead

``--gateway json`` (or ``stream``) measures the whole gateway instead, in one
process on loopback sockets: ``run.py``'s ``gateway`` row (no rules) with its
public server, pipeline, accounting and upstream client, against an upstream
answering ``run.py``'s fixed chat completion (``stream``: the mock's SSE stream
of 20 events, one event per loop turn), driven by one keep-alive client
connection per ``--connections``. ``full-stream`` is the same stream through
``run.py``'s full policy (``full-embedded``'s config: API-key identity, two
matchers, three limits, accounting) on the embedded store: each stream metered
event by event against its token reservation, which it extends mid-stream; ``full-json`` is ``run.py``'s JSON request
through that policy. ``--store redis`` puts their limits on a private redis-server (started on a free loopback port,
outside valgrind when run under it), as ``full-redis`` does. ``--burst K`` has the upstream write a
stream's events K at a time (one write each K, one write a loop turn; 0: the whole stream in one write), as
``run.py``'s mock does under load, where the gateway reads several events a chunk. The upstream and the client are a few
llhttp callbacks; their cost is in the figure, the same for every tree.
``--tree`` runs another checkout's ``tollgate`` (a base for before/after);
instructions per request come from callgrind run at two request counts:

    python benchmarks/edge_bench.py --gateway json --requests 20000 --rounds 3
    python benchmarks/edge_bench.py --gateway stream --tree ../base
    python benchmarks/edge_bench.py --gateway full-stream --requests 3000 --rounds 3
    python benchmarks/edge_bench.py --gateway full-stream --burst 0 --requests 3000 --rounds 3
    python benchmarks/edge_bench.py --gateway full-json --store redis --connections 8 --requests 20000 --rounds 3
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python benchmarks/edge_bench.py --gateway json \\
        --warmup 300 --requests 1000 --rounds 1   # and 3000: (Ir(3000) - Ir(1000)) / 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
# --tree: the checkout whose tollgate package is measured, taken before anything imports it.
_TREE = next((sys.argv[i + 1] for i, arg in enumerate(sys.argv[:-1]) if arg == "--tree"), str(REPO))
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(Path(_TREE).resolve()))

import httptools  # noqa: E402
import orjson  # noqa: E402
import uvloop  # noqa: E402
from run import (  # noqa: E402
    BODIES,
    CLIENT_HEADERS,
    FIXED_CHAT_COMPLETION,
    GATEWAY_FULL_POLICY,
    GATEWAY_NO_RULES,
    start_redis,
    tenants_yaml,
)

from tollgate.edge.answers import Response, error_answer  # noqa: E402
from tollgate.edge.messages import Request  # noqa: E402
from tollgate.edge.server import HttpServer  # noqa: E402
from tollgate.errors import Unauthenticated  # noqa: E402

BODY = (
    b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"'
    + b"s" * 400
    + b'"},{"role":"user","content":"'
    + b"u" * 512
    + b'"}],"max_tokens":16}'
)
BODY = BODY.ljust(1024, b" ")  # 1 KB of JSON
HEAD_LINES = [
    "POST /v1/chat/completions HTTP/1.1",
    "Host: api.gateway.example.com:8080",
    "Accept-Encoding: gzip, deflate",
    "Connection: keep-alive",
    "Accept: application/json",
    "Content-Type: application/json",
    "User-Agent: OpenAI/Python 1.54.4",
    "X-Stainless-Lang: python",
    "X-Stainless-Package-Version: 1.54.4",
    "X-Stainless-OS: Linux",
    "X-Stainless-Arch: x64",
    "X-Stainless-Runtime: CPython",
    "X-Stainless-Runtime-Version: 3.11.7",
    "Authorization: Bearer sk-proj-0123456789abcdefghijklmnopqrstuvwxyzABCDEF",
    "X-Stainless-Async: async:asyncio",
    "x-stainless-retry-count: 0",
    "x-stainless-read-timeout: 600.0",
    "OpenAI-Organization: org-0123456789abc",
    f"Content-Length: {len(BODY)}",
]
HEAD = ("\r\n".join(HEAD_LINES) + "\r\n\r\n").encode()
# What run.py's load generator sends: wrk's Host and Content-Length, and CLIENT_HEADERS.
SMALL_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hi."}],"max_tokens":16}'
SMALL = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: %d\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer sk-bench-client-key\r\nUser-Agent: tollgate-bench/1\r\n\r\n%b"
    % (len(SMALL_BODY), SMALL_BODY)
)
REQUESTS = {"sdk": HEAD + BODY, "bench": SMALL}
ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"message":{"role":"assistant","content":"'
    + b"a" * 900
    + b'"}}]}'
)


class _Transport:
    """Enough of an asyncio transport for the server: every write is kept; the end of an answer wakes the driver."""

    def __init__(self) -> None:
        self.answered: asyncio.Future[None] | None = None
        self.written = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.answered is not None and not self.answered.done():
            self.answered.set_result(None)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _ok(request: Request) -> Any:
    await request.read()
    return Response(200, ANSWER, {"Content-Type": "application/json", "x-request-id": "req_bench"})


async def _error(request: Request) -> Any:
    await request.read()
    return error_answer(Unauthenticated("incorrect API key provided"), "req_bench")


async def measure(handler: Any, requests: int, request: bytes) -> float:
    server = HttpServer(handler)
    transport = _Transport()
    protocol = server.protocol_factory()
    protocol.connection_made(transport)
    loop = asyncio.get_running_loop()
    for _ in range(200):  # warm-up
        transport.answered = loop.create_future()
        protocol.data_received(request)
        await transport.answered
    gc.collect()
    started = time.process_time()
    for _ in range(requests):
        transport.answered = loop.create_future()
        protocol.data_received(request)
        await transport.answered
    spent = time.process_time() - started
    protocol.connection_lost(None)
    await server.shutdown(0.1)
    return spent / requests * 1e6


# ---------------------------------------------------------------- the whole gateway (--gateway)

_JSON_ANSWER = orjson.dumps(FIXED_CHAT_COMPLETION)
_JSON_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
    len(_JSON_ANSWER),
    _JSON_ANSWER,
)
_STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
_WORDS = FIXED_CHAT_COMPLETION["choices"][0]["message"]["content"].split()  # type: ignore[index]


def _stream_events() -> list[bytes]:
    """The mock's answer to run.py's stream request, chunk-framed: a role delta, 16 tokens, the finish, usage, [DONE]."""
    common = {"id": "chatcmpl-bench0000000001", "object": "chat.completion.chunk", "created": 1700000000}
    common |= {"model": "gpt-4o-mini", "system_fingerprint": "fp_mock"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**common, "choices": [choice], "usage": None}

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": word if i == 0 else " " + word}) for i, word in enumerate(_WORDS)]
    events.append(chunk({}, "length"))
    events.append(
        {**common, "choices": [], "usage": {"prompt_tokens": 24, "completion_tokens": 16, "total_tokens": 40}}
    )
    data = [b"data: " + orjson.dumps(event) + b"\n\n" for event in events] + [b"data: [DONE]\n\n"]
    return [b"%x\r\n%b\r\n" % (len(d), d) for d in data]


class _Upstream(asyncio.Protocol):
    """The JSON upstream: each request read by llhttp, answered with the fixed completion or the stream."""

    def __init__(self, events: list[bytes] | None, burst: int) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.events = events
        self.burst = burst or len(events or ())  # events a write
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.events is None:
            self.transport.write(_JSON_REPLY)
            return
        self.transport.write(_STREAM_HEAD + b"".join(self.events[: self.burst]))
        asyncio.get_running_loop().call_soon(self._next_event, self.burst)

    def _next_event(self, i: int) -> None:
        """``burst`` events a loop turn (one: as a paced upstream sends them); the chunked body's end after the last."""
        assert self.events is not None
        if i >= len(self.events):
            self.transport.write(b"0\r\n\r\n")
            return
        self.transport.write(b"".join(self.events[i : i + self.burst]))
        asyncio.get_running_loop().call_soon(self._next_event, i + self.burst)


class _Client(asyncio.Protocol):
    """One keep-alive client connection: sends the request again as soon as the last answer has ended."""

    def __init__(self, request: bytes) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.request = request
        self.transport: Any = None
        self.left = 0
        self.done: asyncio.Future[None] | None = None
        self.failed = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() != 200:
            self.failed += 1
        self.left -= 1
        if self.left > 0:
            self.transport.write(self.request)
        elif self.done is not None and not self.done.done():
            self.done.set_result(None)

    def run(self, requests: int) -> asyncio.Future[None]:
        self.left = requests
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(self.request)
        return self.done


@contextlib.contextmanager
def _stdout_to_devnull() -> Iterator[None]:
    """The access log (written to stdout) goes nowhere while measuring, as run.py's goes to a file."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


async def measure_gateway(kind: str, args: argparse.Namespace) -> list[float]:
    """CPU µs per request (per stream) of the whole gateway (no rules, or ``full-``: the full policy, on the embedded
    store or, with ``--store redis``, on a private redis-server), one figure per round."""
    loop = asyncio.get_running_loop()
    stream = kind in ("stream", "full-stream")
    events = _stream_events() if stream else None
    upstream = await loop.create_server(lambda: _Upstream(events, args.burst), "127.0.0.1", 0)
    upstream_port = upstream.sockets[0].getsockname()[1]
    full = kind.startswith("full-")
    config = GATEWAY_FULL_POLICY.replace("$tenants", tenants_yaml(10)) if full else GATEWAY_NO_RULES
    config = config.replace("$port", "0").replace("$upstream_url", f"http://127.0.0.1:{upstream_port}/v1")
    try:
        with contextlib.ExitStack() as stack:
            if full and args.store == "redis":
                # A budget far above a round trip's: under callgrind the gateway runs some 50 times slower, and a
                # store call that timed out would be answered by its fail mode instead of measured.
                workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edge-bench-redis-")))
                url = start_redis(stack, workdir, None)  # run.py's: the same server as its Redis rows
                config += f'store: {{backend: redis, url: "{url}", timeout: 10}}\n'
            return await _measure_config(config, stream, args)
    finally:
        upstream.close()


async def _measure_config(config: str, stream: bool, args: argparse.Namespace) -> list[float]:
    """CPU µs per request (per stream) of the gateway that ``config`` describes, one figure per round."""
    from tollgate.config import load_config
    from tollgate.process.public import make_public_server, public_lifecycle
    from tollgate.runtime.state import GatewayState

    loop = asyncio.get_running_loop()
    # Accounting flushes every 500 records rather than every second: a flush's fixed cost then lands on the same
    # requests however slowly the process runs (under callgrind, or on a loaded machine), so instruction counts of
    # two runs compare.
    assert "\nusage:" not in config
    config += "usage: {flush_interval: 1h, batch_size: 500}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(config)
    try:
        state = GatewayState(load_config(f.name))
    finally:
        os.unlink(f.name)
    body = orjson.dumps(BODIES["stream" if stream else "chat"])
    head = [b"POST /v1/chat/completions HTTP/1.1", b"Host: 127.0.0.1:8080", b"Content-Length: %d" % len(body)]
    head += [h.encode() for h in CLIENT_HEADERS]
    request = b"\r\n".join(head) + b"\r\n\r\n" + body
    figures = []
    with _stdout_to_devnull():
        async with public_lifecycle(state):
            server = make_public_server(state)
            port = await server.start("127.0.0.1", 0)
            clients = []
            for _ in range(args.connections):
                _, client = await loop.create_connection(lambda: _Client(request), "127.0.0.1", port)
                clients.append(client)
            each = max(1, args.warmup // len(clients))
            await asyncio.gather(*(c.run(each) for c in clients))
            gc.collect()
            gc.freeze()
            gc.set_threshold(20_000, 50, 100)  # the gateway's own (tollgate/process/server.py)
            each = max(1, args.requests // len(clients))
            for _ in range(args.rounds):
                started = time.process_time()
                await asyncio.gather(*(c.run(each) for c in clients))
                figures.append((time.process_time() - started) / (each * len(clients)) * 1e6)
            for client in clients:
                client.transport.close()
            await server.shutdown(0.5)
    if any(c.failed for c in clients):
        raise SystemExit(f"{sum(c.failed for c in clients)} answers were not 200")
    return figures


async def main(args: argparse.Namespace) -> None:
    if args.gateway:
        figures = sorted(await measure_gateway(args.gateway, args))
        store = f" on the {args.store} store" if args.gateway.startswith("full-") else ""
        print(
            f"gateway {args.gateway}{store} ({args.connections} connection(s), {args.requests:,} requests a round, "
            f"tree {_TREE}): "
            f"{figures[len(figures) // 2]:.1f} µs CPU per request (median of {args.rounds}; min {figures[0]:.1f}, "
            f"max {figures[-1]:.1f}; load and upstream included)"
        )
        return
    request = REQUESTS[args.request]
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.count(b"\n")
    print(
        f"request: {len(head) + 4}-byte head, {lines} headers, {len(body)}-byte body; {args.requests:,} requests per round"
    )
    for name, handler in (("ok", _ok), ("error", _error)):
        figures = sorted([await measure(handler, args.requests, request) for _ in range(args.rounds)])
        print(
            f"{name:>6}: {figures[len(figures) // 2]:.1f} µs CPU per request (median of {args.rounds}; min {figures[0]:.1f}, max {figures[-1]:.1f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--request", choices=sorted(REQUESTS), default="sdk", help="sdk: the SDK request above; bench: run.py's request"
    )
    parser.add_argument(
        "--gateway",
        choices=("json", "stream", "full-json", "full-stream"),
        help="the whole gateway in-process instead of the server alone (no rules; full-: the full policy)",
    )
    parser.add_argument(
        "--store",
        choices=("embedded", "redis"),
        default="embedded",
        help="--gateway full-*: the limits' store (redis: a private redis-server on a free loopback port)",
    )
    parser.add_argument("--connections", type=int, default=1, help="--gateway: client connections")
    parser.add_argument(
        "--burst", type=int, default=1, help="--gateway stream: events an upstream write (1: paced; 0: all in one)"
    )
    parser.add_argument("--warmup", type=int, default=1000, help="--gateway: requests before measuring")
    parser.add_argument("--tree", default=str(REPO), help="checkout whose tollgate package is measured")
    uvloop.run(main(parser.parse_args()))
