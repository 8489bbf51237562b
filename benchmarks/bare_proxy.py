"""The reference pass-through: the least work an honest aiohttp LLM proxy does per request (the Python ceiling)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from proxy_cli import run_proxy

__all__ = ["main", "make_bare_proxy_app"]

# Dropped on the way up, as any proxy must: hop-by-hop headers, framing it recomputes, the client's
# credential (replaced by the upstream's) and Host (the upstream's, set by the client library).
_DROPPED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
    }
)
UPSTREAM_URL = web.AppKey("upstream_url", str)
UPSTREAM_HEADERS = web.AppKey("upstream_headers", tuple)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=60)
    app[SESSION] = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None), trust_env=False
    )
    yield
    await app[SESSION].close()


async def forward(request: web.Request) -> web.StreamResponse:
    """Read the body, POST it with the filtered client headers plus the upstream's, relay status and body."""
    body = await request.read()
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROPPED]
    headers.extend(request.app[UPSTREAM_HEADERS])
    url = request.app[UPSTREAM_URL] + request.match_info["tail"]
    try:
        async with request.app[SESSION].post(url, data=body, headers=headers) as upstream:
            content_type = upstream.headers.get("Content-Type", "application/json")
            if not content_type.startswith("text/event-stream"):
                return web.Response(
                    status=upstream.status, body=await upstream.read(), headers={"Content-Type": content_type}
                )
            response = web.StreamResponse(
                status=upstream.status, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientError as exc:
        return web.json_response(
            {"error": {"message": f"upstream failed: {type(exc).__name__}", "type": "upstream_error"}}, status=502
        )


def make_bare_proxy_app(upstream_base_url: str, api_key: str | None = None) -> web.Application:
    app = web.Application()
    app[UPSTREAM_URL] = upstream_base_url.rstrip("/") + "/"
    app[UPSTREAM_HEADERS] = (("Authorization", f"Bearer {api_key}"),) if api_key else ()
    app.cleanup_ctx.append(_session)
    app.router.add_post("/v1/{tail:.+}", forward)
    return app


async def _serve(host: str, port: int, upstream: str, api_key: str | None) -> None:
    runner = web.AppRunner(make_bare_proxy_app(upstream, api_key), access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=2048).start()
    print(f"bare proxy on http://{host}:{port}/v1 -> {upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    run_proxy(__doc__, _serve)


if __name__ == "__main__":
    main()
