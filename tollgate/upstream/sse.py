"""Incremental SSE event parser for the stream relay, with a per-stream monitor hook.

The relay feeds every upstream chunk to :meth:`SseParser.feed` and writes what
it returns: the complete events of the chunk, byte for byte, minus any event a
monitor dropped. Only the bytes of a trailing incomplete event are held back
(so the client never sees half an event, even when the stream ends in an error
event). ``data:`` payloads are parsed as JSON once each; ``[DONE]`` is noted, as is an
event whose ``type`` is one of the dialect's ``terminal`` types (Anthropic's ``message_stop``,
the Responses API's ``response.completed``...), which end their streams instead.

Monitor hook (the accounting stage uses it): an object with

* ``on_event(data) -> PASS | DROP | HOLD | bytes | EndStream(message, code)``:
  called with the parsed JSON of each ``data:`` event, in order, on the attempt
  that serves the client (never on one that failed before its first event).
  ``DROP`` removes the event from what the client gets (e.g. the usage chunk the
  gateway asked for when the client did not); ``bytes`` replaces the event's
  data with that JSON (its other lines, such as ``event:``, kept); ``HOLD`` stops the parser before this event (the relay
  awaits ``monitor.cover()``, then calls :meth:`SseParser.resume`, which offers
  the same event again: e.g. a token budget that must grow before the event may
  go out); ``EndStream`` ends the stream with an SSE error event instead of this
  event and everything after it (e.g. a token budget cut). The final chunk's
  ``usage`` is simply read here.
* ``on_end(outcome)``: called once when the stream is over, with one of
  ``"done"`` (the terminator arrived), ``"truncated"``, ``"malformed"``,
  ``"stalled"``, ``"broken"``, ``"ended"`` (a monitor ended it) or
  ``"client_gone"``.

Several monitors can be combined with :class:`MonitorChain`.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

__all__ = [
    "DROP",
    "HOLD",
    "MAX_EVENT_BYTES",
    "PASS",
    "EndStream",
    "MonitorChain",
    "SseParser",
    "StreamMonitor",
]

PASS = 0
DROP = 1
HOLD = 2
# An event larger than this is refused as malformed rather than buffered without bound.
MAX_EVENT_BYTES = 4 * 1024 * 1024
_DONE = b"[DONE]"


class EndStream:
    """A monitor's verdict: end the stream now with an SSE error event carrying ``message`` and ``code``."""

    __slots__ = ("message", "code")

    def __init__(self, message: str, code: str) -> None:
        self.message = message
        self.code = code


class StreamMonitor(Protocol):
    def on_event(self, data: Any) -> int | bytes | EndStream: ...

    async def cover(self) -> None: ...

    def on_end(self, outcome: str) -> None: ...


class MonitorChain:
    """Several monitors in order: the first that does not PASS decides for the event."""

    __slots__ = ("monitors",)

    def __init__(self, *monitors: StreamMonitor) -> None:
        self.monitors = monitors

    def on_event(self, data: Any) -> int | bytes | EndStream:
        for m in self.monitors:
            verdict = m.on_event(data)
            if verdict != PASS:
                return verdict
        return PASS

    async def cover(self) -> None:
        for m in self.monitors:
            await m.cover()

    def on_end(self, outcome: str) -> None:
        for m in self.monitors:
            m.on_end(outcome)


class SseParser:
    """Splits a byte stream into SSE events across chunk boundaries.

    After each :meth:`feed`, ``stop`` is ``(message, code)`` when the stream must
    end with an error event (malformed event or a monitor's ``EndStream``);
    the bytes returned by that call are the events before it. ``events`` counts
    the ``data:`` events seen (``[DONE]`` excluded), ``done`` says the
    terminator arrived. ``holding`` says a monitor held an event back: the
    bytes from that event on wait for :meth:`resume`.
    """

    __slots__ = ("monitor", "pending", "done", "events", "stop", "holding", "_held", "_sep", "_nl", "_terminal")

    def __init__(self, monitor: StreamMonitor | None = None, terminal: frozenset[str] = frozenset()) -> None:
        self.monitor = monitor
        self._terminal = terminal
        self.pending = b""
        self.done = False
        self.events = 0
        self.stop: tuple[str, str] | None = None
        self.holding = False
        self._held = b""
        self._sep = b""
        self._nl = b"\n"

    def feed(self, chunk: bytes) -> bytes:
        if self.holding:  # nothing passes a held event: keep the bytes for resume()
            self.pending += chunk
            return b""
        buf = self.pending + chunk if self.pending else chunk
        sep = self._sep
        if not sep:
            sep = self._sep = b"\r\n\r\n" if b"\r\n" in buf else b"\n\n"
            if len(sep) == 4:
                self._nl = b"\r\n"
        if buf.endswith(sep):  # the usual chunk: whole events
            self.pending = b""
            return self._events(buf, sep)
        end = buf.rfind(sep)
        if end < 0:
            if len(buf) > MAX_EVENT_BYTES:
                self.stop = ("upstream sent an event larger than the gateway accepts", "upstream_malformed_event")
                self.pending = b""
            else:
                self.pending = buf
            return b""
        end += len(sep)
        if end == len(buf):
            complete = buf
            self.pending = b""
        else:
            complete = buf[:end]
            self.pending = buf[end:]
        return self._events(complete, sep)

    def resume(self) -> bytes:
        """After the monitor's ``cover()``: the held events offered again, then what arrived meanwhile."""
        held, self._held, self.holding = self._held, b"", False
        out = self._events(held, self._sep) if held else b""
        if self.holding or self.stop is not None or not self.pending:
            return out
        rest, self.pending = self.pending, b""
        return out + self.feed(rest)

    def flush(self) -> bytes:
        """At the end of the upstream stream: a last event without its blank line still counts."""
        if self.holding:
            return b""
        rest, self.pending = self.pending, b""
        if not rest.strip():
            return b""
        sep = self._sep or b"\n\n"
        return self._events(rest + sep, sep)

    def _events(self, complete: bytes, sep: bytes) -> bytes:
        """The events of ``complete`` (which ends with ``sep``) judged in order: what of them goes to the client."""
        step = len(sep)
        nl = self._nl
        monitor = self.monitor
        usual = monitor is not None and not self._terminal
        pieces = complete.split(sep)
        pieces.pop()  # the empty piece after the last separator
        start = 0
        kept: list[bytes] | None = None  # only built when an event is dropped
        for event in pieces:
            # The usual event, one data line of JSON and no terminal type to look for: judged here, without _event.
            if usual and event.startswith(b"data: {") and event.endswith(b"}") and nl not in event:
                try:
                    verdict = monitor.on_event(orjson.loads(event[6:]))  # type: ignore[union-attr]
                except orjson.JSONDecodeError:
                    self.stop = ("upstream sent a malformed stream event", "upstream_malformed_event")
                    verdict = DROP
                else:
                    if verdict != HOLD:  # a held event is offered again by resume(): counted then
                        self.events += 1
                        if type(verdict) is EndStream:
                            self.stop = (verdict.message, verdict.code)
                            verdict = DROP
            else:
                verdict = self._event(event)
            if verdict != PASS:
                if verdict == HOLD:
                    self.holding = True
                    self._held = complete[start:]
                    return complete[:start] if kept is None else b"".join(kept)
                if self.stop is not None:
                    return complete[:start] if kept is None else b"".join(kept)
                if kept is None:
                    kept = [complete[:start]]
                if type(verdict) is bytes:
                    kept.append(self._replaced(event, verdict) + sep)
            elif kept is not None:
                kept.append(event + sep)
            start += len(event) + step
        return complete if kept is None else b"".join(kept)

    def _replaced(self, event: bytes, data: bytes) -> bytes:
        """``event`` with its data replaced by ``data``; its other lines (``event:``, ``id:``) kept."""
        if event.startswith(b"data:") and self._nl not in event:
            return b"data: " + data
        kept = [line for line in event.split(self._nl) if not line.startswith(b"data:")]
        kept.append(b"data: " + data)
        return self._nl.join(kept)

    def _event(self, event: bytes) -> int | bytes:
        nl = self._nl
        if event.startswith(b"data: ") and nl not in event:
            data = event[6:]
        else:
            parts = [line[5:].removeprefix(b" ") for line in event.split(nl) if line.startswith(b"data:")]
            if not parts:
                return PASS  # a comment, a keep-alive, or a blank event
            data = b"\n".join(parts)
        if data == _DONE:
            self.done = True
            return PASS
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.stop = ("upstream sent a malformed stream event", "upstream_malformed_event")
            return DROP
        if self._terminal and type(obj) is dict and obj.get("type") in self._terminal:
            self.done = True
        monitor = self.monitor
        if monitor is None:
            self.events += 1
            return PASS
        verdict = monitor.on_event(obj)
        if verdict == HOLD:
            return HOLD  # offered again by resume(): counted then
        self.events += 1
        if isinstance(verdict, EndStream):
            self.stop = (verdict.message, verdict.code)
            return DROP
        return verdict
