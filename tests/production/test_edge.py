"""The public listener byte for byte, on a real gateway: malformed and ambiguous requests directly and through nginx, slow heads, the connection cap.

Each row of ``CASES`` is sent as it is on a fresh connection, once straight to
the gateway and once to nginx running ``config/nginx.conf`` in front of it,
and names what the client must see each way: one answer with that status
(then the connection closed when it is a refusal), or the connection closed
without an answer. Rows that could smuggle carry a second, valid request
where a lenient parser would see the end of the first; the mock upstream must
never receive it, and a well-formed request sent next must get its own answer.

nginx decides some rows differently, by its own rules: it accepts bare LF line
ends, a space after a chunk size and HTTP/1.2, drops a header whose name is
not a token, answers HTTP/0.9 with a bare body and refuses some framing with
501; what it passes on it rewrites into a well-formed request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..support.processes import Proc, gateway_config, gateway_process
from ..support.raw_http import finish_answer

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

ADMIN_TOKEN = "admin-token-for-edge-tests-0123456789"
HEAD_TIMEOUT = 2.0  # server.head_timeout of the gateway under test
CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
POST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw.test\r\nContent-Type: application/json\r\n"
# What a lenient parser would take for a second request: valid, and marked so that the upstream can tell.
SMUGGLED = POST + b"x-request-id: smuggled\r\nContent-Length: %d\r\n\r\n%b" % (len(CHAT), CHAT)


def _chunked(size_line: bytes) -> bytes:
    """A chunked body of CHAT whose first chunk-size line is ``size_line`` (the rest is well-formed)."""
    return POST + b"Transfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\n" + CHAT + b"\r\n0\r\n\r\n"


BODY_ONLY = 0  # an answer without a status line: how nginx answers an HTTP/0.9 request


@dataclass(frozen=True)
class Case:
    id: str
    data: bytes
    direct: int | None  # status the gateway answers (None: it closes without an answer)
    nginx: int | None  # what the client sees through nginx, which refuses much of this itself


LENGTH = b"Content-Length: %d\r\n" % len(CHAT)
CASES = [
    # Framing: two ways to find the body's end must never both be believed.
    Case("cl-and-te", POST + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400, 400),
    Case("te-and-cl", POST + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n" + SMUGGLED, 400, 400),
    Case("two-lengths", POST + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED) + SMUGGLED, 400, 400),
    Case("same-length-twice", POST + LENGTH + LENGTH + b"\r\n" + CHAT, 400, 400),
    Case("length-list", POST + b"Content-Length: %d, %d\r\n\r\n" % (len(CHAT), len(CHAT)) + CHAT, 400, 400),
    Case("signed-length", POST + b"Content-Length: +%d\r\n\r\n" % len(CHAT) + CHAT, 400, 400),
    Case("hex-length", POST + b"Content-Length: 0x10\r\n\r\n" + CHAT, 400, 400),
    Case("te-gzip-then-chunked", POST + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, 501),
    Case("te-not-ending-in-chunked", POST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n" + SMUGGLED, 400, 501),
    Case("te-gzip-only", POST + b"Transfer-Encoding: gzip\r\n\r\n" + SMUGGLED, 400, 501),
    Case(
        "te-on-two-lines",
        POST + b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
        400,
    ),
    Case("te-vertical-tab", POST + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 400, 501),
    Case(
        "te-over-http-1.0",
        b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
        400,
    ),
    Case("chunk-size-leading-space", _chunked(b" %x" % len(CHAT)), 400, 400),
    Case("chunk-size-trailing-space", _chunked(b"%x " % len(CHAT)), 400, 200),
    Case("chunk-extension-bare-lf", _chunked(b"%x;a\nb" % len(CHAT)), 400, 400),
    Case(
        "chunk-size-bare-lf",
        POST + b"Transfer-Encoding: chunked\r\n\r\n%x\n" % len(CHAT) + CHAT + b"\r\n0\r\n\r\n",
        400,
        200,
    ),
    Case("chunk-size-overflow", _chunked(b"1" + b"0" * 16), 400, 400),
    Case("chunk-without-crlf", POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", 400, 400),
    # Header lines.
    Case("space-before-colon", POST + b"Content-Length : %d\r\n\r\n" % len(CHAT) + CHAT, 400, 400),
    Case("obs-fold", POST + LENGTH + b"X-A: 1\r\n folded\r\n\r\n" + CHAT, 400, 400),
    Case("fold-on-first-line", b"GET /healthz HTTP/1.1\r\n Host: gw.test\r\n\r\n", 400, 400),
    Case("nul-in-value", POST + LENGTH + b"X-A: a\x00b\r\n\r\n" + CHAT, 400, 400),
    Case("control-char-in-value", POST + LENGTH + b"X-A: a\x01b\r\n\r\n" + CHAT, 400, 400),
    Case("del-in-value", POST + LENGTH + b"X-A: a\x7fb\r\n\r\n" + CHAT, 400, 400),
    Case("non-token-name", POST + LENGTH + b"X(A): 1\r\n\r\n" + CHAT, 400, 200),
    Case("empty-name", POST + LENGTH + b": 1\r\n\r\n" + CHAT, 400, 400),
    Case("bare-lf-line", b"GET /healthz HTTP/1.1\r\nHost: gw.test\nX-A: 1\r\n\r\n", 400, 200),
    Case("bare-lf-head", b"GET /healthz HTTP/1.1\nHost: gw.test\n\n", 400, 200),
    Case("bare-lf-head-end", b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\n\n", 400, 200),
    Case("bare-cr", b"GET /healthz HTTP/1.1\r\nHost: gw.test\rX-A: 1\r\n\r\n", 400, 400),
    # Host (RFC 9112 3.2): exactly one on HTTP/1.1, a valid one.
    Case("no-host", b"GET /healthz HTTP/1.1\r\n\r\n", 400, 400),
    Case("two-hosts", b"GET /healthz HTTP/1.1\r\nHost: a.gw.test\r\nHost: b.gw.test\r\n\r\n", 400, 400),
    Case("invalid-host", b"GET /healthz HTTP/1.1\r\nHost: a b\r\n\r\n", 400, 400),
    Case("http-1.0-without-host", b"GET /healthz HTTP/1.0\r\n\r\n", 200, 200),
    # The request line.
    Case("absolute-form", b"GET http://gw.test/healthz HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400, 200),
    Case("authority-form", b"CONNECT gw.test:443 HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400, 400),
    Case("http-2.0", b"GET /healthz HTTP/2.0\r\nHost: gw.test\r\n\r\n", 400, 505),
    Case("http-1.2", b"GET /healthz HTTP/1.2\r\nHost: gw.test\r\n\r\n", 400, 200),
    Case("http-0.9", b"GET /healthz\r\n\r\n", 400, BODY_ONLY),
    Case("lowercase-version", b"GET /healthz http/1.1\r\nHost: gw.test\r\n\r\n", 400, 400),
    Case("unknown-method", b"BREW /healthz HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400, 400),
    Case("lowercase-method", b"get /healthz HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400, 400),
    Case("control-char-in-target", b"GET /heal\x01thz HTTP/1.1\r\nHost: gw.test\r\n\r\n", 400, 400),
    Case("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, 400),
    Case("upgrade-with-body", POST + LENGTH + b"Connection: Upgrade\r\nUpgrade: h2c\r\n\r\n" + CHAT, 400, 200),
    Case(
        "upgrade-ignored",
        b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        200,
        200,
    ),
    # Size: the gateway's head cap is 64 KiB (twice guard.max_header_bytes, at least 64 KiB).
    Case(
        "head-over-the-cap",
        b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\nX-Big: " + b"y" * 70_000 + b"\r\n\r\n",
        431,
        400,
    ),
    Case(
        "request-line-over-the-cap",
        b"GET /healthz?q=" + b"y" * 70_000 + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n",
        431,
        414,
    ),
    Case(
        "513-header-lines",
        b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\n" + b"".join(b"a%d: 1\r\n" % i for i in range(513)) + b"\r\n",
        431,
        431,
    ),
]


@dataclass
class Outcome:
    statuses: list[int]
    closed: bool


async def exchange(port: int, data: bytes, *, wait: float = 5.0) -> Outcome:
    """Send ``data`` as it is; read every answer that comes until the server closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    statuses: list[int] = []
    closed = False
    try:
        writer.write(data)
        with_answers = wait
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), with_answers)
            except asyncio.IncompleteReadError as exc:
                closed = True
                if exc.partial:
                    assert not exc.partial.startswith(b"HTTP/"), f"a partial answer: {exc.partial[:200]!r}"
                    statuses.append(BODY_ONLY)
                break
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            except TimeoutError:
                break
            status = (await finish_answer(reader, head)).status
            if status != 100:
                statuses.append(status)
            with_answers = 0.5  # after an answer, a second one would follow at once
    finally:
        writer.close()
    return Outcome(statuses, closed)


def _config(mock: Proc, **server: object) -> dict[str, object]:
    return gateway_config(
        f"{mock.url}/v1",
        guard={"max_header_bytes": "16KiB"},
        server={"head_timeout": f"{HEAD_TIMEOUT}s", **server},
        listeners={"admin": {"enabled": True, "token": ADMIN_TOKEN}},
    )


@pytest.fixture(scope="module")
def gateway(mock: Proc) -> Iterator[Proc]:
    with gateway_process(_config(mock)) as proc:
        yield proc


async def _smuggled_requests(mock: Proc) -> list[str]:
    async with aiohttp.ClientSession() as s, s.get(f"{mock.url}/_mock/requests") as r:
        data = await r.json()
    seen = data["requests"] if isinstance(data, dict) else data
    return [v for item in seen for k, v in item["headers"] if k.lower() == "x-request-id" and v.startswith("smuggled")]


async def _still_serves(port: int) -> None:
    """A well-formed request on a new connection gets its own answer (no leftover answer of a smuggled one)."""
    outcome = await exchange(port, POST + LENGTH + b"Connection: close\r\nx-request-id: after\r\n\r\n" + CHAT)
    assert outcome.statuses == [200], outcome


def _expect(outcome: Outcome, status: int | None, *, refusal_closes: bool) -> None:
    if status is None:
        assert outcome.statuses == [] and outcome.closed, outcome
        return
    assert outcome.statuses == [status], outcome
    if status >= 400 and refusal_closes:
        assert outcome.closed, "a refused request must close its connection"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_malformed_or_ambiguous_request_sent_to_the_gateway_gets_its_one_answer(
    case: Case, gateway: Proc, mock: Proc
) -> None:
    started = time.monotonic()
    _expect(await exchange(gateway.port, case.data), case.direct, refusal_closes=True)
    assert time.monotonic() - started < HEAD_TIMEOUT, "answered at once, not after a timeout"
    assert await _smuggled_requests(mock) == []
    await _still_serves(gateway.port)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_a_malformed_or_ambiguous_request_sent_through_nginx_gets_one_answer_and_smuggles_nothing(
    case: Case, nginx: Proc, mock: Proc
) -> None:
    # nginx keeps its client's connection when the gateway refused what nginx passed on.
    _expect(await exchange(nginx.port, case.data), case.nginx, refusal_closes=False)
    assert await _smuggled_requests(mock) == []
    await _still_serves(nginx.port)


async def _refused(gateway: Proc, reason: str) -> float:
    """``tollgate_http_refused_total{reason}`` as the admin listener's /metrics shows it."""
    url = f"http://127.0.0.1:{gateway.extra_ports['admin']}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert r.status == 200
        text = await r.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tollgate_http_refused_total" and sample.labels.get("reason") == reason
    )


async def _answer_then_close(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when the close came."""
    data = await asyncio.wait_for(reader.read(), HEAD_TIMEOUT + 10)
    return data, time.monotonic()


async def test_slow_heads_get_408_and_are_closed_after_the_head_timeout_while_other_clients_are_served(
    gateway: Proc,
) -> None:
    before = await _refused(gateway, "head_timeout")
    connections = []
    for _ in range(300):
        # Timed from before the connect: the server's head timer cannot start earlier, however slow this loop runs.
        opened = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(POST + b"X-Half: a head that never ends")  # half a head, then nothing
        connections.append((reader, writer, opened))
    await _still_serves(gateway.port)  # slow clients hold nothing up
    outcomes = await asyncio.gather(*(_answer_then_close(reader) for reader, _, _ in connections))
    for _, writer, _ in connections:
        writer.close()
    assert all(data.startswith(b"HTTP/1.1 408 ") for data, _ in outcomes), {data[:40] for data, _ in outcomes}
    waited = [closed - opened for (_, closed), (_, _, opened) in zip(outcomes, connections, strict=True)]
    assert min(waited) >= HEAD_TIMEOUT * 0.9  # not before the timeout ...
    assert max(waited) < HEAD_TIMEOUT + 4.0  # ... and not much after it
    assert await _refused(gateway, "head_timeout") - before == 300


async def test_past_the_connection_cap_new_connections_get_503_and_the_cap_frees_as_connections_close(
    mock: Proc,
) -> None:
    with gateway_process(_config(mock, head_timeout="30s", max_connections=8)) as gateway:
        healthz = b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        held = []
        for _ in range(8):  # answered, so the server has certainly accepted each; then kept alive
            reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
            writer.write(healthz)
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200 ")
            held.append((reader, writer))
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        data, _ = await _answer_then_close(reader)
        writer.close()
        assert data.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in data
        assert await _refused(gateway, "connection_limit") == 1
        held.pop()[1].close()
        await asyncio.sleep(0.3)
        assert (
            await exchange(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
        ).statuses == [200]
        for _, writer in held:
            writer.close()
