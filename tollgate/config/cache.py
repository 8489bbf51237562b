"""The ``cache:`` section: the exact-match response cache (tollgate/policy/response_cache.py), off by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from pydantic import Field, Strict

from tollgate.config.validation import Found, check, section
from tollgate.config.values import Bool, Duration, DurationOrZero, FrozenMap, Size

__all__ = ["ResponseCacheConfig"]

_AMOUNT = Annotated[float, Strict(), Field(ge=0.0)]


@section
@dataclass(frozen=True, slots=True)
class ResponseCacheConfig:
    """Exact-match cache of chat, completions, messages and embeddings answers: a request is answered from it when
    it is deterministic (temperature 0, or an embedding) or the client sends ``x-tollgate-cache: use``
    (``no-store``: neither read nor written). In-process first, then Redis when the limiter's default store is one."""

    enabled: Bool = False
    """Off by default: nothing is looked up or stored, and the request path pays one attribute check."""
    max_bytes: Size = 64 * 1024 * 1024
    """The in-process level's bound (the bodies and keys it holds); the least recently used go first past it."""
    max_entry_bytes: Size = 1024 * 1024
    """A larger answer is not stored (a stream past it stops being recorded)."""
    ttl: Duration = 300.0
    """How long an answer is served from the cache, unless its model or namespace says otherwise."""
    model_ttl: FrozenMap[DurationOrZero] = field(default_factory=dict)
    """Public model name -> TTL (wins over namespace_ttl); 0 keeps that model's answers out of the cache."""
    namespace_ttl: FrozenMap[DurationOrZero] = field(default_factory=dict)
    """Namespace -> TTL; 0 keeps that namespace's answers out of the cache."""
    shared_across_tenants: Bool = False
    """True: one tenant's cached answer may answer another tenant's identical request. Off: keyed per tenant."""
    price_per_1k_tokens: _AMOUNT = 0.0
    """What a hit is billed, in the pricing currency per 1,000 tokens of the answer it replays (0: hits are free)."""
    generation_poll: Duration = 1.0
    """How often each process reads the invalidation generations from Redis: the longest a cleared entry may still
    answer in another process (plus one Redis round trip)."""
    remote_timeout: Duration = 0.05
    """A Redis read of the cache slower than this is a miss (the request goes upstream instead of waiting)."""

    @check
    def entry_fits_the_cache(self) -> Found:
        if self.max_entry_bytes > self.max_bytes:
            yield "max_entry_bytes", "must not exceed max_bytes"
        if self.remote_timeout > 10.0:
            yield "remote_timeout", "must be at most 10s"

    def ttl_for(self, model: str | None, namespace: str) -> float:
        """The TTL of an answer of ``model`` in ``namespace`` (0: not cached)."""
        if model is not None:
            found = self.model_ttl.get(model)
            if found is not None:
                return found
        found = self.namespace_ttl.get(namespace)
        return self.ttl if found is None else found
