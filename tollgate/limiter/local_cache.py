"""A local cache of keys known to be over their limit: refuse at once, without a store round trip."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tollgate.limiter.decision import LimitState

__all__ = ["RESERVED_TRUST_MS", "OverLimitCache"]


# How long a refusal of a reserved limit (tokens, money) is trusted: settling gives back what requests
# reserved and did not use within seconds, so such a refusal can stop being true long before its retry time.
RESERVED_TRUST_MS = 1_000


@dataclass(slots=True)
class _Entry:
    until: float  # monotonic seconds: the entry answers until then
    cost: int  # the refused cost: any cost at least this big is refused until ``until``
    state: LimitState
    at: float
    retry_at: float  # when the refusal said to retry


class OverLimitCache:
    """Remembers refusals until their retry time (like envoyproxy/ratelimit's local cache).

    A refusal of cost c at time t with retry-after r means that any cost >= c
    on that key is refused until t + r unless something is refunded, so the
    cache only answers for costs at least as large as the one refused. Other
    gateway processes only add consumption, so the answer stays right; a
    refund elsewhere can at worst make the cache refuse a little too long.
    Limits whose reservations settle (tokens, money) give units back all the
    time, so their refusals are trusted for :data:`RESERVED_TRUST_MS` at
    most, and a refund this process makes forgets its key at once.
    Concurrency limits are never cached (a lease can be released any time).
    """

    __slots__ = ("_entries", "_max", "hits")

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._max = max_entries
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, store: str, key: str, cost: int, now: float) -> LimitState | None:
        entry = self._entries.get((store, key))
        if entry is None:
            return None
        if now >= entry.until:
            del self._entries[(store, key)]
            return None
        if cost < entry.cost:
            return None
        self.hits += 1
        elapsed_ms = int((now - entry.at) * 1000)
        left_ms = max(1, min(entry.state.retry_after_ms, math.ceil(round((entry.retry_at - now) * 1000, 3))))
        state = entry.state
        return state._replace(retry_after_ms=left_ms, reset_ms=max(left_ms, state.reset_ms - elapsed_ms))

    def remember(
        self, store: str, key: str, cost: int, state: LimitState, now: float, *, reserved: bool = False
    ) -> None:
        """Remember a refusal; ``reserved``: the limit's reservations settle (trusted for a second at most)."""
        if self._max <= 0 or state.retry_after_ms <= 0 or state.kind == "concurrency":
            return
        if len(self._entries) >= self._max:
            self._evict(now)
        retry_at = now + state.retry_after_ms / 1000
        until = min(retry_at, now + RESERVED_TRUST_MS / 1000) if reserved else retry_at
        self._entries[(store, key)] = _Entry(until, cost, state, now, retry_at)

    def forget(self, store: str, key: str) -> None:
        """Units were given back on this key: a refusal remembered for it may no longer hold."""
        self._entries.pop((store, key), None)

    def _evict(self, now: float) -> None:
        expired = [k for k, e in self._entries.items() if e.until <= now]
        for k in expired:
            del self._entries[k]
        while len(self._entries) >= self._max:  # the oldest entries go first
            del self._entries[next(iter(self._entries))]
