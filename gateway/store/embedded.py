"""The embedded engine: the same ``lua/`` scripts run in-process by lupa (Lua 5.1, as in Redis) on a :class:`Keyspace`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lupa import lua51

from ..clock import Clock
from ..errors import StoreError
from .engine import Arg, EngineStats, ScriptCall
from .keyspace import Keyspace, ReplyError, Status
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
        self._commands = self.keyspace.commands
        # Each script becomes a function of (number of keys, keys..., args...)
        # whose reply comes back unpacked: one crossing each way, no per-item
        # indexing of Lua tables from Python.
        self._functions = {}
        for name_, script in (scripts or load_scripts()).items():
            factory = self._lua.eval(_WRAPPER.format(prelude=script.prelude, body=script.body))
            self._functions[name_] = factory(self._call)

    # -- redis.call --------------------------------------------------------
    def _call(self, name: str, *args: Any) -> tuple[Any, ...]:
        """One command; arguments arrive as Lua strings or numbers, the reply leaves as (kind, values...)."""
        command = self._commands.get(name)
        if command is None:  # lower case, or unknown: the checked path
            reply = self.keyspace.call(name, *args)
        else:
            try:
                reply = command(*args)
            except TypeError:
                raise ReplyError(f"ERR wrong number of arguments for '{name.lower()}' command") from None
        kind = type(reply)
        if kind is int or kind is str:
            return 0, reply
        if reply is None:
            return 0, False
        if kind is list:
            if None in reply:
                return (1, *[False if v is None else v for v in reply])
            return (1, *reply)
        if kind is Status:
            return 2, str(reply)
        return 0, reply

    # -- running -----------------------------------------------------------
    def run_sync(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run one script now; the embedded engine never waits, so this is the whole call."""
        self.stats.calls += 1
        function = self._functions.get(script)
        if function is None:
            raise StoreError(f"unknown script {script!r}")
        self.keyspace.begin(self._clock.time_ns())
        try:
            result = function(len(keys), *keys, *args)
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
# script. ARGV numbers become strings the way Redis formats them (integers in
# full, others as %.17g), in Lua where that is cheap; numbers handed to
# redis.call are converted by the keyspace where it stores or compares them.
# A command's reply crosses as
# (kind, values...): 0 a scalar (false for nil), 1 an array, 2 a status; the
# script's reply as ("table", unpack(reply)) so that lupa hands back one tuple.
_WRAPPER = """
function(py_call)
  local format, floor, select, unpack, type, error = string.format, math.floor, select, unpack, type, error
  local function str(v)
    local t = type(v)
    if t == 'string' then
      return v
    elseif t == 'number' then
      if v == floor(v) and v > -1e17 and v < 1e17 then
        return format('%d', v)
      end
      return format('%.17g', v)
    end
    error('Lua redis lib command arguments must be strings or integers')
  end
  local function command_reply(kind, ...)
    if kind == 0 then
      return (...)
    elseif kind == 1 then
      return {{...}}
    end
    return {{ok = (...)}}
  end
  local redis = {{}}
  redis.call = function(...)
    return command_reply(py_call(...))
  end
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
      ARGV[i - nkeys] = str(all[i])
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
        out = list(value[1:])
        for i, item in enumerate(out):  # numbers are the rule; anything else is converted
            if type(item) is not int:
                if item is None:  # the array part stops at the first nil
                    return out[:i] if i else []
                out[i] = _from_lua(item)
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
