"""Header bytes through the public listener's server: what a handler reads of a request's header values, and what an
answer's header lines become on the wire, whatever the bytes (UTF-8, undecodable, framing names in any case)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tollgate.edge.answers import Response
from tollgate.edge.messages import Request
from tollgate.edge.server import HttpServer


async def _handle(request: Request) -> Any:
    values = request.headers.getall("x-value", [])
    doc = {"values": [v.encode("utf-8", "surrogateescape").hex() for v in values], "raw": len(request.raw_headers)}
    headers = {
        "Content-Type": "application/json",
        "X-Echo": values[0] if values else "",  # the client's bytes back, undecodable ones included
        "content-length": "999",  # framing: the server writes its own
        "Connection": "close",
        "DATE": "yesterday",
        "x-Mixed-Case": "kept",
    }
    return Response(200, orjson.dumps(doc), headers)


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    server = HttpServer(_handle)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown(1.0)


async def _raw_exchange(server: HttpServer, value: bytes, times: int = 2) -> list[bytes]:
    """Sends a request with ``X-Value: value`` ``times`` times on one connection; each answer's raw bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    answers = []
    try:
        for _ in range(times):
            writer.write(b"GET /h HTTP/1.1\r\nHost: t\r\nX-Value: " + value + b"\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            length = int(next(line for line in head.split(b"\r\n") if line.startswith(b"Content-Length: "))[16:])
            answers.append(head + await reader.readexactly(length))
    finally:
        writer.close()
    return answers


@pytest.mark.parametrize(
    "value",
    [b"plain ascii", "caf\u00e9 \u2713".encode(), b"\xff\xfe not utf-8 \xe9", b"trailing blanks \t "],
    ids=["ascii", "utf-8", "undecodable", "trailing-whitespace"],
)
async def test_a_header_value_reaches_the_handler_and_goes_back_byte_for_byte(server: HttpServer, value: bytes) -> None:
    for answer in await _raw_exchange(server, value):
        head, _, body = answer.partition(b"\r\n\r\n")
        doc = orjson.loads(body)
        expected = value.rstrip(b" \t")  # llhttp drops the blanks before a value; the server those after it
        assert doc["values"] == [expected.hex()] and doc["raw"] == 2
        assert b"\r\nX-Echo: " + expected + b"\r\n" in head + b"\r\n"


async def test_framing_headers_a_handler_sets_in_any_case_are_replaced_by_the_servers_own(server: HttpServer) -> None:
    first, second = await _raw_exchange(server, b"v")
    for answer in (first, second):  # the second answer goes through the server's kept header prefixes
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        names = [line.split(b":", 1)[0].lower() for line in lines[1:]]
        assert lines[0] == b"HTTP/1.1 200 OK"
        assert names.count(b"content-length") == 1 and f"Content-Length: {len(body)}".encode() in lines
        assert names.count(b"date") == 1 and b"Date: yesterday" not in lines
        assert b"connection" not in names  # a kept-alive HTTP/1.1 answer: no Connection header
        assert b"x-Mixed-Case: kept" in lines and b"Content-Type: application/json" in lines
