"""An upstream call that fails before its answer (refused, or answered with something that is not HTTP) is the
gateway's 502 with the code that says which, on the interpreted and the compiled package alike.

The whole gateway in-process (no rules), a raw client.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator

import orjson
import pytest

from tollgate.config import load_config
from tollgate.process.public import make_public_server, public_lifecycle
from tollgate.runtime.state import GatewayState

from ..support.processes import refusing_port
from ..support.raw_http import read_answer

CONFIG = """\
listeners:
  public: {host: 127.0.0.1, port: 0}
  admin: {enabled: false}
upstreams:
  broken: {base_url: "http://127.0.0.1:$port/v1"}
models:
  gpt-4o-mini: {deployments: [{upstream: broken}]}
"""
BODY = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})


async def _gateway(upstream_port: int) -> AsyncIterator[int]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(CONFIG.replace("$port", str(upstream_port)))
    try:
        state = GatewayState(load_config(f.name))
    finally:
        os.unlink(f.name)
    async with public_lifecycle(state):
        server = make_public_server(state)
        port = await server.start("127.0.0.1", 0)
        yield port
        await server.shutdown(0.5)


async def _post(port: int) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    writer.write(head + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
    answer = await asyncio.wait_for(read_answer(reader), 5)
    writer.close()
    return answer.status, orjson.loads(answer.body)["error"]["code"]


async def test_an_upstream_refusing_the_connection_is_a_502_upstream_connect_error() -> None:
    async for port in _gateway(refusing_port()):
        assert await _post(port) == (502, "upstream_connect_error")


@pytest.mark.parametrize("answer", [b"not http at all\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"])
async def test_an_upstream_answering_what_is_not_http_is_a_502_upstream_error(answer: bytes) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    origin = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        async for port in _gateway(origin.sockets[0].getsockname()[1]):
            assert await _post(port) == (502, "upstream_error")
    finally:
        origin.close()
