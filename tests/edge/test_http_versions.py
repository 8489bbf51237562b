"""The request's HTTP version as the server reads it: from the read's first line when the read begins with the head,
from llhttp otherwise; both ways must agree, whatever the reads' boundaries (pipelined heads, split heads, bodies)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tollgate.edge.answers import Response
from tollgate.edge.messages import Request
from tollgate.edge.server import HttpServer

from ..support.raw_http import Answer, read_answer


async def _handle(request: Request) -> Any:
    body = await request.read()
    return Response(200, orjson.dumps({"version": request.version, "body": body.decode()}))


@pytest.fixture
async def server() -> AsyncIterator[HttpServer]:
    server = HttpServer(_handle)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.shutdown(1.0)


async def _answers(server: HttpServer, writes: list[bytes], count: int) -> tuple[list[Answer], bytes]:
    """Each of ``writes`` in its own read, then ``count`` answers and what follows them until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for data in writes:
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(0.02)
        answers = [await asyncio.wait_for(read_answer(reader), 3) for _ in range(count)]
        return answers, await asyncio.wait_for(reader.read(), 3)
    finally:
        writer.close()


def _versions(answers: list[Answer]) -> list[tuple[int, int, str | None]]:
    return [(status, orjson.loads(body)["version"], headers.get("connection")) for status, headers, body in answers]


async def test_pipelined_heads_of_both_versions_in_one_read_are_each_read_as_sent(server: HttpServer) -> None:
    # The first head begins the read (its version read from the line); the others follow a request in the same read.
    data = b"GET /v HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /v HTTP/1.1\r\nHost: t\r\n\r\nGET /v HTTP/1.0\r\n\r\n"
    answers, rest = await _answers(server, [data], 3)
    assert _versions(answers) == [(200, 0, "keep-alive"), (200, 1, None), (200, 0, "close")] and rest == b""


async def test_a_head_split_across_reads_and_one_after_a_body_keep_their_versions(server: HttpServer) -> None:
    writes = [
        b"GET /v HTT",  # the version arrives in the second read
        b"P/1.1\r\nHost: t\r\n\r\n",
        b"POST /v HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\n",  # this read begins with its head
        # and this one with its body, whose first line looks like a request line's end: the next head's is after it
        b"x HTTP/1.1\r\nGET /v HTTP/1.0\r\n\r\n",
    ]
    answers, rest = await _answers(server, writes, 3)
    assert _versions(answers) == [(200, 1, None), (200, 1, None), (200, 0, "close")] and rest == b""
    assert orjson.loads(answers[1][2])["body"] == "x HTTP/1.1\r\n"


@pytest.mark.parametrize("line", [b"GET /v HTTP/1.2", b"GET /v HTTP/2.0", b"GET /v HTTP/0.9"])
async def test_another_version_at_the_start_of_a_read_is_refused(server: HttpServer, line: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(line + b"\r\nHost: t\r\n\r\n")
        status, headers, _ = await asyncio.wait_for(read_answer(reader), 3)
        assert status == 400 and headers["connection"] == "close"
    finally:
        writer.close()
