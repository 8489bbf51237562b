"""Running one gateway process: listeners, signals (SIGHUP reload, SIGTERM drain), the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from tollgate import compiled
from tollgate.background import BackgroundTask
from tollgate.config import Config
from tollgate.pipeline.guard import header_room
from tollgate.process.public import healthz, make_public_server, public_lifecycle, readyz
from tollgate.runtime.state import GatewayState

if TYPE_CHECKING:
    from aiohttp import web

    from tollgate.admin import ReloadAction

__all__ = [
    "install_event_loop_policy",
    "reload_here",
    "run_gateway",
    "serve_forever",
    "with_listen_address",
]

log = logging.getLogger("tollgate.server")

ADMIN_SHUTDOWN_GRACE = 5.0
# How often a worker checks that its supervisor is still alive.
ORPHAN_CHECK_INTERVAL = 1.0


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
    admin: bool = True,
    reload: ReloadAction | None = None,
    supervisor_pid: int | None = None,
    on_started: Callable[[int, int | None], Awaitable[None] | None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set or SIGTERM/SIGINT arrives; SIGHUP reloads the config file.

    Stopping is a drain: the listening sockets close first (with SO_REUSEPORT the
    kernel sends new connections to the other workers), idle keep-alive connections
    are closed, in-flight requests and streams get ``server.shutdown_grace`` seconds
    to finish, and only then ``GatewayState.close()`` runs (upstream connections,
    the accounting flush).

    ``admin=False`` leaves the admin listener to another process (worker 0 of a
    supervisor); ``reload`` is what ``POST /admin/reload`` does (default: reload this
    process); ``supervisor_pid`` makes the process stop when its supervisor is gone.
    """
    # Only what is needed of the start-up config: a reference to it would keep that whole version (100,000
    # tenants: tens of MiB) alive after the first reload.
    config = state.config
    grace = config.server.shutdown_grace
    max_head = header_room(config.guard.max_header_bytes)
    pub, adm = config.listeners.public, config.listeners.admin
    del config
    serves_admin = adm.enabled and admin
    if serves_admin:
        # Imported by the process that serves the admin API only: the other workers of a supervisor (and a config
        # without the listener) never load its routes and models, nor aiohttp (a third of a start's imports together).
        # Before the public listener opens: an import on a loop that already takes requests would hold the first ones
        # (and the shedder, seeing the loop stall, would refuse them).
        from aiohttp import web

        from tollgate.admin import Probes, make_admin_app
    # Signals first: a SIGHUP or SIGTERM that arrives while we start must not meet the default action (exit).
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_reload_and_trim(state)))
    async with public_lifecycle(state):
        public = make_public_server(state, max_head=max_head)
        runners: list[web.BaseRunner] = []
        watchdog: BackgroundTask | None = None
        try:
            public_port = await public.start(pub.host, pub.port, reuse_port=reuse_port)
            admin_port: int | None = None
            if serves_admin:
                admin_app = make_admin_app(state, probes=Probes(healthz, readyz), reload=reload or reload_here)
                admin_runner = web.AppRunner(admin_app, access_log=None, shutdown_timeout=ADMIN_SHUTDOWN_GRACE)
                await admin_runner.setup()
                runners.append(admin_runner)
                await web.TCPSite(admin_runner, adm.host, adm.port).start()
                admin_port = _bound_port(admin_runner)
            log.info("public listener on http://%s:%d (hot path: %s)", pub.host, public_port, compiled.describe())
            if admin_port is not None:
                log.info("admin listener on http://%s:%d", adm.host, admin_port)
            _settle_heap()
            if on_started is not None:
                result = on_started(public_port, admin_port)
                if result is not None:
                    await result
            if supervisor_pid is not None:
                watchdog = BackgroundTask("orphan-watch", lambda: _stop_when_orphaned(supervisor_pid, stop))
                watchdog.start()
            await stop.wait()
            log.info("stopping: no new connections, draining in-flight requests (up to %.0fs)", grace)
        finally:
            if watchdog is not None:
                await watchdog.stop()
            # The listeners drain before the resources close.
            for runner in runners:
                await runner.cleanup()
            await public.shutdown(grace)
    log.info("stopped: in-flight requests drained, resources closed")


async def reload_here(state: GatewayState) -> tuple[int, dict[str, object]]:
    """Reload this process only (the single-process gateway)."""
    applied, problems = await _reload_and_trim(state)
    if not applied:
        return 422, refused_body(problems)
    return 200, {"status": "reloaded", "config_version": state.runtime.version}


async def _reload_and_trim(state: GatewayState) -> tuple[bool, list[str]]:
    """Reload, then give back the memory that reading the file and the replaced version freed."""
    applied, problems = await state.reload()
    _trim_free_memory()
    return applied, problems


def refused_body(problems: list[str]) -> dict[str, object]:
    message = "the config file was refused; the running config stays in force: " + "; ".join(problems)
    return {
        "error": {"message": message, "type": "invalid_request_error", "code": "config_refused", "param": None},
        "problems": problems,
    }


async def _stop_when_orphaned(supervisor_pid: int, stop: asyncio.Event) -> None:
    """A worker whose supervisor died (SIGKILL, OOM) drains and exits instead of serving on unsupervised."""
    while not stop.is_set():
        if os.getppid() != supervisor_pid:
            log.warning("supervisor %d is gone: stopping", supervisor_pid)
            stop.set()
            return
        await asyncio.sleep(ORPHAN_CHECK_INTERVAL)


# Young-generation collections every 20,000 allocations instead of 700: a request allocates a few
# hundred short-lived objects, so the default collects several times per request for nothing.
GC_THRESHOLDS = (20_000, 50, 100)


def _settle_heap() -> None:
    """After start-up, move what exists (modules, config, tenants) out of the collector's sight.

    The cyclic collector then only walks objects made while serving; with
    thresholds sized for a proxy's allocation rate this is measurably
    cheaper per request (benchmarks/RESULTS.md), and changes no behaviour.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    _trim_free_memory()


def _trim_free_memory() -> None:
    """Give the C allocator's free pages back to the system (glibc's ``malloc_trim``): what reading a large config
    file freed would otherwise stay in the process's resident memory. Nothing where the C library has no such call."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def _bound_port(runner: web.BaseRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("listener did not bind")


def serve_forever(state: GatewayState, **kwargs: object) -> None:
    install_event_loop_policy()
    asyncio.run(run_gateway(state, **kwargs))  # type: ignore[arg-type]
