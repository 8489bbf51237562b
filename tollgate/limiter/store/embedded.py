"""The embedded engine: the same ``lua/`` scripts run in-process by lupa (the Lua 5.1 language, as in Redis; LuaJIT when available) on a Lua-side :class:`Keyspace`."""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from tollgate.clock import Clock
from tollgate.errors import StoreError
from tollgate.limiter.store.engine import Arg, EngineStats, ScriptCall
from tollgate.limiter.store.keyspace import Keyspace
from tollgate.limiter.store.scripts import Script, load_scripts, lua_dir

__all__ = ["EmbeddedEngine"]


class EmbeddedEngine:
    """Runs scripts atomically in the event loop's thread; ``TIME`` comes from the injected clock.

    Conversions follow Redis: KEYS and ARGV reach the script as strings; a
    command's nil reply is ``false``, an array is a table, a status is
    ``{ok = ...}``; the script's reply comes back with numbers truncated to
    integers, strings as bytes, ``true`` as 1 and ``false`` as None, arrays
    stopping at the first nil. The keyspace lives in the same Lua runtime
    (``lua/embedded_keyspace.lua``): one call of a script is one crossing
    from Python into Lua and one back, with the clock read once. On LuaJIT an
    all-integer array reply (every limiter script's) comes back through a
    buffer of int64 the Lua side writes into (``_reply``), read with one copy
    instead of one conversion per item; so one engine serves one thread (the
    event loop's), as its Lua runtime does.

    With ``coalesce`` (the gateway's setting), :meth:`run` queues the call
    and the calls queued during one event-loop tick run back to back at its
    end, each still one atomic script call, in the order they came. Run
    between the rest of a request's work, a script call finds the Lua
    runtime's code and data out of the CPU caches and costs several times
    what it costs run after another one.
    """

    single_slot = False
    remote = False

    def __init__(
        self,
        clock: Clock,
        *,
        scripts: Mapping[str, Script] | None = None,
        name: str = "embedded",
        coalesce: bool = False,
    ) -> None:
        self.name = name
        self.coalesce = coalesce
        self._pending: list[tuple[str, Sequence[str], Sequence[Arg], asyncio.Future[Any]]] = []
        self.stats = EngineStats()
        self.keyspace = Keyspace()
        self._clock = clock
        # Each script becomes two functions whose reply comes back unpacked: one of (now in us, number of ARGV,
        # ARGV..., KEYS...), and one of (now in us, handle, last ARGV) for a registered call (see run_sync).
        self._functions: dict[str, tuple[Any, Any]] = {}
        # Kept for the engine's life and never resized: the Lua side holds its address.
        self._reply = array("q", bytes(8 * REPLY_SLOTS))
        address = self._reply.buffer_info()[0]
        # Repeated calls (see run_sync): per KEYS tuple's id, [that tuple, the ARGV but the last seen with it, its
        # handle in the Lua table of registered calls (0: seen once, not registered)].
        self._repeated: dict[int, list[Any]] = {}
        self._registered = 0  # handles given out since the last reset
        self._calls = self.keyspace.lua.table()
        wrapper = lua_dir().joinpath(WRAPPER_FILE).read_text(encoding="utf-8")
        for name_, script in (scripts or load_scripts()).items():
            source = wrapper.replace("-- @prelude", script.prelude, 1).replace("-- @body", script.body, 1)
            factory = self.keyspace.lua.eval(source)
            self._functions[name_] = factory(self.keyspace.table, address, REPLY_SLOTS, self._calls)

    # -- running -----------------------------------------------------------
    def run_sync(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """Run one script now; the embedded engine never waits, so this is the whole call.

        A call whose KEYS is a tuple seen before with the same ARGV but the last (an admission's limits: the
        limiter's layout of a request's limits hands the same KEYS tuple and limit texts request after request,
        with a new lease id last) crosses into Lua as (handle, last ARGV): its KEYS and other ARGV were handed to
        Lua once, the second time they came, and are copied there into the call's own KEYS and ARGV. lupa encodes
        and hands over every string argument one by one, most of the cost of a call with ten of them.
        """
        self.stats.calls += 1
        functions = self._functions.get(script)
        if functions is None:
            raise StoreError(f"unknown script {script!r}")
        try:
            if type(keys) is tuple and args:
                seen = self._repeated.get(id(keys))
                if seen is not None and seen[0] is keys and seen[1] == args[:-1]:
                    handle = seen[2] or self._register(seen)
                    result = functions[1](self._clock.time_ns() // 1000, handle, args[-1])
                else:
                    self._remember(keys, args)
                    result = functions[0](self._clock.time_ns() // 1000, len(args), *args, *keys)
            else:
                result = functions[0](self._clock.time_ns() // 1000, len(args), *args, *keys)
        except Exception as exc:  # lupa.LuaError: an error reply or a bug in the script
            self.stats.failures += 1
            raise StoreError(f"embedded script {script} failed: {exc}") from exc
        if type(result) is int:  # an array of integers, in the reply buffer's first `result` slots
            return self._reply[:result].tolist()
        kind = result[0]
        if kind == _INTEGERS:  # the rule: an array of integers, nothing to convert
            _, *reply = result
            return reply
        if kind == _ARRAY:
            _, *reply = result
            return _array(reply)
        return _from_lua(result[1])

    def _remember(self, keys: tuple[str, ...], args: Sequence[Arg]) -> None:
        """A KEYS tuple seen (again, with other ARGV): kept, and registered in Lua if it comes back unchanged.

        The entry holds the tuple, so its id cannot name another while the entry lives. At REPEATED_LIMIT entries
        all are dropped and handles start again from 1 (a registered call's Lua table is replaced when its handle
        is given out again): the Lua side holds at most twice REPEATED_LIMIT of them, each entry registered once.
        """
        if len(self._repeated) >= REPEATED_LIMIT or self._registered >= REPEATED_LIMIT:
            self._repeated.clear()
            self._registered = 0
        self._repeated[id(keys)] = [keys, args[:-1], 0]

    def _register(self, seen: list[Any]) -> int:
        """Hand a repeated call's KEYS and ARGV but the last to Lua; its handle."""
        self._registered += 1
        handle = seen[2] = self._registered
        lua = self.keyspace.lua
        self._calls[handle] = lua.table(lua.table(*seen[0]), lua.table(*seen[1]))
        return handle

    def run(self, script: str, keys: Sequence[str], args: Sequence[Arg]) -> Awaitable[Any]:
        """A future of the call's reply: done at once, or (coalescing) at the end of this tick.

        A plain function handing out the future, not a coroutine: one frame less
        to suspend and resume on every admission.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.coalesce:
            try:
                future.set_result(self.run_sync(script, keys, args))
            except StoreError as exc:
                future.set_exception(exc)
            return future
        self._pending.append((script, keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for script, keys, args, future in pending:
            if future.done():  # the caller was cancelled before its turn: nothing is consumed
                continue
            try:
                future.set_result(self.run_sync(script, keys, args))
            except StoreError as exc:
                future.set_exception(exc)
            except Exception as exc:  # a bug converting a reply: that caller fails, the others still get theirs
                future.set_exception(StoreError(f"embedded script {script} failed: {exc!r}"))

    async def run_batch(self, calls: Sequence[ScriptCall]) -> list[Any]:
        out: list[Any] = []
        for call in calls:
            try:
                out.append(self.run_sync(call.script, call.keys, call.args))
            except StoreError as exc:
                out.append(exc)
        return out

    async def start(self) -> None:
        return None  # nothing to open

    async def ping(self, timeout: float) -> None:
        """In the process: it always answers."""
        return None

    async def close(self) -> None:
        return None


# How a script is run in-process: a Lua file of its own, like every other piece of Lua (lua/embedded_wrapper.lua).
WRAPPER_FILE = "embedded_wrapper.lua"
REPLY_SLOTS = 4096  # integers an array reply may hold to come back through the buffer (32 KiB)
REPEATED_LIMIT = 4096  # KEYS tuples an engine remembers (and calls it registers in Lua): the limiter's layouts
_INTEGERS = 1  # the reply is an array of integers, its items follow unpacked
_ARRAY = 2  # the reply is another array, its items follow unpacked; 0: one value follows


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
