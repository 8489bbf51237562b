"""SIGTERM is a drain: no new connections, open streams finish (up to server.shutdown_grace), exit 0."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from typing import Any

import aiohttp
import pytest

from ..support.processes import Proc, gateway_config
from .support import read_stream, served_gateway

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"), pytest.mark.mock_upstream("--no-record")]

STREAMS = 20
PACE = {"x-mock-tokens-per-second": "10"}  # 20 tokens: about two seconds per stream


def _config(mock: Proc, redis_url: str, workers: int, **extra: Any) -> dict[str, Any]:
    store = {"backend": "redis", "url": redis_url} if workers > 1 else {"backend": "embedded"}
    return gateway_config(f"{mock.url}/v1", store=store, **extra)


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_during_20_open_streams_lets_all_20_finish_then_exits_0(
    mock: Proc, redis_url: str, workers: int
) -> None:
    with served_gateway(_config(mock, redis_url, workers), workers=workers) as gw:
        url = f"{gw.url}/v1/chat/completions"
        firsts = [asyncio.Event() for _ in range(STREAMS)]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            streams = [asyncio.create_task(read_stream(session, url, 20, PACE, first)) for first in firsts]
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), 10)
            gw.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert _refused(gw.port), "a stopping gateway must not accept new connections"
            assert gw.popen.poll() is None, "the gateway exited with streams still open"
            bodies = await asyncio.wait_for(asyncio.gather(*streams), 20)
        code = await asyncio.to_thread(gw.popen.wait, 20)

    assert [b.rstrip().endswith(b"data: [DONE]") for b in bodies] == [True] * STREAMS
    assert all(b.count(b'"content"') >= 20 for b in bodies)
    assert code == 0
    assert "draining in-flight requests" in gw.log()


async def test_a_stream_longer_than_the_grace_period_is_cut_at_the_deadline_and_the_exit_is_still_0(
    mock: Proc, redis_url: str
) -> None:
    config = _config(mock, redis_url, 1, server={"shutdown_grace": "1s"})
    with served_gateway(config, workers=1) as gw:
        url = f"{gw.url}/v1/chat/completions"
        first = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            # 100 tokens at 10/s would take ten seconds.
            stream = asyncio.create_task(read_stream(session, url, 100, PACE, first))
            await asyncio.wait_for(first.wait(), 10)
            signalled = time.monotonic()
            gw.signal(signal.SIGTERM)
            code = await asyncio.to_thread(gw.popen.wait, 15)
            stopped = time.monotonic() - signalled
            try:
                body = await asyncio.wait_for(stream, 5)
            except aiohttp.ClientPayloadError:
                body = b""

    assert code == 0
    assert 0.9 <= stopped < 4.0, stopped
    assert not body.rstrip().endswith(b"data: [DONE]")
