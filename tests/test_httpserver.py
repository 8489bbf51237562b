"""The public listener's HTTP/1.1 server, spoken to byte by byte: framing, strictness, keep-alive, disconnects, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tollgate.edge.answers import Response, error_answer
from tollgate.edge.messages import Request, StreamedAnswer
from tollgate.edge.server import HttpServer
from tollgate.errors import GatewayError, PayloadTooLarge

from .support.raw_http import Answer, read_answer

LIMIT = 1000  # body bytes the "/limited" handler accepts, like the guard stage


class Probe:
    """Handlers that echo what they were given, and record what happened to them."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False
        self.seen: list[str] = []

    async def handle(self, request: Request) -> Any:
        self.seen.append(request.path)
        if request.path == "/echo":
            body = await request.read()
            doc = {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "body": body.decode(),
                "length": request.content_length,
                "x": request.headers.getall("x-test", []),
            }
            return Response(200, orjson.dumps(doc), {"Content-Type": "application/json"})
        if request.path == "/limited":  # refuses by the declared length or while reading, as the guard does
            try:
                if request.content_length is not None and request.content_length > LIMIT:
                    raise PayloadTooLarge("too large")
                size = 0
                while chunk := await request.content.read(256):
                    size += len(chunk)
                    if size > LIMIT:
                        raise PayloadTooLarge("too large")
            except GatewayError as exc:
                return error_answer(exc, "req_test")
            return Response(200, b"ok")
        if request.path == "/slow":
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            return Response(200, b"done")
        if request.path == "/stream":
            response = StreamedAnswer(200, {"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(3):
                await response.write(b"data: %d\n\n" % i)
            await response.write_eof()
            return response
        if request.path == "/inject":
            return Response(200, b"x", {"X-Bad": "a\r\nSet-Cookie: stolen=1"})
        if request.path == "/bug":
            raise RuntimeError("a bug")
        return Response(404, b"")


@pytest.fixture
async def served() -> AsyncIterator[tuple[HttpServer, Probe]]:
    probe = Probe()
    server = HttpServer(probe.handle, max_head=4096)
    await server.start("127.0.0.1", 0)
    try:
        yield server, probe
    finally:
        probe.release.set()
        await server.shutdown(2.0)


async def _exchange(server: HttpServer, data: bytes, *, answers: int = 1, timeout: float = 3.0) -> list[Answer]:
    """Sends ``data`` as it is and reads ``answers`` responses (Content-Length, chunked, or to the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        out = []
        for _ in range(answers):
            out.append(await asyncio.wait_for(read_answer(reader), timeout))
        return out
    finally:
        writer.close()


def _post(path: str, body: bytes, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_a_request_reaches_the_handler_with_method_path_query_headers_and_body(served: Any) -> None:
    server, _ = served
    [(status, headers, body)] = await _exchange(
        server, _post("/echo?a=1&b=two", b'{"k": 1}', "X-Test: one", "x-test: two")
    )
    doc = orjson.loads(body)
    assert status == 200 and headers["content-type"] == "application/json" and "date" in headers
    assert doc == {
        "method": "POST",
        "path": "/echo",
        "query": {"a": "1", "b": "two"},
        "body": '{"k": 1}',
        "length": 8,
        "x": ["one", "two"],
    }


async def test_a_chunked_body_is_decoded_with_its_extensions_and_trailers_dropped(served: Any) -> None:
    server, _ = served
    data = (
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    [(status, _, body)] = await _exchange(server, data)
    assert status == 200 and orjson.loads(body)["body"] == "hello world" and orjson.loads(body)["length"] is None


# Malformed and ambiguous requests, one by one, directly and through nginx: tests/production/test_edge.py.


async def test_a_request_line_that_pushes_the_head_over_the_cap_is_answered_431(served: Any) -> None:
    server, probe = served
    [(status, headers, _)] = await _exchange(server, b"GET /echo?q=" + b"y" * 20_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 431 and headers["connection"] == "close" and probe.seen == []


async def test_an_endless_header_line_is_answered_431_before_it_ends(served: Any) -> None:
    server, probe = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Endless: " + b"y" * 5000)  # no end of line yet
        status, headers, _ = await asyncio.wait_for(read_answer(reader), 2)
        assert status == 431 and headers["connection"] == "close" and probe.seen == []
    finally:
        writer.close()


async def test_an_http_1_0_client_that_asks_for_keep_alive_is_told_and_kept(served: Any) -> None:
    server, _ = served
    request = b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    answers = await _exchange(server, request + request, answers=2)
    assert [(status, headers["connection"]) for status, headers, _ in answers] == [(200, "keep-alive")] * 2


async def test_pipelined_requests_are_answered_in_order_on_one_connection(served: Any) -> None:
    server, _ = served
    data = _post("/echo", b"first") + _post("/echo", b"second") + b"GET /echo?n=3 HTTP/1.1\r\nHost: t\r\n\r\n"
    answers = await _exchange(server, data, answers=3)
    assert [orjson.loads(b)["body"] for _, _, b in answers] == ["first", "second", ""]


async def test_pipelined_bodies_in_pieces_never_count_against_the_next_head(served: Any) -> None:
    server, _ = served  # a head cap of 4096 bytes: each request is over it with its body, none is without
    bodies = [b"%d" % i * 3000 for i in range(1, 4)]
    data = b"".join(_post("/echo", body, f"X-Test: {i}") for i, body in enumerate(bodies))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for i in range(0, len(data), 700):  # pieces that end inside heads, bodies and the lines between
            writer.write(data[i : i + 700])
            await writer.drain()
            await asyncio.sleep(0.01)
        answers = [await asyncio.wait_for(read_answer(reader), 2) for _ in bodies]
        assert [(status, orjson.loads(body)["body"].encode()) for status, _, body in answers] == [
            (200, b) for b in bodies
        ]
    finally:
        writer.close()


async def test_a_malformed_request_pipelined_behind_a_running_one_is_refused_after_its_answer(served: Any) -> None:
    server, probe = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\nGET /echo HTTP/1.1\r\n\r\n")  # the second has no Host
        await asyncio.wait_for(probe.started.wait(), 2)
        await asyncio.sleep(0.1)
        probe.release.set()
        first = await asyncio.wait_for(read_answer(reader), 2)
        second = await asyncio.wait_for(read_answer(reader), 2)
        assert (first[0], first[2]) == (200, b"done") and second[0] == 400 and second[1]["connection"] == "close"
        assert probe.seen == ["/slow"]
    finally:
        writer.close()


async def test_bytes_after_a_request_that_closes_the_connection_are_not_parsed(served: Any) -> None:
    server, _ = served
    data = b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n\x00\x01 not HTTP at all\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        status, headers, _ = await asyncio.wait_for(read_answer(reader), 2)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 2) == b""  # no 400 for what followed
    finally:
        writer.close()


async def test_a_request_sent_byte_by_byte_is_parsed_whole(served: Any) -> None:
    server, _ = served
    data = _post("/echo?a=1", b'{"k": 1}', "X-Test: one")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        status, _, body = await asyncio.wait_for(read_answer(reader), 5)
        assert status == 200 and orjson.loads(body)["body"] == '{"k": 1}' and orjson.loads(body)["x"] == ["one"]
    finally:
        writer.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(served: Any) -> None:
    server, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hello")
        status, _, body = await asyncio.wait_for(read_answer(reader), 2)
        assert status == 200 and orjson.loads(body)["body"] == "hello"
    finally:
        writer.close()


async def test_a_body_refused_by_its_length_gets_no_100_continue_only_the_refusal(served: Any) -> None:
    server, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"POST /limited HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in head
    finally:
        writer.close()


async def test_http_1_0_and_connection_close_end_the_connection_after_the_answer(served: Any) -> None:
    server, _ = served
    for request in (b"GET /echo HTTP/1.0\r\n\r\n", b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(request)
            status, headers, _ = await asyncio.wait_for(read_answer(reader), 2)
            assert status == 200 and headers["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
        finally:
            writer.close()


async def test_a_body_refused_by_its_length_is_not_read_and_the_client_still_gets_the_answer(served: Any) -> None:
    server, _ = served
    body = b"x" * 200_000  # sent whole, without waiting: the answer must not be lost to a reset
    [(status, headers, answer)] = await _exchange(server, _post("/limited", body))
    assert status == 413 and headers["connection"] == "close"
    assert orjson.loads(answer)["error"]["code"] == "request_too_large"


async def test_a_chunked_body_over_the_limit_is_refused_while_it_arrives(served: Any) -> None:
    server, _ = served
    chunks = b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(400)) + b"0\r\n\r\n"
    [(status, _, _)] = await _exchange(
        server, b"POST /limited HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    )
    assert status == 413


async def test_a_client_that_disconnects_cancels_its_handler(served: Any) -> None:
    server, probe = served
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(probe.started.wait(), 2)
    writer.close()
    for _ in range(100):
        if probe.cancelled:
            break
        await asyncio.sleep(0.02)
    assert probe.cancelled


async def test_a_stream_is_sent_chunked_and_keeps_the_connection(served: Any) -> None:
    server, _ = served
    answers = await _exchange(
        server, b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\nGET /echo HTTP/1.1\r\nHost: t\r\n\r\n", answers=2
    )
    (status, headers, body), (second, _, _) = answers
    assert status == 200 and headers["transfer-encoding"] == "chunked" and body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert second == 200


async def test_a_stream_to_an_http_1_0_client_ends_with_the_connection(served: Any) -> None:
    server, _ = served
    [(status, headers, body)] = await _exchange(server, b"GET /stream HTTP/1.0\r\n\r\n")
    assert status == 200 and "transfer-encoding" not in headers and body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


async def test_head_gets_the_headers_without_the_body(served: Any) -> None:
    server, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"HEAD /echo HTTP/1.1\r\nHost: t\r\n\r\nGET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: " in head
        status, _, body = await asyncio.wait_for(read_answer(reader), 2)  # the next answer follows at once
        assert status == 200 and orjson.loads(body)["method"] == "GET"
    finally:
        writer.close()


async def test_a_header_value_with_a_line_break_is_never_sent(served: Any) -> None:
    server, _ = served
    [(status, headers, body)] = await _exchange(server, b"GET /inject HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 500 and "set-cookie" not in headers and orjson.loads(body)["error"]["code"] == "internal_error"


async def test_a_handler_bug_is_a_json_500_not_a_traceback(served: Any) -> None:
    server, _ = served
    [(status, _, body)] = await _exchange(server, b"GET /bug HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 500 and orjson.loads(body)["error"]["code"] == "internal_error" and b"Traceback" not in body


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    probe = Probe()
    server = HttpServer(probe.handle, keepalive_timeout=0.3)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(read_answer(reader), 2)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed by the sweep
        writer.close()
    finally:
        await server.shutdown(1.0)


async def test_a_head_that_does_not_arrive_in_time_is_answered_408_and_counted() -> None:
    probe, refused = Probe(), []
    server = HttpServer(probe.handle, head_timeout=0.3, on_refused=refused.append)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-A: 1")  # half a head, then silence
        status, headers, body = await asyncio.wait_for(read_answer(reader), 3)
        assert (
            status == 408
            and headers["connection"] == "close"
            and orjson.loads(body)["error"]["code"] == "request_timeout"
        )
        assert refused == ["head_timeout"] and probe.seen == []
        writer.close()
    finally:
        await server.shutdown(1.0)


async def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout_without_an_answer() -> None:
    probe, refused = Probe(), []
    server = HttpServer(probe.handle, head_timeout=0.3, on_refused=refused.append)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(reader.read(), 3) == b""
        assert refused == ["head_timeout"]
        writer.close()
    finally:
        await server.shutdown(1.0)


async def test_a_kept_alive_connection_idles_by_the_keep_alive_timeout_not_the_head_timeout() -> None:
    probe = Probe()
    server = HttpServer(probe.handle, head_timeout=0.2, keepalive_timeout=5.0)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        for _ in range(2):
            writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, _ = await asyncio.wait_for(read_answer(reader), 2)
            assert status == 200
            await asyncio.sleep(0.6)  # three head timeouts of silence between requests
        writer.close()
    finally:
        await server.shutdown(1.0)


async def test_connections_past_the_cap_are_answered_503_and_closed() -> None:
    probe, refused = Probe(), []
    server = HttpServer(probe.handle, max_connections=2, on_refused=refused.append)
    await server.start("127.0.0.1", 0)
    try:
        held = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await asyncio.wait_for(read_answer(reader), 2))[0] == 200
            held.append(writer)
        [(status, headers, body)] = await _exchange(server, b"")
        assert (
            status == 503
            and headers["connection"] == "close"
            and orjson.loads(body)["error"]["type"] == "overloaded_error"
        )
        assert refused == ["connection_limit"]
        for writer in held:
            writer.close()
    finally:
        await server.shutdown(1.0)


async def test_shutdown_lets_a_request_in_flight_finish_and_closes_idle_connections() -> None:
    probe = Probe()
    server = HttpServer(probe.handle)
    await server.start("127.0.0.1", 0)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(probe.started.wait(), 2)
    stopping = asyncio.create_task(server.shutdown(5.0))
    assert await asyncio.wait_for(idle_reader.read(), 2) == b""  # the idle one is closed at once
    with pytest.raises(OSError):  # no new connections
        await asyncio.open_connection("127.0.0.1", server.port)
    probe.release.set()
    status, headers, body = await asyncio.wait_for(read_answer(reader), 2)
    assert (status, body, headers["connection"]) == (200, b"done", "close")
    await asyncio.wait_for(stopping, 5)
    assert not probe.cancelled
    writer.close()
    idle_writer.close()


async def test_shutdown_cancels_what_outlives_the_grace_period() -> None:
    probe = Probe()
    server = HttpServer(probe.handle)
    await server.start("127.0.0.1", 0)
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(probe.started.wait(), 2)
    await asyncio.wait_for(server.shutdown(0.2), 3)
    assert probe.cancelled
    writer.close()


async def test_an_answer_that_cannot_be_written_closes_the_connection_instead_of_hanging() -> None:
    async def unwritable(request: Request) -> Any:
        return Response(200, b"{}", {"X-Count": 3})  # type: ignore[dict-item]  # a header value that is not text

    server = HttpServer(unwritable)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()
    finally:
        await server.shutdown(1.0)
