"""config/nginx.conf in front of real gateway workers: streams pass chunk by chunk, the real client IP arrives, the admin API stays out of reach, headers named in Connection stay behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from ..support.processes import Proc, gateway_config
from .support import ADMIN_TOKEN, chat, served_gateway, stream_body

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

CLIENT_ADDRESS = "127.0.0.2"  # a second loopback address: the client is not nginx's own 127.0.0.1


@pytest.fixture(scope="module")
def gateway(mock: Proc, redis_url: str) -> Iterator[Proc]:
    config = gateway_config(
        f"{mock.url}/v1",
        store={"backend": "redis", "url": redis_url, "timeout": "5s"},
        guard={"max_body_bytes": "1MiB"},
        # A per-IP limit, only for requests that ask for it, so the other tests here are not limited.
        namespaces={"per-ip": {"matchers": [{"type": "header", "field": "X-Test", "op": "equals", "value": "per-ip"}]}},
        rules={
            "three-per-ip": {
                "type": "request_limit",
                "limit": 3,
                "per": "minute",
                "scope": ["ip"],
                "attach": {"namespaces": ["per-ip"]},
            }
        },
    )
    with served_gateway(config, workers=2, admin=True, public={"trusted_proxies": ["127.0.0.1/32"]}) as gw:
        yield gw


async def upstream_saw(mock: Proc, request_id: str) -> dict[str, str]:
    """The headers the mock upstream received for the request with ``request_id`` (lower-case names)."""
    async with aiohttp.ClientSession() as s, s.get(f"{mock.url}/_mock/requests") as r:
        data = await r.json()
    seen = data["requests"] if isinstance(data, dict) else data
    for item in seen:
        headers = {k.lower(): v for k, v in item["headers"]}
        if headers.get("x-request-id") == request_id:
            return headers
    raise AssertionError(f"the upstream never saw request {request_id}")


def hops(forwarded_for: str) -> list[str]:
    return [h.strip() for h in forwarded_for.split(",")]


async def test_stream_arrives_through_nginx_chunk_by_chunk(nginx: Proc) -> None:
    arrivals: list[float] = []
    body = b""
    async with aiohttp.ClientSession() as s:
        sent = time.monotonic()
        headers = {"x-mock-tokens-per-second": "10"}
        async with s.post(f"{nginx.url}/v1/chat/completions", json=stream_body(20), headers=headers) as r:
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for chunk in r.content.iter_any():
                arrivals.append(time.monotonic())
                body += chunk
    # 20 tokens at 10/s: buffered, they would all arrive together after two seconds.
    assert arrivals[0] - sent < 1.0
    assert arrivals[-1] - arrivals[0] > 1.2
    assert len(arrivals) >= 10
    assert body.rstrip().endswith(b"data: [DONE]")


async def test_gateway_sees_the_real_client_ip_through_nginx_and_a_forged_header_is_replaced(
    nginx: Proc, mock: Proc
) -> None:
    connector = aiohttp.TCPConnector(local_addr=(CLIENT_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as s:
        headers = {"x-request-id": "via-nginx-1", "X-Forwarded-For": "6.6.6.6"}
        async with s.post(f"{nginx.url}/v1/chat/completions", json=chat(), headers=headers) as r:
            assert r.status == 200, await r.text()
    seen = await upstream_saw(mock, "via-nginx-1")
    # The gateway appends the client address it settled on: the real client, not nginx (127.0.0.1),
    # and not what the client wrote (nginx, the edge, replaced it).
    assert hops(seen["x-forwarded-for"])[-1] == CLIENT_ADDRESS
    assert "6.6.6.6" not in seen["x-forwarded-for"]


async def test_gateway_believes_x_forwarded_for_only_from_nginx(gateway: Proc, mock: Proc) -> None:
    connector = aiohttp.TCPConnector(local_addr=(CLIENT_ADDRESS, 0))
    async with aiohttp.ClientSession(connector=connector) as s:
        headers = {"x-request-id": "direct-forged-1", "X-Forwarded-For": "6.6.6.6"}
        async with s.post(f"{gateway.url}/v1/chat/completions", json=chat(), headers=headers) as r:
            assert r.status == 200, await r.text()
    seen = await upstream_saw(mock, "direct-forged-1")
    # Straight to the gateway from an address that is not a trusted proxy: the peer is the client.
    assert hops(seen["x-forwarded-for"])[-1] == CLIENT_ADDRESS


@pytest.mark.parametrize(
    ("request_id", "connection", "named"),
    [
        ("not-allowed", "close, X-Secret", {"X-Secret": "leak"}),  # on no allow-list
        # on the test config's allow-list: nginx alone would pass them on, the gateway would forward them
        (
            "allowed-and-a-fault",
            "keep-alive, Accept-Language, x-mock-status",
            {"Accept-Language": "fr", "x-mock-status": "500"},
        ),
        ("allowed-alone", "Accept-Language", {"Accept-Language": "fr"}),
    ],
    ids=["not-allowed", "allowed-and-a-fault", "allowed-alone"],
)
async def test_a_header_the_client_names_in_connection_never_reaches_the_upstream_through_nginx(
    nginx: Proc, mock: Proc, request_id: str, connection: str, named: dict[str, str]
) -> None:
    async with aiohttp.ClientSession() as s:
        headers = {"x-request-id": request_id, "Connection": connection, **named}
        async with s.post(f"{nginx.url}/v1/chat/completions", json=chat(), headers=headers) as r:
            assert r.status == 200, await r.text()  # x-mock-status: 500 never reached the mock
    seen = await upstream_saw(mock, request_id)
    assert not {name.lower() for name in named} & set(seen), seen
    assert "x-tollgate-connection" not in seen and "leak" not in seen.values()


async def test_allowed_headers_not_named_in_connection_do_reach_the_upstream_through_nginx(
    nginx: Proc, mock: Proc
) -> None:
    async with aiohttp.ClientSession() as s:
        headers = {
            "x-request-id": "connection-control-1",
            "Connection": "keep-alive",
            "Accept-Language": "fr",
            "X-Secret": "leak",
        }
        async with s.post(f"{nginx.url}/v1/chat/completions", json=chat(), headers=headers) as r:
            assert r.status == 200, await r.text()
    seen = await upstream_saw(mock, "connection-control-1")
    assert seen["accept-language"] == "fr"  # the allow-list passes it
    assert "x-secret" not in seen  # and nothing else


async def test_admin_api_is_unreachable_through_nginx_though_it_answers_on_its_own_listener(
    nginx: Proc, gateway: Proc
) -> None:
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    admin = f"http://127.0.0.1:{gateway.extra_ports['admin']}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{admin}/admin/plans", headers=bearer) as r:
            assert r.status == 200  # the admin API is up ...
        for method, path in (
            ("GET", "/admin/plans"),
            ("POST", "/admin/reload"),
            ("GET", "/admin/tenants"),
            ("GET", "/admin/openapi.json"),
        ):
            async with s.request(method, f"{nginx.url}{path}", headers=bearer) as r:
                assert r.status == 404, (method, path)  # ... but not through nginx
    await asyncio.sleep(0.3)
    assert "config version 2" not in gateway.log()  # the POST /admin/reload sent to nginx reloaded nothing


async def test_body_size_gateway_answers_just_over_its_limit_and_nginx_caps_abuse(nginx: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        padded: dict[str, Any] = {**chat(), "padding": "x" * (1536 * 1024)}
        async with s.post(f"{nginx.url}/v1/chat/completions", json=padded) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"  # the gateway's OpenAI-shaped answer
    # 3 MiB announced: nginx refuses on the headers alone (the client waits for 100-continue, as curl
    # does for large bodies, so no body races with the answer) and the gateway never sees the request.
    reader, writer = await asyncio.open_connection("127.0.0.1", nginx.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 3145728\r\nExpect: 100-continue\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"text/html" in head  # nginx's client_max_body_size answered, not the gateway


async def test_per_ip_limits_count_the_real_client_ip_behind_nginx(nginx: Proc) -> None:
    async def post_from(address: str) -> int:
        connector = aiohttp.TCPConnector(local_addr=(address, 0))
        async with (
            aiohttp.ClientSession(connector=connector) as s,
            s.post(f"{nginx.url}/v1/chat/completions", json=chat(), headers={"X-Test": "per-ip"}) as r,
        ):
            return r.status

    # Every request reaches the gateway from nginx (127.0.0.1); only the real client address tells them apart.
    assert [await post_from("127.0.0.4") for _ in range(4)] == [200, 200, 200, 429]
    assert await post_from("127.0.0.5") == 200
