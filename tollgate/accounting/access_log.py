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
from itertools import repeat
from operator import itemgetter
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
        middle = parts[who] = _who(who)
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


# The fixed text of a line around what varies, in order: a line is these pieces interleaved with its values.
_OPEN = b'{"ts":"'
_RID = b'","request_id":'
_COMMA = b","
_COMPLETION = b',"completion_tokens":'
_REPORTED = b',"usage_reported":'
_COST = b',"cost":'
_TOTAL = b',"total_ms":'
_UPSTREAM = b',"upstream_ms":'
_OVERHEAD = b',"overhead_ms":'
_TTFB = b',"ttfb_ms":'
_ATTEMPTS = b',"attempts":'
_END = b"}\n"
_MILLIS = tuple(b"%03dZ" % ms for ms in range(1000))  # a timestamp's end: its milliseconds
# The slots of one line (see _lines): 0 _OPEN, 1 the second, 2 its milliseconds, 3 _RID, 4 the request id, 5 tenant
# to provider, 6 status to the prompt_tokens key, 7 prompt_tokens, 8 _COMPLETION, 9 completion_tokens, 10 _REPORTED,
# 11 usage_reported, 12 _COST, 13 cost, 14 the currency, 15 total_ms, 16 _UPSTREAM, 17 upstream_ms, 18 _OVERHEAD,
# 19 overhead_ms, 20 _TTFB, 21 ttfb_ms, 22 _ATTEMPTS, 23 attempts, 24 the optional fields and the line's end.
_SLOTS = 25
_NUMBERS = (7, 9, 11, 13, 15, 17, 19, 21, 23)  # the slots orjson renders as one list a flush (see _lines)


def _lines(fields: Sequence[Fields], currency: str) -> bytes:
    """The lines of entries given by their fields, one buffer: what :func:`_line` gives for each, one after the other.

    Rendered a column at a time: the part from ``tenant`` to ``provider`` and the part from ``status`` to
    ``client_ip`` once per distinct value (a flush's lines share a few), every number of the flush by one
    ``orjson.dumps`` of one list cut at its commas (a number has none: a count of pieces that is not the count of
    numbers sends the flush to :func:`_line`), and the pieces of every line joined once.
    """
    n = len(fields)
    if n == 0:
        return b""
    who = list(map(_WHO, fields))
    parts = {key: _who(key) for key in dict.fromkeys(who)}
    outcome = list(map(_OUTCOME, fields))
    outcomes = {key: _outcome(key) for key in dict.fromkeys(outcome)}
    seconds: dict[int, bytes] = {}
    ts_second: list[bytes] = []
    ts_millis: list[bytes] = []
    numbers: list[Any] = []
    ends: list[bytes] = []
    add_second, add_millis, add_numbers, add_end = ts_second.append, ts_millis.append, numbers.extend, ends.append
    millis = _MILLIS
    end, nanos = _END, NANOS
    for f in fields:
        # One unpacking instead of a dozen subscripts (records.fields_of order)
        (
            _rid,
            wall,
            _tenant,
            _key_id,
            _user,
            _plan,
            _namespace,
            _endpoint,
            _model,
            _served,
            _priced,
            _upstream,
            _provider,
            _deployment_model,
            _status,
            _error,
            _stream,
            _disconnected,
            _ip,
            prompt,
            completion,
            cached,
            cache_write,
            reasoning,
            reported,
            cost,
            total_s,
            upstream_s,
            overhead_s,
            ttfb_s,
            attempts,
            _principal,
            hit,
            _saved_tokens,
            _saved_cost,
        ) = f
        second = int(wall)
        text = seconds.get(second)
        if text is None:
            text = seconds[second] = _second(second).encode() + b"."
        add_second(text)
        add_millis(millis[int(wall * 1000) % 1000])
        # _ms(...) written out, its integer part taken as a float (x // 1.0: the value int(x) gives, without a call)
        add_numbers(
            (
                prompt,
                completion,
                reported,
                cost / nanos,
                (total_s * 1e6 + 0.5) // 1.0 / 1000 if total_s >= 0 else round(total_s * 1000, 3),
                (upstream_s * 1e6 + 0.5) // 1.0 / 1000 if upstream_s >= 0 else round(upstream_s * 1000, 3),
                (overhead_s * 1e6 + 0.5) // 1.0 / 1000 if overhead_s >= 0 else round(overhead_s * 1000, 3),
                None
                if ttfb_s is None
                else (ttfb_s * 1e6 + 0.5) // 1.0 / 1000
                if ttfb_s >= 0
                else round(ttfb_s * 1000, 3),
                attempts,
            )
        )
        add_end(end if not (cached or cache_write or reasoning or hit) else _extras(f))
    rendered = orjson.dumps(numbers)[1:-1].split(b",")
    if len(rendered) != len(numbers):  # a value that is not a number (a string with a comma): line by line
        parts_of: dict[_Who, bytes] = {}
        seconds_of: dict[int, str] = {}
        return b"".join([_line(f, currency, parts_of, seconds_of) for f in fields])
    out: list[bytes] = [_COMMA] * (n * _SLOTS)
    out[0::_SLOTS] = repeat(_OPEN, n)
    out[1::_SLOTS] = ts_second
    out[2::_SLOTS] = ts_millis
    out[3::_SLOTS] = repeat(_RID, n)
    out[4::_SLOTS] = map(orjson.dumps, map(_REQUEST_ID, fields))
    out[5::_SLOTS] = map(parts.__getitem__, who)
    out[6::_SLOTS] = map(outcomes.__getitem__, outcome)
    width = len(_NUMBERS)
    for i, slot in enumerate(_NUMBERS):
        out[slot::_SLOTS] = rendered[i::width]
    out[8::_SLOTS] = repeat(_COMPLETION, n)
    out[10::_SLOTS] = repeat(_REPORTED, n)
    out[12::_SLOTS] = repeat(_COST, n)
    out[14::_SLOTS] = repeat(b',"currency":' + orjson.dumps(currency) + _TOTAL, n)
    out[16::_SLOTS] = repeat(_UPSTREAM, n)
    out[18::_SLOTS] = repeat(_OVERHEAD, n)
    out[20::_SLOTS] = repeat(_TTFB, n)
    out[22::_SLOTS] = repeat(_ATTEMPTS, n)
    out[24::_SLOTS] = ends
    return b"".join(out)


_WHO = itemgetter(slice(2, 13))  # tenant to provider (the priced model between, which a line leaves out)
_OUTCOME = itemgetter(slice(14, 19))  # status, error, stream, client_disconnected, client_ip
_REQUEST_ID = itemgetter(0)


def _who(who: _Who) -> bytes:
    """A line's part from ``tenant`` to ``provider``, with the commas either side."""
    tenant, key_id, user, plan, namespace, endpoint, model, model_served, _priced, upstream, provider = who
    return (
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


def _outcome(outcome: tuple[Any, ...]) -> bytes:
    """A line's part from ``status`` to ``client_ip``, and the key of ``prompt_tokens``."""
    status, error, stream, client_disconnected, client_ip = outcome
    return (
        orjson.dumps(
            {
                "status": status,
                "error": error,
                "stream": stream,
                "client_disconnected": client_disconnected,
                "client_ip": client_ip,
            }
        )[1:-1]
        + b',"prompt_tokens":'
    )


def _extras(f: Fields) -> bytes:
    """The end of a line with optional fields (prompt cache parts, reasoning, a response cache hit)."""
    extra: dict[str, object] = {}
    if f[21]:
        extra["cached_tokens"] = f[21]
    if f[22]:
        extra["cache_write_tokens"] = f[22]
    if f[23]:
        extra["reasoning_tokens"] = f[23]
    if f[32]:
        extra["cache"] = "hit"
        extra["saved_tokens"] = f[33]
    return b"," + orjson.dumps(extra, option=orjson.OPT_APPEND_NEWLINE)[1:]


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
