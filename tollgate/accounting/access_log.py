"""The access log: one JSON line per request, built in the flusher and written by a worker thread.

A line holds identifiers, never secrets: the key *id* (never the key), no
header, no body, no token. Fields::

    ts request_id tenant key_id user plan namespace endpoint model model_served
    upstream provider status error stream client_disconnected client_ip prompt_tokens
    completion_tokens usage_reported cost currency total_ms upstream_ms
    overhead_ms ttfb_ms attempts

and, only when non-zero, ``cached_tokens`` and ``cache_write_tokens`` (the
parts of ``prompt_tokens`` read from and written to the provider's prompt
cache, each billed at its own price) and ``reasoning_tokens`` (the part of
``completion_tokens`` spent reasoning); for a request answered from the
response cache, ``cache: "hit"`` with ``saved_tokens``.

``user`` is the end user inside the tenant (``identity.end_user``): bounded
in length and free of control characters before it gets here.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from tollgate.accounting.pricing import NANOS
from tollgate.accounting.records import Entry, Fields, astuple
from tollgate.config.accounting import AccessLogConfig

__all__ = ["AccessLog", "line_of", "lines_of"]


@functools.lru_cache(maxsize=64)
def _second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _iso(wall: float) -> str:
    return f"{_second(int(wall))}.{int(wall * 1000) % 1000:03d}Z"


def line_of(e: Entry, currency: str) -> bytes:
    return _line(astuple(e), currency, {}, {})


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond, as ``round(seconds * 1000, 3)`` gives them (but for a tie a hair off
    half a microsecond), at a fraction of its cost: four per line."""
    return int(seconds * 1e6 + 0.5) / 1000 if seconds >= 0 else round(seconds * 1000, 3)


# What a line says from ``tenant`` to ``provider`` (with the priced model between, which the line leaves out): the
# same for every request of one tenant, key, end user, namespace, endpoint, model and upstream.
_Who = tuple[Any, ...]


def _line(f: Fields, currency: str, parts: dict[_Who, bytes], seconds: dict[int, str]) -> bytes:
    """One line from an entry's fields (records.fields_of order); the part from ``tenant`` to ``provider`` is
    rendered once per distinct value in ``parts`` (a flush's lines share a few), so per line only what varies is:
    ts, request_id, and from ``status`` on."""
    who = f[2:13]
    middle = parts.get(who)
    if middle is None:
        tenant, key_id, user, plan, namespace, endpoint, model, model_served, _priced, upstream, provider = who
        middle = parts[who] = (
            b","
            + orjson.dumps(
                {
                    "tenant": tenant,
                    "key_id": key_id,
                    "user": user,
                    "plan": plan,
                    "namespace": namespace,
                    "endpoint": endpoint,
                    "model": model,
                    "model_served": model_served,
                    "upstream": upstream,
                    "provider": provider,
                }
            )[1:-1]
            + b","
        )
    (
        status,
        error,
        stream,
        client_disconnected,
        client_ip,
        prompt_tokens,
        completion_tokens,
        cached_tokens,
        cache_write_tokens,
        reasoning_tokens,
        usage_reported,
        cost_nanos,
        total_s,
        upstream_s,
        overhead_s,
        ttfb_s,
        attempts,
    ) = f[14:31]
    tail: dict[str, object] = {
        "status": status,
        "error": error,
        "stream": stream,
        "client_disconnected": client_disconnected,
        "client_ip": client_ip,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "usage_reported": usage_reported,
        "cost": cost_nanos / NANOS,
        "currency": currency,
        # _ms(...) written out: four calls a line saved
        "total_ms": int(total_s * 1e6 + 0.5) / 1000 if total_s >= 0 else round(total_s * 1000, 3),
        "upstream_ms": int(upstream_s * 1e6 + 0.5) / 1000 if upstream_s >= 0 else round(upstream_s * 1000, 3),
        "overhead_ms": int(overhead_s * 1e6 + 0.5) / 1000 if overhead_s >= 0 else round(overhead_s * 1000, 3),
        "ttfb_ms": None if ttfb_s is None else _ms(ttfb_s),
        "attempts": attempts,
    }
    if cached_tokens:
        tail["cached_tokens"] = cached_tokens
    if cache_write_tokens:
        tail["cache_write_tokens"] = cache_write_tokens
    if reasoning_tokens:
        tail["reasoning_tokens"] = reasoning_tokens
    if f[32]:  # answered from the response cache
        tail["cache"] = "hit"
        tail["saved_tokens"] = f[33]
    wall = f[1]
    second = int(wall)
    text = seconds.get(second)
    if text is None:
        text = seconds[second] = _second(second)
    ts = f"{text}.{int(wall * 1000) % 1000:03d}Z"  # what _iso gives
    head = orjson.dumps({"ts": ts, "request_id": f[0]})
    return b"".join((head[:-1], middle, orjson.dumps(tail, option=orjson.OPT_APPEND_NEWLINE)[1:]))


def lines_of(entries: Iterable[Entry], currency: str) -> bytes:
    """The lines of ``entries``, one buffer (what the flusher writes for their fields)."""
    return _lines([astuple(e) for e in entries], currency)


def _lines(fields: Iterable[Fields], currency: str) -> bytes:
    """The lines of entries given by their fields, one buffer: each line is copied out of orjson's output and that
    output freed at once, which costs a fraction of keeping a thousand of them alive until a join."""
    out = bytearray()
    parts: dict[_Who, bytes] = {}
    seconds: dict[int, str] = {}
    for f in fields:
        out += _line(f, currency, parts, seconds)
    return bytes(out)


class AccessLog:
    """Samples entries, renders them, and appends them to a file or standard output off the event loop."""

    def __init__(
        self, config: AccessLogConfig, *, rng: random.Random | None = None, base_dir: Path | None = None
    ) -> None:
        self.config = config
        self._base_dir = base_dir  # a relative path is opened under it (the config's data_dir)
        self._rng = rng or random.Random()
        self._fh: BinaryIO | None = None
        self.written = 0

    def open(self) -> None:
        if not self.config.enabled:
            return
        if self.config.path == "-":
            self._fh = None  # standard output, through os.write on its descriptor
        else:
            path = Path(self.config.path)
            if not path.is_absolute() and self._base_dir is not None:
                path = self._base_dir / path
            self._fh = open(path, "ab")  # noqa: SIM115 - closed in close()

    def wants_status(self, status: int, client_disconnected: bool) -> bool:
        """Whether a request with this outcome gets a line (the sampling draw included), before any line is built."""
        cfg = self.config
        if not cfg.enabled:
            return False
        if cfg.errors and (status >= 400 or client_disconnected):
            return True
        return cfg.sample >= 1.0 or self._rng.random() < cfg.sample

    def _write(self, data: bytes) -> None:
        if self._fh is not None:
            self._fh.write(data)
            self._fh.flush()
            return
        fd = sys.stdout.fileno()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    @property
    def takes_every_line(self) -> bool:
        """Whether every request gets a line, whatever its outcome: no draw to make per request."""
        return self.config.enabled and self.config.sample >= 1.0

    async def write(self, fields: Sequence[Fields], currency: str) -> None:
        """Render the lines of entries given by their fields (records.fields_of; on the event loop) and append them
        (in a worker thread)."""
        if not fields:
            return
        data = _lines(fields, currency)
        await asyncio.to_thread(self._write, data)
        self.written += len(fields)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
