"""Dead-letter log: metadata (never bodies) of requests that failed after every retry and fallback, in a capped ring."""

from __future__ import annotations

from collections import deque
from typing import Any

from tollgate.clock import Clock

__all__ = ["DeadLetterLog"]


class DeadLetterLog:
    """Lives on ``GatewayState``; the admin API lists it through :meth:`records` (JSON-able dicts, newest last)."""

    __slots__ = ("clock", "_ring", "total")

    def __init__(self, size: int, clock: Clock) -> None:
        self.clock = clock
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self.total = 0

    def resize(self, size: int) -> None:
        if size != self._ring.maxlen:
            self._ring = deque(self._ring, maxlen=size)

    def add(
        self,
        *,
        request_id: str,
        tenant: str,
        model: str | None,
        endpoint: str,
        stream: bool,
        status: int,
        code: str | None,
        message: str,
        attempts: list[dict[str, Any]],
    ) -> None:
        self.total += 1
        self._ring.append(
            {
                "at": self.clock.time(),
                "request_id": request_id,
                "tenant": tenant,
                "model": model,
                "endpoint": endpoint,
                "stream": stream,
                "status": status,
                "code": code,
                "message": message,
                "attempts": attempts,
            }
        )

    def records(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The most recent ``limit`` records (all when None), oldest first; copies, safe to serialise."""
        items = list(self._ring)
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return [dict(r, attempts=[dict(a) for a in r["attempts"]]) for r in items]
