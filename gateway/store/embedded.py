"""The embedded engine: the same ``lua/`` scripts run in-process by lupa (Lua 5.1, as in Redis) on a :class:`Keyspace`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lupa import lua51

from ..clock import Clock
from ..errors import StoreError
from .engine import Arg, EngineStats, ScriptCall
from .keyspace import Keyspace, ReplyError, Status, redis_str
from .scripts import Script, load_scripts

__all__ = ["EmbeddedEngine"]


class EmbeddedEngine:
    """Runs scripts atomically in the event loop's thread; ``TIME`` comes from the injected clock.

    Conversions follow Redis: KEYS and ARGV reach the script as strings; a
    command's nil reply is ``false``, an array is a table, a status is
    ``{ok = ...}``; the script's reply comes back with numbers truncated to
    integers, strings as bytes, ``true`` as 1 and ``false`` as None, arrays
    stopping at the first nil.
    """

    single_slot = False
    remote = False

    def __init__(self, clock: Clock, *, scripts: Mapping[str, Script] | None = None, name: str = "embedded") -> None:
        self.name = name
        self.stats = EngineStats()
        self.keyspace = Keyspace()
        self._clock = clock
        self._lua = lua51.LuaRuntime(unpack_returned_tuples=True, register_eval=False, register_builtins=False)
        self._table = self._lua.table_from
        self._commands = self.keyspace.commands
        redis = self._table({"call": self._call})
        # Each script becomes a function of (number of keys, keys..., args...)
        # whose reply comes back unpacked: one crossing each way, no per-item
        # indexing of Lua tables from Python.
        self._functions = {}
        for name_, script in (scripts or load_scripts()).items():
            factory = self._lua.eval(_WRAPPER.format(prelude=script.prelude, body=script.body))
            self._functions[name_] = factory(redis)

    # -- redis.call --------------------------------------------------------
    def _call(self, *args: Any) -> Any:
        for a in args:
            if type(a) is not str:
                args = tuple([a if type(a) is str else redis_str(a) for a in args])
                break
        command = self._commands.get(args[0]) if args else None
        if command is None:  # lower case, unknown, or no command at all: the slow, checked path
            if not args:
                raise ReplyError("ERR Please specify at least one argument for this redis lib call")
            reply = self.keyspace.call(*args)
        else:
            try:
                reply = command(*args[1:])
            except TypeError:
                raise ReplyError(f"ERR wrong number of arguments for '{args[0].lower()}' command") from None
        kind = type(reply)
        if kind is int or kind is str:
            return reply
        if reply is None:
            return False
        if kind is list:
            return self._table([False if v is None else v for v in reply])
        if kind is Status:
            return self._table({"ok": str(reply)})
        return reply

    # -- running -----------------------------------------------------------
    def run_sync(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run one script now; the embedded engine never waits, so this is the whole call."""
        self.stats.calls += 1
        function = self._functions.get(script)
        if function is None:
            raise StoreError(f"unknown script {script!r}")
        self.keyspace.begin(self._clock.time_ns())
        try:
            result = function(len(keys), *keys, *[a if type(a) is str else str(a) for a in args])
        except Exception as exc:  # lupa.LuaError, or a ReplyError raised through the script
            self.stats.failures += 1
            raise StoreError(f"embedded script {script} failed: {exc}") from exc
        return _from_lua(result)

    async def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        return self.run_sync(script, keys, args)

    async def run_batch(self, calls: Sequence[ScriptCall]) -> list[Any]:
        out: list[Any] = []
        for call in calls:
            try:
                out.append(self.run_sync(call.script, call.keys, call.args))
            except StoreError as exc:
                out.append(exc)
        return out

    async def close(self) -> None:
        return None


# The libraries (prelude) are instantiated once, when the engine starts;
# KEYS and ARGV are parameters of the body, as they are globals of a Redis
# script; a table reply is returned as ("table", unpack(reply)) so that lupa
# hands back one tuple.
_WRAPPER = """
function(redis)
  local function reply(value)
    if type(value) == 'table' and value.ok == nil and value.err == nil then
      return 'table', unpack(value)
    end
    return 'value', value
  end
{prelude}
  local function script(KEYS, ARGV)
{body}
  end
  return function(nkeys, ...)
    local all = {{...}}
    local KEYS, ARGV = {{}}, {{}}
    for i = 1, nkeys do
      KEYS[i] = all[i]
    end
    for i = nkeys + 1, #all do
      ARGV[i - nkeys] = all[i]
    end
    return reply(script(KEYS, ARGV))
  end
end
"""


def _from_lua(value: Any) -> Any:
    """A script's return value as Redis would reply it."""
    if type(value) is tuple:
        kind = value[0]
        if kind == "value":
            return _from_lua(value[1]) if len(value) > 1 else None
        out = []
        for item in value[1:]:  # the array part up to the first nil
            if item is None:
                break
            out.append(_from_lua(item))
        return out
    if value is None or value is False:
        return None
    if value is True:
        return 1
    if type(value) is int:
        return value
    if isinstance(value, float):
        return int(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    # A nested Lua table: its array part up to the first nil.
    nested = []
    i = 1
    while True:
        item = value[i]
        if item is None:
            return nested
        nested.append(_from_lua(item))
        i += 1
