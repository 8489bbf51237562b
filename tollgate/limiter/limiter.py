"""The ``Limiter``: all-or-nothing admission over limits grouped by hash slot, fail modes, settle, leases, peek.

Policy only: it builds keys and arguments and reads replies; the scripts in
``lua/`` decide, an engine from ``tollgate.limiter.store`` runs them. It never
imports a Redis client. Settlements and lease releases that could not reach
their store (:class:`StoreUnavailable`: circuit open, no connection) are kept
and applied when the store answers again.

Its methods are written by concern, one module each, every part a subclass
of the one before: base (the state and the stores), unsettled (settle.lua
calls and their replay), fail_modes, admitting, settling (extend, settle,
adjust, finish_many), leases, counters. One line of single inheritance, not
mixins side by side: mypyc compiles it to native classes, whose method calls
and attribute reads skip the interpreter (multiple inheritance would need
traits, slower to call). This module adds starting and stopping the
background work.
"""

from __future__ import annotations

import asyncio

from tollgate.limiter.counters import CounterMixin

__all__ = ["Limiter"]


class Limiter(CounterMixin):
    """Admits requests against limits held in one of several named stores.

    ``stores`` maps store names to engines; ``default_store`` is used when
    ``admit`` names none. ``local`` is the embedded engine used by limits in
    ``local`` fail mode, with each limit divided by ``instances``. The clock
    times the over-limit cache. ``plan_routes`` / ``tenant_routes`` map a
    plan or tenant to a store name (see :meth:`store_for`).
    """

    async def start(self) -> None:
        """Open each store's connections (see the engines' ``start``) and start replaying what they missed."""
        for engine in self._stores.values():
            await engine.start()
        if self._replayer is None:
            self._replay_wake = asyncio.Event()
            if self.unsettled:
                self._replay_wake.set()
            self._replayer = asyncio.get_running_loop().create_task(self._replay_loop())

    async def close(self) -> None:
        if self._replayer is not None:
            self._replayer.cancel()
            await asyncio.gather(self._replayer, return_exceptions=True)
            self._replayer = self._replay_wake = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.unsettled:
            await self.replay()  # a last try: the store may answer again by now
        for engine in self._stores.values():
            await engine.close()
        if self._local is not None:
            await self._local.close()
