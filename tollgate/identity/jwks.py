"""Signing keys from a JWKS URL: fetched with aiohttp, cached, refetched when stale or when a token names a new key.

One :class:`JwksKeys` per URL serves both the tenant JWT identifier and the
admin API's OpenID Connect sign-on. Keys rotate without a restart: a token
whose ``kid`` is unknown makes the caller :meth:`JwksKeys.refresh` (at most
once per ``refetch_interval``, so a flood of made-up key ids costs one fetch
per interval), and keys older than ``max_age`` are refetched before use. A
failed fetch keeps the keys already cached and logs why; HMAC (``oct``) keys
are never taken from a URL (a published secret is no secret).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tollgate.config.identity import JwksSource, JwtKey
from tollgate.config.jwtkeys import jwks_keys
from tollgate.errors import Unauthenticated

__all__ = ["Fetch", "JwksKeys", "SigningKeysStale", "fetch_json"]

log = logging.getLogger("tollgate.identity.jwks")

Fetch = Callable[[str, float], Awaitable[Any]]
"""Fetch a URL's JSON document within a timeout (seconds); raise on any failure."""


async def fetch_json(url: str, timeout: float) -> Any:
    """GET ``url`` and parse its JSON; one session per fetch (fetches are rare: at most one per interval)."""
    import aiohttp  # here, not at the top: a gateway without a JWKS URL never loads it

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url, headers={"accept": "application/json"}) as response,
    ):
        response.raise_for_status()
        return await response.json(content_type=None)


class SigningKeysStale(Unauthenticated):
    """The token could not be checked with the keys cached: refresh ``keys`` and try again (once).

    A caller that cannot wait answers it as what it is, a 401."""

    def __init__(self, keys: JwksKeys, message: str) -> None:
        super().__init__(message)
        self.keys = keys


class JwksKeys:
    """The signing keys of one JWKS URL, as last fetched."""

    __slots__ = (
        "source",
        "algorithms",
        "clock",
        "fetch",
        "by_kid",
        "by_alg",
        "fetched",
        "attempted",
        "revision",
        "_lock",
    )

    def __init__(
        self,
        source: JwksSource,
        *,
        algorithms: tuple[str, ...],
        clock: Callable[[], float],
        fetch: Fetch = fetch_json,
    ) -> None:
        # Loaded with the keys it fetches, as the config is built: never first on a serving loop.
        importlib.import_module("aiohttp")
        self.source = source
        self.algorithms = frozenset(a for a in algorithms if not a.startswith("HS"))
        self.clock = clock
        self.fetch = fetch
        self.by_kid: dict[str, JwtKey] = {}
        self.by_alg: dict[str, tuple[JwtKey, ...]] = {}
        self.fetched: float | None = None  # when the keys in hand were fetched
        self.attempted: float | None = None  # when a fetch was last tried, successful or not
        self.revision = 0  # goes up when a fetch withdraws a key: what was verified with the keys before is not kept
        self._lock: asyncio.Lock | None = None

    def keys_for(self, kid: str | None, alg: str) -> tuple[JwtKey, ...]:
        """The cached keys that may verify a token signed with ``alg`` under ``kid`` (none: every key of ``alg``)."""
        if kid is None:
            return self.by_alg.get(alg, ())
        key = self.by_kid.get(kid)
        return (key,) if key is not None and key.algorithm == alg else ()

    def may_refetch(self) -> bool:
        """Whether a fetch now respects the interval since the last one."""
        return self.attempted is None or self.clock() - self.attempted >= self.source.refetch_interval

    def stale(self) -> bool:
        """Never fetched, or older than ``max_age``, and a fetch is allowed now."""
        if not self.may_refetch():
            return False
        return self.fetched is None or self.clock() - self.fetched >= self.source.max_age

    async def refresh(self) -> bool:
        """Fetch the keys again unless a fetch happened within the interval; True when new keys are in hand.

        Concurrent callers share one fetch. A failure keeps the cached keys and logs."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self.may_refetch():
                return False
            self.attempted = self.clock()
            url = self.source.url
            try:
                doc = await self.fetch(url, self.source.timeout)
            except Exception as exc:  # network, HTTP status, JSON: all the same to the caller
                log.warning("JWKS %s could not be fetched (keeping %d cached keys): %s", url, len(self.by_kid), exc)
                return False
            keys, problems = jwks_keys(doc, url)
            for problem in problems:
                log.warning("JWKS key skipped: %s", problem)
            usable = [k for k in keys if k.algorithm in self.algorithms]
            if not usable:
                log.warning(
                    "JWKS %s has no key for %s: keeping the cached keys", url, ", ".join(sorted(self.algorithms))
                )
                return False
            before = self.by_kid
            self.by_kid = {k.kid: k for k in usable if k.kid is not None}
            if before.keys() - self.by_kid.keys() or any(k.kid is None for k in usable):
                self.revision += 1  # a key withdrawn (or keys without ids, which cannot be told apart)
            self.by_alg = {alg: tuple(k for k in usable if k.algorithm == alg) for alg in self.algorithms}
            self.fetched = self.attempted
            log.info("JWKS %s fetched: key ids %s", url, ", ".join(sorted(self.by_kid)) or "(none)")
            return True
