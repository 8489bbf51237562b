"""The lean ceiling: a uvloop + httptools pass-through, callbacks only, keep-alive upstream connections.

llhttp parses both directions (the client's requests, the upstream's answers, its chunked decoder included).
Per request: the client's headers minus hop-by-hop ones and its credential, the upstream's Host and key added,
the body buffered and sent with its length in one write on a pooled connection; the answer relayed as it
arrives, with its length or re-chunked (SSE streams), one write per read from the upstream. No task per
request (only to open a connection), no request object: what a Python proxy cannot do with less.
"""

from __future__ import annotations

import asyncio
import collections
import signal
from urllib.parse import urlsplit

import httptools
from proxy_cli import run_proxy

__all__ = ["LeanProxy", "Origin", "main"]

# Not forwarded: hop-by-hop headers, framing recomputed here, the client's credential and Host.
_REQUEST_DROPPED = frozenset(
    b"connection keep-alive proxy-authorization proxy-connection te trailer transfer-encoding upgrade host "
    b"content-length authorization expect".split()
)
_ANSWER_DROPPED = frozenset(
    b"connection keep-alive proxy-authenticate proxy-connection te trailer transfer-encoding upgrade content-length".split()
)
MAX_BODY = 16 << 20


def _error(status: int, reason: bytes, message: bytes) -> bytes:
    body = b'{"error":{"message":"%s","type":"proxy_error"}}' % message
    head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % (status, reason, len(body)) + body


class Origin:
    """The upstream: where requests go, the headers every request gets, the idle keep-alive connections."""

    def __init__(self, base_url: str, api_key: str | None, max_idle: int = 256) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = parts.path.rstrip("/").encode()
        self.added = b"Host: %s\r\n" % parts.netloc.encode()
        if api_key:
            self.added += b"Authorization: Bearer %s\r\n" % api_key.encode()
        self.idle: list[UpstreamConnection] = []
        self.max_idle = max_idle
        self.connecting: set[asyncio.Task[None]] = set()

    def send(self, client: LeanProxy, request: bytes) -> None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.transport.is_closing():
                conn.send(client, request)
                return
        task = asyncio.get_running_loop().create_task(self._connect_and_send(client, request))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect_and_send(self, client: LeanProxy, request: bytes) -> None:
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                lambda: UpstreamConnection(self), self.host, self.port
            )
        except OSError:
            client.answer_failed(b"upstream connect failed")
            return
        if client.transport.is_closing():  # the client left meanwhile
            self.idle.append(conn)
        else:
            conn.send(client, request)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to the origin: writes a request, relays the answer's bytes to its client."""

    def __init__(self, origin: Origin) -> None:
        self.origin, self.client, self.reason = origin, None, b"OK"
        self.parser = httptools.HttpResponseParser(self)
        self.chunked = self.complete = self.reusable = False
        self.head: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def send(self, client: LeanProxy, request: bytes) -> None:
        self.client, client.upstream, self.complete = client, self, False
        self.transport.write(request)

    def on_message_begin(self) -> None:
        self.head = []

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.append(name)
        self.head.append(value)

    def on_headers_complete(self) -> None:
        status, client, head = self.parser.get_status_code(), self.client, self.head
        out, length = [b"HTTP/1.1 %d %s\r\n" % (status, self.reason)], None
        for i in range(0, len(head), 2):
            name = head[i].lower()
            if name == b"content-length":
                length = head[i + 1]
            elif name not in _ANSWER_DROPPED:
                out.append(b"%s: %s\r\n" % (head[i], head[i + 1]))
        bodiless = status in (204, 304)
        self.chunked = length is None and client.http11 and not bodiless
        if length is not None:
            out.append(b"Content-Length: %s\r\n" % length)
        elif self.chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        elif not bodiless:
            client.keep_alive = False  # an HTTP/1.0 client: the end of the body is the end of the connection
        out.append(b"\r\n" if client.keep_alive else b"Connection: close\r\n\r\n")
        client.out += out

    def on_body(self, data: bytes) -> None:
        self.client.out += (b"%x\r\n" % len(data), data, b"\r\n") if self.chunked else (data,)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.client.out.append(b"0\r\n\r\n")
        self.complete, self.reusable = True, self.parser.should_keep_alive()  # only known until the message ends

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:  # bytes while idle: not HTTP any more
            self.transport.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.client = client.upstream = None
            self.transport.close()
            client.answer_failed(b"upstream answer malformed")
            return
        client.flush()
        if self.complete:
            self.client = client.upstream = None
            if self.reusable and len(self.origin.idle) < self.origin.max_idle:
                self.origin.idle.append(self)
            else:
                self.transport.close()
            client.answer_done()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client is not None:  # mid-answer: the client gets a 502 or, once its head went out, a reset
            self.client.upstream = None
            self.client.answer_failed(b"upstream closed the connection")
            self.client = None


class LeanProxy(asyncio.Protocol):
    """One client connection: requests parsed by llhttp, answered in order (pipelined ones queue)."""

    def __init__(self, origin: Origin) -> None:
        self.origin, self.parser = origin, httptools.HttpRequestParser(self)
        # Each request: what goes upstream, or the answer given here instead; keep-alive; HTTP/1.1.
        self.queue: collections.deque[tuple[bytes, bytes, bool, bool]] = collections.deque()
        self.upstream: UpstreamConnection | None = None
        self.busy, self.started, self.keep_alive, self.http11, self.out = False, False, True, True, []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.size = b"", [], [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower not in _REQUEST_DROPPED:
            self.headers.append(b"%s: %s\r\n" % (name, value))
        elif lower == b"expect" and value.lower() == b"100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_BODY:
            raise ValueError("body too large")
        self.body.append(data)

    def on_message_complete(self) -> None:
        parser, body, request, answer = self.parser, b"".join(self.body), b"", b""
        if parser.get_method() != b"POST" or not self.url.startswith(b"/v1/"):
            answer = _error(404, b"Not Found", b"only POST under /v1/ is forwarded")
        else:
            head = b"POST %s HTTP/1.1\r\n%s%sContent-Length: %d\r\n\r\n"
            path = self.origin.path + self.url[3:]
            request = head % (path, b"".join(self.headers), self.origin.added, len(body)) + body
        self.queue.append((request, answer, parser.should_keep_alive(), parser.get_http_version() == "1.1"))
        if not self.busy:
            self.next_request()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.queue.append((b"", _error(400, b"Bad Request", b"malformed or too large"), False, True))
            if not self.busy:
                self.next_request()
            self.transport.pause_reading()  # nothing more is parsed on this connection

    def next_request(self) -> None:
        request, answer, self.keep_alive, self.http11 = self.queue.popleft()
        self.busy, self.started = True, False
        if request:
            self.origin.send(self, request)
        else:
            self.out.append(answer)
            self.flush()
            self.answer_done()

    def flush(self) -> None:
        if self.out:
            self.transport.write(b"".join(self.out))
            self.out, self.started = [], True

    def answer_done(self) -> None:
        self.busy = False
        if not self.keep_alive:
            self.transport.close()
        elif self.queue:
            self.next_request()

    def answer_failed(self, message: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.started:  # part of the answer went out: only a reset tells the client
            self.transport.abort()
            return
        self.out.append(_error(502, b"Bad Gateway", message))
        self.flush()
        self.answer_done()

    def pause_writing(self) -> None:  # a slow client holds the upstream back instead of buffering its stream
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None:
            self.upstream.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:  # a half-read answer never goes back to the pool
            self.upstream.client = None
            self.upstream.transport.close()
            self.upstream = None


async def serve(host: str, port: int, upstream: str, api_key: str | None) -> None:
    loop = asyncio.get_running_loop()
    origin = Origin(upstream, api_key)
    server = await loop.create_server(lambda: LeanProxy(origin), host, port, backlog=2048)
    print(f"lean proxy on http://{host}:{port}/v1 -> {upstream}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    run_proxy(__doc__.splitlines()[0], serve)


if __name__ == "__main__":
    main()
