"""A keep-alive connection's heads: what a handler reads of each is what that head says, whatever the head before
said (the server reuses the lines, names and answer header lines that did not change)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from tollgate.edge.answers import Response
from tollgate.edge.messages import Request
from tollgate.edge.server import HttpServer


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

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


NAMES = ["User-Agent", "user-agent", "Authorization", "X-Trace", "Accept", "X-Value"]
VALUES = [b"a", b"b ", b"tollgate/1", b"caf\xc3\xa9", b"\xff\xfe", b"Bearer sk-1", b""]


async def test_each_request_sees_its_own_head_on_a_reused_connection() -> None:
    seen: list[tuple[list[tuple[str, str]], tuple[tuple[bytes, bytes], ...]]] = []

    async def handle(request: Request) -> Any:
        seen.append((list(request.headers.items()), request.raw_headers))
        value = request.headers.get("X-Value", "none")
        return Response(200, b"{}", {"Content-Type": "application/json", "X-Echo": value, "X-Fixed": "same"})

    server = HttpServer(handle)
    transport = _Transport()
    conn: Any = server.protocol_factory()
    conn.connection_made(transport)
    rng = random.Random(22)
    lines = [(b"Host", b"h")]
    for _ in range(300):
        # Mostly the head before, a line changed, added or dropped now and then.
        if rng.random() < 0.5 and len(lines) > 1:
            i = rng.randrange(1, len(lines))
            lines[i] = (rng.choice(NAMES).encode(), rng.choice(VALUES))
        if rng.random() < 0.2:
            lines.insert(rng.randrange(1, len(lines) + 1), (rng.choice(NAMES).encode(), rng.choice(VALUES)))
        if rng.random() < 0.2 and len(lines) > 1:
            del lines[rng.randrange(1, len(lines))]
        head = b"GET / HTTP/1.1\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in lines) + b"\r\n"
        before = len(transport.written)
        conn.data_received(head)
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(transport.written) == before + 1
        items, raw = seen[-1]
        assert raw == tuple((n, v) for n, v in lines)
        assert items == [(n.decode(), v.rstrip(b" ").decode("utf-8", "surrogateescape")) for n, v in lines]
        values = [v for n, v in items if n.lower() == "x-value"]
        echo = values[0] if values else "none"
        answer = transport.written[-1]
        if "\r" in echo or "\n" in echo:
            continue
        assert b"\r\nX-Echo: " + echo.encode("utf-8", "surrogateescape") + b"\r\n" in answer
        assert b"\r\nX-Fixed: same\r\n" in answer
    conn.connection_lost(None)
    await server.shutdown(0.1)
