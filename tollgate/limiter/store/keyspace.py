"""The embedded keyspace: exactly the Redis commands the limiter scripts use, on Lua tables with TTLs.

Commands (Redis semantics, RESP2 replies as a Lua script sees them):

    TIME
    GET key                 SET key value [PX ms]       DEL key [key ...]
    PEXPIRE key ms          PTTL key
    HMGET key field [field ...]                         HGETALL key
    HSET key field value [field value ...]              HINCRBY key field increment
    HDEL key field [field ...]
    ZADD key [XX] score member [score member ...]       ZSCORE key member
    ZCOUNT key min max      ZRANGEBYSCORE key min max [WITHSCORES] [LIMIT offset count]
    ZREM key member [member ...]                        ZREMRANGEBYSCORE key min max

They are implemented in ``lua/embedded_keyspace.lua`` and run in the same
Lua runtime as the scripts, so a script never calls back into Python. Any
other command is an error, so a script that starts using a new command
fails its embedded tests until the command is added there. Arguments may
arrive as strings or as Lua numbers: a number is stored or compared exactly
as Redis would receive it (integers in full, others as ``%.17g``); a hash or
sorted set left empty disappears, as in Redis. Time is frozen for the length
of one script (``begin``), as Redis does; an expired key is dropped when it
is next read, and a sweep at ``begin`` drops a bounded number of the others.

This class creates the keyspace in a Lua runtime (its own, or the engine's)
and lets Python call and inspect it: tests, the admin API.
"""

from __future__ import annotations

from typing import Any

try:  # LuaJIT 2.1 speaks Lua 5.1, the language Redis embeds, and runs the limiter scripts 2-3x faster
    from lupa import luajit21 as _lua
except ImportError:  # a lupa build without LuaJIT: the reference interpreter
    from lupa import lua51 as _lua

from tollgate.limiter.store.scripts import lua_dir

__all__ = ["KEYSPACE_FILE", "Keyspace", "ReplyError", "Status", "new_runtime"]

KEYSPACE_FILE = "embedded_keyspace.lua"


class ReplyError(Exception):
    """An error reply, as Redis would send it."""


class Status(str):
    """A status reply (``+OK``): a Lua script sees ``{ok = "OK"}``."""


def new_runtime() -> Any:
    """A Lua 5.1 runtime (the language Redis embeds; LuaJIT when lupa ships it) without Python's builtins or eval.

    Nor a ``debug`` global: on every call from Python, lupa looks up
    ``debug.traceback`` to install it as the error handler, a fifth of the cost
    of a small call; without it an error keeps Lua's message, with no traceback.
    tests/limiter runs every script on this runtime and on real Redis and compares every reply.
    """
    runtime = _lua.LuaRuntime(unpack_returned_tuples=True, register_eval=False, register_builtins=False)
    runtime.execute("debug = nil")
    return runtime


class Keyspace:
    """Keys -> string | hash | sorted set, each with an optional expiry in ms since the epoch.

    ``table`` is the Lua side (``keyspace_new()`` of the Lua file): the
    engine hands ``table.call`` to the scripts as ``redis.call``.
    ``commands`` names the commands implemented.
    """

    __slots__ = ("lua", "table", "commands", "_dispatch", "_begin")

    def __init__(self, lua: Any = None) -> None:
        self.lua = lua if lua is not None else new_runtime()
        source = lua_dir().joinpath(KEYSPACE_FILE).read_text(encoding="utf-8")
        self.table = self.lua.execute(f"{source}\nreturn keyspace_new")()
        self.commands: frozenset[str] = frozenset(self.table.commands.keys())
        self._dispatch = self.table.dispatch
        self._begin = self.table.begin

    # -- time ------------------------------------------------------------------------
    def begin(self, now_ns: int) -> None:
        """Freeze time for one script (or a series of ``call``) at ``now_ns``; sweep some expired keys."""
        self._begin(now_ns // 1000)

    # -- inspection (tests, admin) ---------------------------------------------------
    def __len__(self) -> int:
        """Live keys, once every expired one has been dropped."""
        return int(self.table.size())

    def keys(self) -> list[str]:
        return list(self.table.live_keys().values())

    def ttl_ms(self, key: str) -> int:
        """Like PTTL at the last ``begin``: -2 no key, -1 no TTL."""
        return int(self.table.pttl(key))

    # -- commands from Python -------------------------------------------------------
    def call(self, name: str, *args: Any) -> Any:
        """One command; the reply as Redis sends it (None for nil, a :class:`Status`, lists, ints, str)."""
        ok, reply = self._dispatch(name, *args)
        if not ok:
            raise ReplyError(reply)
        return _to_python(reply)


def _to_python(value: Any) -> Any:
    if value is False:
        return None
    kind = type(value)
    if kind is int or kind is str:
        return value
    if kind is float:
        return int(value)
    ok = value["ok"]
    if ok is not None:
        return Status(ok)
    out = []
    i = 1
    while (item := value[i]) is not None:
        out.append(_to_python(item))
        i += 1
    return out
