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
* ``on_content(chars) -> PASS | HOLD | EndStream`` (optional, read when ``chat_chunks`` is true): the
  verdict ``on_event`` would give a chat-completion chunk whose one choice's ``delta`` is only a
  ``content`` of ``chars`` (> 0) characters, with no ``finish_reason`` and no ``usage``. Once the
  parser has seen such a chunk, it knows the bytes around its content (a chunk's other members
  repeat from chunk to chunk, but for a last string member that may vary, as OpenAI's ``obfuscation``
  padding does); a later event of those same bytes around a content string that needs no unescaping
  is judged by this call on the string's length, without parsing its JSON. Anything else is parsed
  as before.
* ``on_end(outcome)``: called once when the stream is over, with one of
  ``"done"`` (the terminator arrived), ``"truncated"``, ``"malformed"``,
  ``"stalled"``, ``"broken"``, ``"ended"`` (a monitor ended it) or
  ``"client_gone"``.

Several monitors can be combined with :class:`MonitorChain`.

An error event (an object with a non-null ``error`` member, or of type ``error``
or ``response.failed``) is the provider's words, as an error body is: it goes out
without the upstream's own secrets and anything shaped like a credential
(tollgate/upstream/redaction.py), its data on one line when that changed it.
Model output is never looked at for credentials.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, Protocol

import orjson

from tollgate.upstream.redaction import redact

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

# Final: a compiled build reads these as constants, here and in the modules that import them, not from a dictionary.
PASS: Final = 0
DROP: Final = 1
HOLD: Final = 2
# An event larger than this is refused as malformed rather than buffered without bound.
MAX_EVENT_BYTES: Final = 4 * 1024 * 1024
_DONE: Final = b"[DONE]"
# The body of a JSON string that reads as its bytes: no quote, no backslash, no control character.
_PLAIN_STRING: Final = re.compile(rb'[^"\\\x00-\x1f]*')
# The usual events looked at for a chat chunk to learn the bytes around its content from (see on_content).
_LEARN_WITHIN: Final = 8
# A content of at most this many bytes is checked byte by byte (see _plain_end); a longer one by _PLAIN_STRING.
_SHORT_CONTENT: Final = 24
# The ``type`` of an event that carries a provider's error: the Messages and Responses APIs' error events, and the
# Responses API's failed response (its ``response.error``).
_ERROR_TYPES: Final = frozenset({"error", "response.failed"})


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

    __slots__ = (
        "monitor",
        "pending",
        "done",
        "events",
        "stop",
        "holding",
        "_held",
        "_sep",
        "_nl",
        "_terminal",
        "_on_content",
        "_head",
        "_tail",
        "_open",
        "_learning",
        "_usual_ok",
        "_after",
        "_close",
        "_secrets",
    )

    def __init__(
        self,
        monitor: StreamMonitor | None = None,
        terminal: frozenset[str] = frozenset(),
        secrets: tuple[bytes, ...] = (),
    ) -> None:
        self.monitor = monitor
        self._terminal = terminal
        # The upstream's own secrets (its key, secret headers): an error event goes out without them (see _cleaned).
        self._secrets = secrets
        self.pending = b""
        self.done = False
        self.events = 0
        self.stop: tuple[str, str] | None = None
        self.holding = False
        self._held = b""
        self._sep = b""
        self._nl = b"\n"
        # A chat chunk's bytes before and after its content, once learned from one (see on_content); b"" until then.
        self._on_content: Callable[[int], int | EndStream] | None = (
            getattr(monitor, "on_content", None) if getattr(monitor, "chat_chunks", False) else None
        )
        self._head = b""
        self._tail = b""
        # What ends an event of the learned shape after its content: the tail and the separator; or, when the tail is
        # open, after the varying string, its closing quote, the object's end and the separator.
        self._after = b""
        self._close = b""
        self._open = False  # the tail ends with the opening quote of a last string member that may vary
        self._learning = _LEARN_WITHIN if self._on_content is not None and not terminal else 0
        # Events may be judged as usual ones (see _events): a monitor judges them, and no terminal type is looked for.
        self._usual_ok = monitor is not None and not terminal

    def feed(self, chunk: bytes) -> bytes:
        if self._head and not self.pending and not self.holding:
            # A chunk that is one chat chunk of a content alone, as a paced stream sends them: judged as _events
            # would judge it, in one step.
            chars, end = self._shaped(chunk, 0)
            if chars >= 0 and end == len(chunk):
                verdict = self._judged(chars)
                return chunk if verdict == PASS else self._one(chunk, len(self._sep), verdict)
        if self.holding:  # nothing passes a held event: keep the bytes for resume()
            self.pending += chunk
            return b""
        buf = self.pending + chunk if self.pending else chunk
        sep = self._sep
        if not sep:
            # The stream's first line end tells its separator. No event is complete before it: none is looked for.
            # (One memchr: a search for the pair would cost a few thousand instructions on a first piece.)
            first = buf.find(10)
            if first >= 0:
                sep = self._sep = b"\r\n\r\n" if first and buf[first - 1] == 13 else b"\n\n"
                if len(sep) == 4:
                    self._nl = b"\r\n"
        if sep and buf.endswith(sep):  # the usual chunk: whole events
            self.pending = b""
            return self._events(buf, sep)
        end = buf.rfind(sep) if sep else -1
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
        sep = self._sep
        if not sep:  # no line end came: the event is given LF's separator (a held one is offered again with it)
            sep = self._sep = b"\n\n"
        return self._events(rest + sep, sep)

    def _events(self, complete: bytes, sep: bytes) -> bytes:
        """The events of ``complete`` (which ends with ``sep``) judged in order: what of them goes to the client.

        Walked by index, without splitting (a two-byte separator costs about four instructions a byte to find): a
        chat chunk of the learned shape is known, and ends, from its own bytes, judged in place without a slice of
        it; another event ends at the separator's first occurrence, as ``complete.split(sep)`` would cut it."""
        step = len(sep)
        usual = self._usual_ok
        nl = self._nl
        size = len(complete)
        start = 0
        kept: list[bytes] | None = None  # only built when an event is dropped or replaced
        while start < size:
            if complete[start] < 14 and _at(complete, start, nl):
                # One more blank line between events: no event, and it passes whatever the event after it gets, as
                # it does when a chunk ends after it.
                if kept is not None:
                    kept.append(nl)
                start += len(nl)
                continue
            chars = -1
            if self._head:  # learned, maybe from an event before this one
                chars, end = self._shaped(complete, start)
            if chars >= 0:
                verdict = self._judged(chars)
                stop = end - step
            else:
                if start == 0 and 10 not in complete[: size - step]:
                    stop = size - step  # one line and its separator: the whole chunk, a paced stream's every one
                else:
                    stop = _event_end(complete, start, sep)
                    if stop < 0:  # not reached: what follows the last separator is a blank line's end, passed above
                        if kept is not None:
                            kept.append(complete[start:])
                        break
                end = stop + step
                event = complete[start:stop]
                # The usual event, one data line of JSON and no terminal type to look for: judged without _event.
                # No line feed: no CRLF either (an integer operand: ``bytes in bytes`` first tries its operand as
                # an integer, and formats and clears the TypeError that raises).
                if usual and event.startswith(b"data: {") and event.endswith(b"}") and 10 not in event:
                    verdict = self._usual(event)
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
                    kept.append(self._replaced(complete[start:stop], verdict) + sep)
            elif kept is not None:
                kept.append(complete[start:end])
            start = end
        return complete if kept is None else b"".join(kept)

    def _one(self, complete: bytes, step: int, verdict: int | bytes) -> bytes:
        """What goes to the client of ``complete``, one event (and its ``step`` bytes of separator) whose verdict,
        counted, is not PASS: as the loop of _events says."""
        if verdict == HOLD:
            self.holding = True
            self._held = complete
            return b""
        if self.stop is None and type(verdict) is bytes:
            return self._replaced(complete[:-step], verdict) + complete[-step:]
        return b""

    def _usual(self, event: bytes) -> int | bytes:
        """A ``data:`` line of one JSON object and no line feed, no terminal type to look for, a monitor to judge it:
        its verdict."""
        try:
            doc = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            self.stop = ("upstream sent a malformed stream event", "upstream_malformed_event")
            return DROP
        verdict = self.monitor.on_event(doc)  # type: ignore[union-attr]
        if self._learning:
            self._learn(event, doc)
        if type(doc) is dict and _is_error(doc) and not isinstance(verdict, EndStream):
            verdict = self._cleaned(event[6:], verdict)
        return self._counted(verdict)

    def _shaped(self, buf: bytes, start: int) -> tuple[int, int]:
        """When the event at ``start`` of ``buf`` is a chat chunk of the learned shape (see on_content) around a
        content that reads as its bytes: the content's characters, and where the event's separator ends. (-1, 0)
        otherwise: it is parsed. Such an event holds no line feed (head, tail and padding have none, nor does a plain
        string), so it ends at that separator."""
        head = self._head
        if not _at(buf, start, head):
            return -1, 0
        first = start + len(head)
        end, ascii = _plain_end(buf, first)  # the content's closing quote, where the tail begins
        if not self._open:
            after = self._after
            chars = _chars(buf, first, end, ascii) if _at(buf, end, after) else -1
            return (chars, end + len(after)) if chars >= 0 else (-1, 0)
        # A varying string after the tail (it ends with that string's opening quote), plain too.
        tail = self._tail
        if not _at(buf, end, tail):
            return -1, 0
        pad = end + len(tail)
        pad_end, pad_ascii = _plain_end(buf, pad)
        close = self._close
        if not _at(buf, pad_end, close) or _chars(buf, pad, pad_end, pad_ascii) < 0:
            return -1, 0
        chars = _chars(buf, first, end, ascii)
        return (chars, pad_end + len(close)) if chars >= 0 else (-1, 0)

    def _judged(self, chars: int) -> int | bytes:
        """The monitor's verdict on a chat chunk of ``chars`` characters of content, counted as _counted() counts it."""
        judge = self._on_content
        assert judge is not None  # a head is only learned for a monitor that judges content
        verdict = judge(chars) if chars else PASS
        if verdict == PASS:
            self.events += 1
            return PASS
        return self._counted(verdict)

    def _counted(self, verdict: int | bytes | EndStream) -> int | bytes:
        """The monitor's verdict on a ``data:`` event, the event counted (a held one when it is offered again)."""
        if verdict == HOLD:
            return HOLD
        self.events += 1
        if type(verdict) is EndStream:
            self.stop = (verdict.message, verdict.code)
            return DROP
        return verdict  # type: ignore[return-value]

    def _learn(self, event: bytes, doc: Any) -> None:
        """When ``event`` (parsed as ``doc``) is a chat chunk of a content that reads as its bytes, keep the bytes
        around that content: proved by parsing them around another content, which must change that alone."""
        self._learning -= 1
        content = _plain_content(doc)
        if content is None:
            return
        encoded = content.encode()
        if _plain_end(encoded, 0)[0] != len(encoded):  # not plain (a short one without a pattern's call)
            return
        end = _content_end(event, encoded)
        if end < 0:
            return
        head, tail = event[: end - len(encoded)], event[end:]
        marker = "a" if content != "a" else "b"
        if not _reads_as(head[6:] + marker.encode() + tail, doc, marker, "", ""):
            return
        self._head, self._tail, self._learning = head, tail, 0
        self._after = tail + self._sep
        # A last member whose string changes from chunk to chunk (OpenAI's obfuscation padding) is let vary too.
        last = tail.rfind(b'"', 0, len(tail) - 2)
        if last < 0 or not tail.endswith(b'"}') or _PLAIN_STRING.fullmatch(tail, last + 1, len(tail) - 2) is None:
            return
        name = next(reversed(doc))
        value = doc[name]
        if type(value) is not str or name in ("choices", "usage"):
            return
        padding = "a" if value != "a" else "b"
        if _reads_as(
            head[6:] + marker.encode() + tail[: last + 1] + padding.encode() + b'"}', doc, marker, name, padding
        ):
            self._tail, self._open = tail[: last + 1], True
            self._close = b'"}' + self._sep

    def _replaced(self, event: bytes, data: bytes) -> bytes:
        """``event`` with its data replaced by ``data``; its other lines (``event:``, ``id:``) kept."""
        if event.startswith(b"data:") and 10 not in event:  # no line feed: one line (an integer test: see feed)
            return b"data: " + data
        kept = [line for line in event.split(self._nl) if not line.startswith(b"data:")]
        kept.append(b"data: " + data)
        return self._nl.join(kept)

    def _event(self, event: bytes) -> int | bytes:
        nl = self._nl
        if event.startswith(b"data: ") and 10 not in event:  # one line
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
        error = False
        if type(obj) is dict:
            if self._terminal and obj.get("type") in self._terminal:
                self.done = True
            error = _is_error(obj)
        monitor = self.monitor
        verdict = PASS if monitor is None else monitor.on_event(obj)
        if verdict == HOLD:
            return HOLD  # offered again by resume(): counted then
        self.events += 1
        if isinstance(verdict, EndStream):
            self.stop = (verdict.message, verdict.code)
            return DROP
        return self._cleaned(data, verdict) if error else verdict

    def _cleaned(self, data: bytes, verdict: int | bytes) -> int | bytes:
        """The verdict on an error event whose data is ``data``: what goes out of it without credentials (a passed
        event's data replaced when redaction changes it, a replacement redacted); DROP and the others unchanged.
        A changed data goes out on one line: its line ends (whitespace between JSON's tokens, as no string holds
        one) become spaces, which never raises on what redaction may have left not quite JSON."""
        if verdict == PASS:
            out = data
        elif type(verdict) is bytes:
            out = verdict
        else:
            return verdict
        clean = redact(out, self._secrets)
        if clean == out:
            return verdict
        return clean.replace(b"\r", b" ").replace(b"\n", b" ") if 10 in clean or 13 in clean else clean


def _is_error(doc: dict[str, Any]) -> bool:
    """Whether an event's object carries a provider's error (see _ERROR_TYPES); an ``error`` member of null (as some
    proxies add to every chunk) carries none."""
    return doc.get("error") is not None or doc.get("type") in _ERROR_TYPES


# What ``\s`` matches in a bytes pattern: the whitespace allowed around a member's colon.
_SPACE = b" \t\n\r\x0b\x0c"


def _content_end(event: bytes, encoded: bytes) -> int:
    """Where the closing quote of the first ``"content": "<encoded>"`` member of ``event`` is; -1 when there is none.

    The regular expression ``"content"\\s*:\\s*"<encoded>"`` would say the same, but compiled for each stream's
    first content (about 100 us when the pattern cache does not hold it)."""
    size = len(event)
    value = b'"' + encoded + b'"'
    at = event.find(b'"content"')
    while at >= 0:
        i = at + 9
        while i < size and event[i] in _SPACE:
            i += 1
        if i < size and event[i] == 58:  # ':'
            i += 1
            while i < size and event[i] in _SPACE:
                i += 1
            if _at(event, i, value):
                return i + len(value) - 1
        at = event.find(b'"content"', at + 1)
    return -1


def _at(buf: bytes, at: int, part: bytes) -> bool:
    """Whether ``buf`` holds ``part`` at ``at``. A compiled build calls the one-argument ``startswith`` and
    ``endswith`` directly; given a start, they go through the interpreter's argument parsing (about 700
    instructions), where a short slice and its comparison cost a few hundred."""
    if at == 0:
        return buf.startswith(part)
    if at + len(part) == len(buf):
        return buf.endswith(part)
    return buf[at : at + len(part)] == part


def _plain_end(buf: bytes, start: int) -> tuple[int, bool]:
    """Where the JSON string body that begins at ``start`` of ``buf`` stops reading as its bytes (at a quote, a
    backslash, a control character, or the end of ``buf``), and whether its bytes up to there are ASCII.

    A short string (a model's token, the usual content) is looked at byte by byte: in a compiled build that is a
    few instructions a byte, where a pattern's call costs about a thousand."""
    size = len(buf)
    i = start
    limit = min(start + _SHORT_CONTENT, size)
    ascii = True
    while i < limit:
        byte = buf[i]
        if byte == 34 or byte == 92 or byte < 32:  # quote, backslash, control
            return i, ascii
        if byte > 127:
            ascii = False
        i += 1
    if i == size:
        return i, ascii
    match = _PLAIN_STRING.match(buf, i)
    assert match is not None  # the pattern matches the empty string
    return match.end(), False  # not looked at: _chars decodes it


def _chars(buf: bytes, start: int, end: int, ascii: bool) -> int:
    """The characters of ``buf[start:end]`` (``ascii``: all ASCII); -1 when it is not UTF-8. The bytes around such a
    string in an event of the learned shape are UTF-8 (their JSON parsed) and end and begin with ASCII: the event is
    UTF-8 when its strings are."""
    if ascii:
        return end - start
    try:
        return len(buf[start:end].decode())
    except UnicodeDecodeError:
        return -1


def _event_end(buf: bytes, start: int, sep: bytes) -> int:
    """Where the separator that ends the event at ``start`` of ``buf`` begins; -1 when none does. The event's first
    line feed is found by memchr; where it does not begin a separator (an event of several lines), the two-byte
    separator is searched for."""
    lf = buf.find(10, start)
    if lf < 0:
        return -1
    if len(sep) == 2:
        if lf + 1 < len(buf) and buf[lf + 1] == 10:
            return lf
    elif lf > start and buf[lf - 1] == 13 and lf + 2 < len(buf) and buf[lf + 1] == 13 and buf[lf + 2] == 10:
        return lf - 1
    return buf.find(sep, start)


def _reads_as(data: bytes, doc: Any, content: str, name: str, value: str) -> bool:
    """Whether ``data`` parses as ``doc`` (a chat chunk, see _plain_content) with its delta's content ``content``
    and, when ``name`` is given, that member's string ``value``. Known without parsing when orjson writes that
    document as ``data`` (an upstream writing compact JSON, as orjson does): what orjson writes, it reads back
    equal. Writing it costs a fraction of parsing ``data`` and comparing the documents."""
    choice = dict(doc["choices"][0])
    choice["delta"] = {"content": content}
    expected = dict(doc)
    expected["choices"] = [choice]
    if name:
        expected[name] = value
    if orjson.dumps(expected) == data:
        return True
    try:
        return bool(orjson.loads(data) == expected)
    except orjson.JSONDecodeError:
        return False


def _plain_content(doc: Any) -> str | None:
    """The ``content`` of a chat chunk whose one choice's delta is only a non-empty ``content``, with no
    ``finish_reason`` and no ``usage``; None for any other event."""
    if type(doc) is not dict or doc.get("usage") is not None:
        return None
    choices = doc.get("choices")
    if type(choices) is not list or len(choices) != 1:
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason") is not None:
        return None
    delta = choice.get("delta")
    if type(delta) is not dict or len(delta) != 1:
        return None
    content = delta.get("content")
    return content if type(content) is str and content else None
