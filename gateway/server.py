"""Running the gateway: listeners, signals (SIGHUP reload, SIGTERM drain), the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace

from aiohttp import web

from .admin import make_admin_app
from .app import make_public_app
from .config import Config
from .guard import parser_limits
from .runtime import GatewayState

__all__ = ["run_gateway", "serve_forever", "with_listen_address", "install_event_loop_policy"]

log = logging.getLogger("tollgate.server")

SHUTDOWN_GRACE = 30.0


def with_listen_address(config: Config, host: str | None, port: int | None) -> Config:
    public = config.listeners.public
    public = replace(public, host=host or public.host, port=public.port if port is None else port)
    return replace(config, listeners=replace(config.listeners, public=public))


def install_event_loop_policy() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run_gateway(
    state: GatewayState,
    *,
    reuse_port: bool = False,
    on_started: Callable[[int, int | None], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives; SIGHUP reloads the config file."""
    config = state.config
    limits = parser_limits(config.guard.max_header_bytes)
    public_runner = web.AppRunner(
        make_public_app(state),
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_GRACE,
        **limits,
    )
    await public_runner.setup()
    runners = [public_runner]
    try:
        pub = config.listeners.public
        public_site = web.TCPSite(public_runner, pub.host, pub.port, reuse_port=reuse_port or None, backlog=2048)
        await public_site.start()
        public_port = _bound_port(public_runner)
        admin_port: int | None = None
        adm = config.listeners.admin
        if adm.enabled:
            admin_runner = web.AppRunner(make_admin_app(state), access_log=None, shutdown_timeout=5.0)
            await admin_runner.setup()
            runners.append(admin_runner)
            await web.TCPSite(admin_runner, adm.host, adm.port, reuse_port=reuse_port or None).start()
            admin_port = _bound_port(admin_runner)
        log.info("public listener on http://%s:%d", pub.host, public_port)
        if admin_port is not None:
            log.info("admin listener on http://%s:%d", adm.host, admin_port)
        if on_started is not None:
            result = on_started(public_port, admin_port)
            if result is not None:
                await result

        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(state.reload()))
        await stop.wait()
        log.info("stopping: no new connections, draining in-flight requests (up to %.0fs)", SHUTDOWN_GRACE)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("listener did not bind")


def serve_forever(state: GatewayState, **kwargs: object) -> None:
    install_event_loop_policy()
    asyncio.run(run_gateway(state, **kwargs))  # type: ignore[arg-type]
