"""Whole chunks taken without llhttp where it waits at a chunk's start: the body, its end and its errors are what
llhttp alone makes of the same bytes in the same pieces, whatever the chunking, the split and the framing's faults."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httptools
import pytest

from tollgate.upstream.client import _DONE, _UpstreamConnection

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _Reference:
    """llhttp alone: the body it hands on, and whether the answer ended, failed or goes on."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body = b""
        self.complete = False

    def on_body(self, data: bytes) -> None:
        self.body += data

    def on_message_complete(self) -> None:
        self.complete = True

    def run(self, pieces: list[bytes]) -> tuple[bytes, str]:
        for piece in pieces:
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserError:
                return self.body, "failed"
        return self.body, "done" if self.complete else "open"


def _gateway(pieces: list[bytes]) -> tuple[bytes, str]:
    """The connection's body as its reader takes it (and what it had taken in when it failed), and its end."""
    loop = asyncio.new_event_loop()
    try:
        conn = _UpstreamConnection(loop)
        conn.connection_made(_Transport())
        conn.send(b"GET / HTTP/1.1\r\n\r\n", False)
        body = b""
        for piece in pieces:
            conn.data_received(piece)
            if conn.error is not None:
                return body + b"".join(conn.body), "failed"
            body += conn.take() or b""
        return body, "done" if conn.state == _DONE else "open"
    finally:
        loop.close()


def _chunk(data: bytes, rng: random.Random) -> bytes:
    form = rng.choice(["%x", "%X", "0%x", "%x", "%x"])
    size = (form % len(data)).encode()
    if rng.random() < 0.05:
        size += b";ext=1"
    return size + b"\r\n" + data + b"\r\n"


def _body(rng: random.Random) -> bytes:
    chunks = [_chunk(bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 5, 17, 300]))), rng) for _ in range(6)]
    end = b"0\r\n\r\n" if rng.random() < 0.9 else b"0\r\nX-Trailer: 1\r\n\r\n"
    raw = b"".join(chunks) + end
    fault = rng.random()
    if fault < 0.1:  # a byte changed in the framing or the data
        at = rng.randrange(len(raw))
        raw = raw[:at] + bytes([rng.choice(b"\r\n0aZ; ")]) + raw[at + 1 :]
    elif fault < 0.15:  # a first chunk whose size runs past the bytes meant for it
        raw = b"ff\r\n" + raw
    elif fault < 0.2:  # a chunk's CRLF after its bytes missing
        at = raw.index(b"\r\n", raw.index(b"\r\n") + 2)
        raw = raw[:at] + raw[at + 2 :]
    return raw


def _split(raw: bytes, rng: random.Random) -> list[bytes]:
    if rng.random() < 0.3:  # at chunk ends, as a paced stream's pieces come
        pieces = [part + b"\r\n" for part in raw.split(b"\r\n")[:-1]]
        joined: list[bytes] = []
        for part in pieces:
            if joined and rng.random() < 0.5:
                joined[-1] += part
            else:
                joined.append(part)
        return joined
    cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randrange(1, 12))))
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]


@pytest.mark.parametrize("seed", range(40))
def test_the_body_and_its_end_are_llhttp_s_whatever_the_pieces(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(100):
        raw = _body(rng)
        first = rng.choice([HEAD, HEAD + raw[: rng.randrange(len(raw))]])
        rest = raw[len(first) - len(HEAD) :]
        pieces = [first, *_split(rest, rng)] if rest else [first]
        expected = _Reference().run(pieces)
        body, end = _gateway(pieces)
        assert (body, end) == expected, pieces


def test_the_usual_stream_feeds_llhttp_its_head_and_its_end_only() -> None:
    events = [b'%x\r\ndata: {"n": %d}\n\n\r\n' % (len(b'data: {"n": %d}\n\n' % i), i) for i in range(20)]
    loop = asyncio.new_event_loop()
    try:
        conn = _UpstreamConnection(loop)
        conn.connection_made(_Transport())
        conn.send(b"GET / HTTP/1.1\r\n\r\n", False)
        conn.data_received(HEAD + events[0])
        assert conn.chunk_end
        assert conn.take() == b'data: {"n": 0}\n\n'
        parser = conn.parser
        conn.parser = None  # any feed now fails on the assert: none happens
        for i, event in enumerate(events[1:], 1):
            conn.data_received(event)
            assert conn.take() == b'data: {"n": %d}\n\n' % i
        conn.data_received(events[1] + events[2])  # two at once
        assert conn.take() == b'data: {"n": 1}\n\ndata: {"n": 2}\n\n'
        conn.parser = parser
        conn.data_received(events[3][:3])  # a split piece: llhttp's until a chunk ends again
        assert not conn.chunk_end
        conn.data_received(events[3][3:])
        assert conn.chunk_end
        assert conn.take() == b'data: {"n": 3}\n\n'
        # A piece that ends inside a size line, after a chunk's end: the next is read from there, not as a chunk.
        data = b"X\r\n" + b"y" * 14
        conn.data_received(b"1")
        assert not conn.chunk_end
        conn.data_received(b"1\r\n" + data + b"\r\n")
        assert conn.take() == data
        conn.data_received(b"0\r\n\r\n")
        assert conn.state == _DONE and conn.take() == b""
    finally:
        loop.close()
