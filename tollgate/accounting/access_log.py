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
from math import floor
from operator import itemgetter
from pathlib import Path
from typing import Any, BinaryIO, Final

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
_RID = b'","request_id":"'  # with the opening quote of the request id (a string: see _request_ids)
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
# A timestamp's end, its milliseconds, with the key of the request id that follows it.
_MILLIS = tuple(b"%03dZ" % ms + _RID for ms in range(1000))
# The slots of one line (see _lines): 0 _OPEN and the timestamp's second, 1 its milliseconds and _RID, 2 the request
# id without its quotes, 3 its closing quote, tenant to client_ip and the key of prompt_tokens, 4 prompt_tokens, 5 _COMPLETION, 6 completion_tokens,
# 7 _REPORTED, 8 usage_reported, 9 _COST, 10 cost, 11 the currency and _TOTAL, 12 total_ms, 13 _UPSTREAM,
# 14 upstream_ms, 15 _OVERHEAD, 16 overhead_ms, 17 _TTFB, 18 ttfb_ms, 19 _ATTEMPTS, 20 attempts, 21 the optional
# fields and the line's end.
_SLOTS = 22
_NUMBERS = (10, 12, 14, 16, 18)  # the slots orjson renders as one list a flush (see _lines): cost and times
# The counts of a line (prompt_tokens, completion_tokens, attempts) rendered once when small, as orjson writes them;
# usage_reported's two values.
_COUNTS_KEPT: Final = 1024
_COUNTS: Final = tuple(b"%d" % i for i in range(_COUNTS_KEPT))
_TRUE: Final = b"true"
_FALSE: Final = b"false"


def _count(value: object) -> bytes:
    """``value`` (a count, nearly always) as orjson writes it: a small count from :data:`_COUNTS`."""
    if type(value) is int:
        n: int = value
        if 0 <= n < _COUNTS_KEPT:
            return _COUNTS[n]
    return orjson.dumps(value)


def _lines(fields: Sequence[Fields], currency: str) -> bytes:
    """The lines of entries given by their fields, one buffer: what :func:`_line` gives for each, one after the other.

    Rendered a column at a time: the part from ``tenant`` to ``client_ip`` once per distinct value (a flush's lines
    share a few, in runs: a line's is compared with the one before, hashed only when it differs), every number of
    the flush by one ``orjson.dumps`` of one list cut at its commas (a number has none: a count of pieces that is
    not the count of numbers sends the flush to :func:`_line`), and the pieces of every line joined once.
    """
    n = len(fields)
    if n == 0:
        return b""
    try:
        return _columns(fields, currency, n, True)
    except OverflowError:  # an infinite time, which floor() refuses: the float division gives what it always gave
        return _columns(fields, currency, n, False)


def _columns(fields: Sequence[Fields], currency: str, n: int, exact: bool) -> bytes:
    """:func:`_lines` of ``n`` entries' fields; a time's microseconds are rounded down by ``floor()`` when ``exact``,
    else by a float division (see _ms).

    The times are declared floats: compiled, their comparisons and arithmetic are native (a time of a record is a
    float, or an int, which a float accepts)."""
    parts: dict[tuple[Any, ...], bytes] = {}
    heads: list[bytes] = []
    ts_second: list[bytes] = []
    ts_millis: list[bytes] = []
    numbers: list[Any] = []
    prompts: list[bytes] = []
    completions: list[bytes] = []
    reports: list[bytes] = []
    attempt_counts: list[bytes] = []
    ends: list[bytes] = []
    millis = _MILLIS
    end, nanos = _END, NANOS
    # The previous line's values from tenant to client_ip (nothing before the first line)
    p_tenant: Any = _NOTHING
    p_key_id: Any = _NOTHING
    p_user: Any = _NOTHING
    p_plan: Any = _NOTHING
    p_namespace: Any = _NOTHING
    p_endpoint: Any = _NOTHING
    p_model: Any = _NOTHING
    p_served: Any = _NOTHING
    p_priced: Any = _NOTHING
    p_upstream: Any = _NOTHING
    p_provider: Any = _NOTHING
    p_deployment_model: Any = _NOTHING
    p_status: Any = _NOTHING
    p_error: Any = _NOTHING
    p_stream: Any = _NOTHING
    p_disconnected: Any = _NOTHING
    p_ip: Any = _NOTHING
    head = b""
    lo = hi = 0.0  # the second of the last timestamp: lo <= wall < hi
    second_text = b""
    wall: float
    total_s: float
    upstream_s: float
    overhead_s: float
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
        # Tenant to client_ip: the same for a run of lines (one tenant, model and outcome). Compared with the line
        # before value by value, as a tuple compares them (the same object, or equal values), without building
        # the tuple: the names of a tenant, its key and plan, of the upstream and the outcome's constants are the
        # same objects line after line; the model names (from each request's body), the status and the client's
        # address (one string a connection) may be equal objects. Any other difference looks the part up by value.
        if not (
            _tenant is p_tenant
            and _key_id is p_key_id
            and _user is p_user
            and _plan is p_plan
            and _namespace is p_namespace
            and _endpoint is p_endpoint
            and _upstream is p_upstream
            and _provider is p_provider
            and _deployment_model is p_deployment_model
            and _error is p_error
            and _stream is p_stream
            and _disconnected is p_disconnected
            and (_model is p_model or _model == p_model)
            and (_served is p_served or _served == p_served)
            and (_priced is p_priced or _priced == p_priced)
            and (_status is p_status or _status == p_status)
            and (_ip is p_ip or _ip == p_ip)
        ):
            p_tenant, p_key_id, p_user, p_plan, p_namespace, p_endpoint = (
                _tenant,
                _key_id,
                _user,
                _plan,
                _namespace,
                _endpoint,
            )
            p_model, p_served, p_priced, p_upstream, p_provider, p_deployment_model = (
                _model,
                _served,
                _priced,
                _upstream,
                _provider,
                _deployment_model,
            )
            p_status, p_error, p_stream, p_disconnected, p_ip = _status, _error, _stream, _disconnected, _ip
            who = f[2:19]
            found = parts.get(who)
            if found is None:
                found = parts[who] = b'"' + _who(who[:11]) + _outcome(who[12:])
            head = found
        heads.append(head)
        if not lo <= wall < hi:  # another second (kept only from the epoch on, where int() rounds down)
            second = int(wall)
            lo, hi = (float(second), float(second + 1)) if second >= 0 else (0.0, 0.0)
            second_text = _OPEN + _second(second).encode() + b"."
        ts_second.append(second_text)
        ts_millis.append(millis[int(wall * 1000) % 1000])
        prompts.append(_count(prompt))
        completions.append(_count(completion))
        reports.append(_TRUE if reported is True else _FALSE if reported is False else orjson.dumps(reported))
        attempt_counts.append(_count(attempts))
        # _ms(...) written out: floor(x) is the int(x) it takes, for x >= 0, without building an int type's call
        if exact:
            numbers.extend(
                (
                    cost / nanos,
                    floor(total_s * 1e6 + 0.5) / 1000 if total_s >= 0.0 else round(total_s * 1000, 3),
                    floor(upstream_s * 1e6 + 0.5) / 1000 if upstream_s >= 0.0 else round(upstream_s * 1000, 3),
                    floor(overhead_s * 1e6 + 0.5) / 1000 if overhead_s >= 0.0 else round(overhead_s * 1000, 3),
                    None
                    if ttfb_s is None
                    else floor(ttfb_s * 1e6 + 0.5) / 1000
                    if ttfb_s >= 0.0
                    else round(ttfb_s * 1000, 3),
                )
            )
        else:
            numbers.extend(
                (
                    cost / nanos,
                    (total_s * 1e6 + 0.5) // 1.0 / 1000 if total_s >= 0.0 else round(total_s * 1000, 3),
                    (upstream_s * 1e6 + 0.5) // 1.0 / 1000 if upstream_s >= 0.0 else round(upstream_s * 1000, 3),
                    (overhead_s * 1e6 + 0.5) // 1.0 / 1000 if overhead_s >= 0.0 else round(overhead_s * 1000, 3),
                    None
                    if ttfb_s is None
                    else (ttfb_s * 1e6 + 0.5) // 1.0 / 1000
                    if ttfb_s >= 0.0
                    else round(ttfb_s * 1000, 3),
                )
            )
        ends.append(end if not (cached or cache_write or reasoning or hit) else _extras(f))
    rendered = orjson.dumps(numbers)[1:-1].split(b",")
    ids = _request_ids(fields, n)
    if len(rendered) != len(numbers) or ids is None:  # a value that is not a number (a string with a comma), an id
        # that is not a string: line by line
        parts_of: dict[_Who, bytes] = {}
        seconds_of: dict[int, str] = {}
        return b"".join([_line(f, currency, parts_of, seconds_of) for f in fields])
    out: list[bytes] = [_COMMA] * (n * _SLOTS)
    out[0::_SLOTS] = ts_second
    out[1::_SLOTS] = ts_millis
    out[2::_SLOTS] = ids
    out[3::_SLOTS] = heads
    out[4::_SLOTS] = prompts
    out[6::_SLOTS] = completions
    out[8::_SLOTS] = reports
    out[20::_SLOTS] = attempt_counts
    width = len(_NUMBERS)
    for i, slot in enumerate(_NUMBERS):
        out[slot::_SLOTS] = rendered[i::width]
    out[5::_SLOTS] = repeat(_COMPLETION, n)
    out[7::_SLOTS] = repeat(_REPORTED, n)
    out[9::_SLOTS] = repeat(_COST, n)
    out[11::_SLOTS] = repeat(b',"currency":' + orjson.dumps(currency) + _TOTAL, n)
    out[13::_SLOTS] = repeat(_UPSTREAM, n)
    out[15::_SLOTS] = repeat(_OVERHEAD, n)
    out[17::_SLOTS] = repeat(_TTFB, n)
    out[19::_SLOTS] = repeat(_ATTEMPTS, n)
    out[21::_SLOTS] = ends
    return b"".join(out)


_REQUEST_ID = itemgetter(0)
_NOTHING: Final = object()  # no value of a line is this object


def _request_ids(fields: Sequence[Fields], n: int) -> list[bytes] | None:
    """The ``n`` request ids of ``fields`` as JSON strings without their quotes, by one ``orjson.dumps`` of their list
    cut at its ``","``: or None unless every id is a string that JSON writes without an escape.

    Without a backslash in the list's JSON no quote is escaped: every quote opens or closes a string, so ``","``
    is found only between two ids, and the list's ``n`` strings give ``n`` pieces. (An id with a quote, a backslash
    or a control character has its escapes written: its flush goes line by line. The edge keeps no such id from a
    client: tollgate/edge/answers.py request_id_from.)
    """
    request_ids = list(map(_REQUEST_ID, fields))
    if not all(map(_IS_STR, request_ids)):
        return None
    rendered = orjson.dumps(request_ids)
    if rendered.find(b"\\") >= 0:  # (not `in`: bytes.__contains__ first tries the bytes as an integer, and fails)
        return None
    ids = rendered[2:-2].split(b'","')
    return ids if len(ids) == n else None


_IS_STR = str.__instancecheck__


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
