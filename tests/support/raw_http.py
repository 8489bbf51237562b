"""Read HTTP/1.1 answers off a raw connection one at a time, their framing decoded by llhttp (httptools), as the gateway's.

Tests that speak to a server byte by byte read each answer whole and leave
what follows it unread (a pipelined answer, or the server closing). The head
is read up to its blank line; the body as llhttp frames it: a
``Content-Length`` body read whole, a chunked body line by line (each chunk,
its size line and the last chunk end in CRLF) until llhttp has decoded its
end, any other body until the server closes.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import httptools

__all__ = ["Answer", "finish_answer", "read_answer"]


class Answer(NamedTuple):
    """One answer: its status, its headers (lower-case names, the last of a repeated name), its decoded body."""

    status: int
    headers: dict[str, str]
    body: bytes


class _Parts:
    """llhttp's callbacks for one answer: its header lines until the head ends (not trailers), its body pieces."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.in_head = True
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:
            self.headers[name.decode("latin-1").lower()] = value.decode("utf-8", "surrogateescape").strip()

    def on_headers_complete(self) -> None:
        self.in_head = False

    def on_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_message_complete(self) -> None:
        self.complete = True


async def finish_answer(reader: asyncio.StreamReader, head: bytes) -> Answer:
    """The answer whose ``head`` (through its blank line) has been read from ``reader``: its body is read now."""
    parts = _Parts()
    parser = httptools.HttpResponseParser(parts)
    parser.feed_data(head)
    if not parts.complete:  # an interim answer, a 204 or an empty body ends with its head
        if "content-length" in parts.headers:
            parser.feed_data(await reader.readexactly(int(parts.headers["content-length"])))
        elif parts.headers.get("transfer-encoding") == "chunked":
            while not parts.complete:
                parser.feed_data(await reader.readuntil(b"\r\n"))
        else:  # delimited by the server closing the connection
            parser.feed_data(await reader.read())
    return Answer(parser.get_status_code(), parts.headers, b"".join(parts.body))


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """The next answer on ``reader``, after any ``100 Continue``."""
    while True:
        answer = await finish_answer(reader, await reader.readuntil(b"\r\n\r\n"))
        if answer.status != 100:
            return answer
