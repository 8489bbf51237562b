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
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import uvloop  # noqa: E402

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


async def main(args: argparse.Namespace) -> None:
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
    uvloop.run(main(parser.parse_args()))
