"""The key the admin application's handlers find the process's :class:`~tollgate.runtime.state.GatewayState` by.

It lives with the admin API, not with the state: an aiohttp key imports aiohttp, which only the process that
serves the admin API loads.
"""

from __future__ import annotations

from aiohttp import web

from tollgate.runtime.state import GatewayState

__all__ = ["STATE"]

STATE = web.AppKey("state", GatewayState)
