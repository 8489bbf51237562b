"""An upstream behind a headless Service: the client re-resolves its host and spreads connections over every address."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiohttp import web

from tollgate.upstream.client import UpstreamHttp

from ..support.processes import free_port


async def _servers(addresses: list[str], port: int) -> tuple[list[web.AppRunner], Counter[str]]:
    """One tiny server per loopback address, all on ``port``, counting the requests each answered."""
    served: Counter[str] = Counter()
    runners = []
    for address in addresses:

        async def answer(request: web.Request, address: str = address) -> web.Response:
            served[address] += 1
            return web.json_response({"served_by": address})

        app = web.Application()
        app.router.add_get("/v1/models", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, address, port).start()
        runners.append(runner)
    return runners, served


async def test_new_replicas_named_by_dns_get_traffic_and_gone_ones_none() -> None:
    port = free_port()
    runners, served = await _servers(["127.0.0.2", "127.0.0.3", "127.0.0.4"], port)
    names = ["127.0.0.2", "127.0.0.3"]  # what "the headless service" resolves to now

    async def resolver(host: str, port: int) -> list[str]:
        assert host == "replicas.models.svc"
        return list(names)

    client = UpstreamHttp(f"http://replicas.models.svc:{port}/v1", resolve_every=0.05, resolver=resolver)
    try:

        async def burst(n: int) -> None:
            async def one() -> None:
                response = await client.request("GET", "/models", [])
                await response.read()
                response.release()

            await asyncio.gather(*(one() for _ in range(n)))

        await burst(20)
        assert set(served) == {"127.0.0.2", "127.0.0.3"} and min(served.values()) >= 5
        names[:] = ["127.0.0.3", "127.0.0.4"]  # scaled: one replica gone, one added
        await asyncio.sleep(0.1)
        served.clear()
        await burst(20)
        assert set(served) == {"127.0.0.3", "127.0.0.4"} and min(served.values()) >= 5
        assert client.addresses == ("127.0.0.3", "127.0.0.4")
    finally:
        await client.close()
        for runner in runners:
            await runner.cleanup()


async def test_a_failed_lookup_keeps_the_known_addresses() -> None:
    port = free_port()
    runners, served = await _servers(["127.0.0.2"], port)
    calls = 0

    async def flaky(host: str, port: int) -> list[str]:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError("temporary failure in name resolution")
        return ["127.0.0.2"]

    client = UpstreamHttp(f"http://replicas.models.svc:{port}/v1", resolve_every=0.01, resolver=flaky)
    try:
        for _ in range(3):
            response = await client.request("GET", "/models", [])
            await response.read()
            response.release()
            await asyncio.sleep(0.02)
        assert calls >= 2 and served["127.0.0.2"] == 3 and client.addresses == ("127.0.0.2",)
    finally:
        await client.close()
        for runner in runners:
            await runner.cleanup()
