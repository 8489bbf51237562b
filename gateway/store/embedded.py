"""The embedded engine: the same ``lua/`` scripts run in-process by lupa (the Lua 5.1 language, as in Redis; LuaJIT when available) on a Lua-side :class:`Keyspace`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..clock import Clock
from ..errors import StoreError
from .engine import Arg, EngineStats, ScriptCall
from .keyspace import Keyspace
from .scripts import Script, load_scripts

__all__ = ["EmbeddedEngine"]


class EmbeddedEngine:
    """Runs scripts atomically in the event loop's thread; ``TIME`` comes from the injected clock.

    Conversions follow Redis: KEYS and ARGV reach the script as strings; a
    command's nil reply is ``false``, an array is a table, a status is
    ``{ok = ...}``; the script's reply comes back with numbers truncated to
    integers, strings as bytes, ``true`` as 1 and ``false`` as None, arrays
    stopping at the first nil. The keyspace lives in the same Lua runtime
    (``lua/embedded_keyspace.lua``): one call of a script is one crossing
    from Python into Lua and one back, with the clock read once.
    """

    single_slot = False
    remote = False

    def __init__(self, clock: Clock, *, scripts: Mapping[str, Script] | None = None, name: str = "embedded") -> None:
        self.name = name
        self.stats = EngineStats()
        self.keyspace = Keyspace()
        self._clock = clock
        # Each script becomes a function of (now in us, number of ARGV, ARGV..., KEYS...)
        # whose reply comes back unpacked.
        self._functions = {}
        for name_, script in (scripts or load_scripts()).items():
            factory = self.keyspace.lua.eval(_WRAPPER.format(prelude=script.prelude, body=script.body))
            self._functions[name_] = factory(self.keyspace.table)

    # -- running -----------------------------------------------------------
    def run_sync(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run one script now; the embedded engine never waits, so this is the whole call."""
        self.stats.calls += 1
        function = self._functions.get(script)
        if function is None:
            raise StoreError(f"unknown script {script!r}")
        try:
            result = function(self._clock.time_ns() // 1000, len(args), *args, *keys)
        except Exception as exc:  # lupa.LuaError: an error reply or a bug in the script
            self.stats.failures += 1
            raise StoreError(f"embedded script {script} failed: {exc}") from exc
        if result[0] == _ARRAY:
            _, *reply = result
            for item in reply:  # integers are the rule; anything else is converted
                if type(item) is not int:
                    return _array(reply)
            return reply
        return _from_lua(result[1])

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


_ARRAY = 1  # the reply is an array, its items follow unpacked; 0: one value follows

# The libraries (prelude) are instantiated once, when the engine starts;
# KEYS and ARGV are parameters of the body, as they are globals of a Redis
# script. KEYS and ARGV numbers become strings the way Redis formats them
# (integers in full, others as %.17g; keyspace.str remembers the last
# thousand or so). redis.call is the keyspace's, in Lua.
# An error reply raised by redis.call is a table {err = ...}, as in Redis 7;
# it leaves as a Lua error with that message. The script's reply leaves as
# (1, unpack(array)) or (0, value), so that lupa hands back one tuple.
_WRAPPER = """
function(keyspace)
  local select, unpack, type, error, pcall = select, unpack, type, error, pcall
  local begin, str = keyspace.begin, keyspace.str
  local redis = {{ call = keyspace.call }}
  local function reply(ok, value)
    local t = type(value)
    if not ok then
      if t == 'table' and value.err ~= nil then
        error(value.err, 0)
      end
      error(value, 0)
    end
    if t ~= 'table' then
      return 0, value
    elseif value.err ~= nil then
      error(value.err, 0)
    elseif value.ok ~= nil then
      return 0, value.ok
    end
    local n = #value
    if n > 4096 then
      return 0, value
    end
    return 1, unpack(value, 1, n)
  end
{prelude}
  local function script(KEYS, ARGV)
{body}
  end
  return function(now_us, nargs, ...)
    begin(now_us)
    local ARGV, KEYS = {{...}}, {{}}
    for i = nargs + 1, select('#', ...) do
      local v = ARGV[i]
      if type(v) ~= 'string' then
        v = str(v)
      end
      KEYS[i - nargs] = v
      ARGV[i] = nil
    end
    for i = 1, nargs do
      local v = ARGV[i]
      if type(v) ~= 'string' then
        ARGV[i] = str(v)
      end
    end
    return reply(pcall(script, KEYS, ARGV))
  end
end
"""


def _array(items: list[Any]) -> list[Any]:
    """An array reply's items as Redis would reply them: up to the first nil."""
    out = []
    for item in items:
        if item is None:
            break
        out.append(_from_lua(item))
    return out


def _from_lua(value: Any) -> Any:
    """A script's return value as Redis would reply it."""
    if value is None or value is False:
        return None
    if value is True:
        return 1
    kind = type(value)
    if kind is int:
        return value
    if kind is float:
        return int(value)
    if kind is str:
        return value.encode("utf-8")
    if kind is bytes:
        return value
    if value["err"] is not None:
        raise StoreError(f"embedded script returned an error: {value['err']}")
    if value["ok"] is not None:
        return _from_lua(value["ok"])
    # A nested Lua table: its array part up to the first nil.
    nested = []
    i = 1
    while (item := value[i]) is not None:
        nested.append(_from_lua(item))
        i += 1
    return nested
