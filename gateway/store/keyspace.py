"""An in-process keyspace answering exactly the Redis commands the limiter scripts use, with TTLs.

Commands (Redis semantics, RESP2 replies as a Lua script sees them):

    TIME
    GET key                 SET key value [PX ms]       DEL key [key ...]
    PEXPIRE key ms          PTTL key
    HGET key field          HMGET key field [field ...] HGETALL key
    HSET key field value [field value ...]              HINCRBY key field increment
    HDEL key field [field ...]
    ZADD key [XX] score member [score member ...]       ZSCORE key member
    ZCOUNT key min max      ZRANGEBYSCORE key min max [WITHSCORES] [LIMIT offset count]
    ZREM key member [member ...]                        ZREMRANGEBYSCORE key min max

Any other command is an error, so a script that starts using a new command
fails its embedded tests until the command is added here. Arguments may arrive
as strings or as Lua numbers: a number is stored or compared exactly as Redis
would receive it (integers in full, others as ``%.17g``); a hash or sorted set
left empty disappears, as in Redis. Time is frozen for the length of one
script (``begin``), as Redis does; expired keys are removed then.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["Keyspace", "ReplyError", "Status", "redis_str"]

_WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"


class ReplyError(Exception):
    """An error reply, as Redis would send it (raised into the script)."""


class Status(str):
    """A status reply (``+OK``): a Lua script sees ``{ok = "OK"}``."""


class _ZSet(dict):  # member -> score
    __slots__ = ()


def redis_str(value: Any) -> str:
    """An argument as Redis receives it from Lua: strings unchanged, numbers as ``%.17g``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReplyError("ERR Lua redis lib command arguments must be strings or integers")
    if isinstance(value, int) and -10**17 < value < 10**17:
        return str(value)
    return "%.17g" % value


def _score(value: float) -> str:
    return "%.17g" % value


def _parse_bound(text: Any) -> tuple[float, bool]:
    """A ZRANGEBYSCORE bound: ``(5`` is exclusive, ``-inf`` / ``+inf`` are infinite."""
    text = _s(text)
    exclusive = text.startswith("(")
    if exclusive:
        text = text[1:]
    low = text.lower()
    if low in ("+inf", "inf"):
        return float("inf"), exclusive
    if low == "-inf":
        return float("-inf"), exclusive
    try:
        return float(text), exclusive
    except ValueError:
        raise ReplyError("ERR min or max is not a float") from None


def _in_range(score: float, lo: tuple[float, bool], hi: tuple[float, bool]) -> bool:
    above = score > lo[0] if lo[1] else score >= lo[0]
    below = score < hi[0] if hi[1] else score <= hi[0]
    return above and below


def _int(text: Any, what: str = "value") -> int:
    kind = type(text)
    if kind is int:
        return text
    if kind is str:
        try:
            return int(text)
        except ValueError:
            pass
    elif kind is float and text.is_integer():
        return int(text)
    raise ReplyError(f"ERR {what} is not an integer or out of range")


def _s(value: Any) -> str:
    """A string argument (a field, member or value) as Redis would receive it."""
    return value if type(value) is str else redis_str(value)


class Keyspace:
    """Keys -> str | dict (hash) | _ZSet, with expiry times in ms since the epoch."""

    __slots__ = ("_data", "_expires", "_heap", "_now_ms", "_now_us", "commands")

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._expires: dict[str, int] = {}
        self._heap: list[tuple[int, str]] = []
        self._now_ms = 0
        self._now_us = 0
        self.commands: dict[str, Callable[..., Any]] = {
            "TIME": self._time,
            "GET": self._get,
            "SET": self._set,
            "DEL": self._del,
            "PEXPIRE": self._pexpire,
            "PTTL": self._pttl,
            "HGET": self._hget,
            "HMGET": self._hmget,
            "HGETALL": self._hgetall,
            "HSET": self._hset,
            "HINCRBY": self._hincrby,
            "HDEL": self._hdel,
            "ZADD": self._zadd,
            "ZSCORE": self._zscore,
            "ZCOUNT": self._zcount,
            "ZRANGEBYSCORE": self._zrangebyscore,
            "ZREM": self._zrem,
            "ZREMRANGEBYSCORE": self._zremrangebyscore,
        }

    # -- time and expiry ---------------------------------------------------
    def begin(self, now_ns: int) -> None:
        """Freeze time for one script at ``now_ns`` and drop every key that has expired by then."""
        self._now_us = now_ns // 1000
        self._now_ms = now_ns // 1_000_000
        heap, expires, now = self._heap, self._expires, self._now_ms
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            if expires.get(key) == at:
                del expires[key]
                del self._data[key]

    def _set_expiry(self, key: str, at: int) -> None:
        self._expires[key] = at
        heapq.heappush(self._heap, (at, key))
        if len(self._heap) > 2 * len(self._expires) + 1024:
            self._heap = [(t, k) for k, t in self._expires.items()]
            heapq.heapify(self._heap)

    def _drop(self, key: str) -> None:
        self._data.pop(key, None)
        self._expires.pop(key, None)

    def _lookup(self, key: str, kind: type | None) -> Any:
        value = self._data.get(key)
        if value is None:
            return None
        at = self._expires.get(key)
        if at is not None and at <= self._now_ms:
            self._drop(key)
            return None
        if kind is not None and type(value) is not kind:
            raise ReplyError(_WRONGTYPE)
        return value

    # -- inspection (tests, admin) -----------------------------------------
    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> list[str]:
        return [k for k in self._data if self._lookup(k, None) is not None]

    def ttl_ms(self, key: str) -> int:
        """Like PTTL at the last ``begin``: -2 no key, -1 no TTL."""
        return self._pttl(key)

    # -- dispatch ----------------------------------------------------------
    def call(self, name: str, *args: Any) -> Any:
        command = self.commands.get(_s(name).upper())
        if command is None:
            raise ReplyError(f"ERR unknown command '{name}' (not implemented by the embedded keyspace)")
        try:
            return command(*args)
        except TypeError:
            raise ReplyError(f"ERR wrong number of arguments for '{name.lower()}' command") from None

    # -- commands ----------------------------------------------------------
    def _time(self) -> list[str]:
        return [str(self._now_us // 1_000_000), str(self._now_us % 1_000_000)]

    def _get(self, key: str) -> str | None:
        return self._lookup(key, str)

    def _set(self, key: str, value: str, *options: str) -> Status:
        at = None
        if options:
            if len(options) != 2 or _s(options[0]).upper() != "PX":
                raise ReplyError("ERR syntax error (the embedded keyspace supports SET key value [PX ms])")
            ms = _int(options[1])
            if ms <= 0:
                raise ReplyError("ERR invalid expire time in 'set' command")
            at = self._now_ms + ms
        self._data[_s(key)] = _s(value)
        if at is None:
            self._expires.pop(key, None)
        else:
            self._set_expiry(key, at)
        return Status("OK")

    def _del(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._lookup(key, None) is not None:
                self._drop(key)
                removed += 1
        return removed

    def _pexpire(self, key: str, ms: str) -> int:
        if self._lookup(key, None) is None:
            return 0
        delta = _int(ms)
        if delta <= 0:
            self._drop(key)
        else:
            self._set_expiry(key, self._now_ms + delta)
        return 1

    def _pttl(self, key: str) -> int:
        if self._lookup(key, None) is None:
            return -2
        at = self._expires.get(key)
        return -1 if at is None else at - self._now_ms

    def _hget(self, key: str, field: str) -> str | None:
        h = self._lookup(key, dict)
        return None if h is None else h.get(_s(field))

    def _hmget(self, key: str, *fields: str) -> list[str | None]:
        if not fields:
            raise TypeError
        h = self._lookup(key, dict) or {}
        return [h.get(_s(f)) for f in fields]

    def _hgetall(self, key: str) -> list[str]:
        h = self._lookup(key, dict)
        out: list[str] = []
        if h:
            for f, v in h.items():
                out.append(f)
                out.append(v)
        return out

    def _hset(self, key: str, *pairs: str) -> int:
        if not pairs or len(pairs) % 2:
            raise TypeError
        h = self._lookup(key, dict)
        if h is None:
            h = self._data[key] = {}
        added = 0
        for i in range(0, len(pairs), 2):
            field = _s(pairs[i])
            if field not in h:
                added += 1
            h[field] = _s(pairs[i + 1])
        return added

    def _hincrby(self, key: str, field: str, increment: str) -> int:
        h = self._lookup(key, dict)
        if h is None:
            h = self._data[key] = {}
        field = _s(field)
        old = h.get(field)
        value = (_int(old, "hash value") if old is not None else 0) + _int(increment)
        h[field] = str(value)
        return value

    def _hdel(self, key: str, *fields: str) -> int:
        if not fields:
            raise TypeError
        h = self._lookup(key, dict)
        if h is None:
            return 0
        removed = sum(1 for f in fields if h.pop(_s(f), None) is not None)
        if not h:
            self._drop(key)
        return removed

    def _zadd(self, key: str, *args: str) -> int:
        xx = False
        while args and type(args[0]) is str and args[0].upper() == "XX":
            xx = True
            args = args[1:]
        if not args or len(args) % 2:
            raise ReplyError("ERR syntax error")
        pairs = []
        for i in range(0, len(args), 2):
            try:
                pairs.append((float(_s(args[i])), _s(args[i + 1])))
            except ValueError:
                raise ReplyError("ERR value is not a valid float") from None
        z = self._lookup(key, _ZSet)
        if z is None:
            if xx:
                return 0
            z = self._data[key] = _ZSet()
        added = 0
        for score, member in pairs:
            if member in z:
                z[member] = score
            elif not xx:
                z[member] = score
                added += 1
        return added

    def _zscore(self, key: str, member: str) -> str | None:
        z = self._lookup(key, _ZSet)
        member = _s(member)
        if z is None or member not in z:
            return None
        return _score(z[member])

    def _zcount(self, key: str, lo: str, hi: str) -> int:
        z = self._lookup(key, _ZSet)
        if z is None:
            return 0
        a, b = _parse_bound(lo), _parse_bound(hi)
        return sum(1 for s in z.values() if _in_range(s, a, b))

    def _zrangebyscore(self, key: str, lo: str, hi: str, *options: str) -> list[str]:
        with_scores, offset, count = False, 0, -1
        i = 0
        while i < len(options):
            opt = _s(options[i]).upper()
            if opt == "WITHSCORES":
                with_scores = True
                i += 1
            elif opt == "LIMIT" and i + 2 < len(options):
                offset, count = _int(options[i + 1]), _int(options[i + 2])
                i += 3
            else:
                raise ReplyError("ERR syntax error")
        z = self._lookup(key, _ZSet)
        if z is None:
            return []
        a, b = _parse_bound(lo), _parse_bound(hi)
        hits = sorted((s, m) for m, s in z.items() if _in_range(s, a, b))
        hits = hits[offset:] if count < 0 else hits[offset : offset + count]
        out: list[str] = []
        for s, m in hits:
            out.append(m)
            if with_scores:
                out.append(_score(s))
        return out

    def _zrem(self, key: str, *members: str) -> int:
        if not members:
            raise TypeError
        z = self._lookup(key, _ZSet)
        if z is None:
            return 0
        removed = sum(1 for m in members if z.pop(_s(m), None) is not None)
        if not z:
            self._drop(key)
        return removed

    def _zremrangebyscore(self, key: str, lo: str, hi: str) -> int:
        z = self._lookup(key, _ZSet)
        if z is None:
            return 0
        a, b = _parse_bound(lo), _parse_bound(hi)
        dead = [m for m, s in z.items() if _in_range(s, a, b)]
        for m in dead:
            del z[m]
        if not z:
            self._drop(key)
        return len(dead)
