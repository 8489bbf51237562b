"""The public listener's lifecycle: the gateway's resources opened before it serves, closed after it has drained."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from tollgate.registry.registry import registry_watching
from tollgate.runtime.state import GatewayState

__all__ = ["public_lifecycle"]


@contextlib.asynccontextmanager
async def public_lifecycle(state: GatewayState) -> AsyncIterator[None]:
    """Open the gateway's resources and follow the tenant registry while serving; close them afterwards."""
    await state.start()
    try:
        async with registry_watching(state.registry):
            yield
    finally:
        await state.close()
