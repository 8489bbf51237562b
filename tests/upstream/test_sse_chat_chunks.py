"""Chat chunks judged on their content's length: the parser learns the bytes around a chunk's content from one it
parsed, and judges later chunks of the same bytes without parsing them, with the same verdicts and counts."""

from __future__ import annotations

from typing import Any

import orjson

from tests.upstream.chat_chunks import COMMON, Recorder
from tests.upstream.chat_chunks import chat_chunk as _chunk
from tollgate.upstream.anthropic_usage import MessagesUsageMonitor
from tollgate.upstream.responses_usage import ResponsesUsageMonitor
from tollgate.upstream.sse import HOLD, PASS, EndStream, SseParser
from tollgate.upstream.usage import StreamLimits, Usage, UsageMonitor


def _feed(parser: SseParser, *events: bytes) -> bytes:
    return b"".join(parser.feed(e) for e in events)


def test_content_chunks_after_the_first_are_judged_on_their_length_in_characters() -> None:
    monitor = Recorder()
    parser = SseParser(monitor)
    events = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hello"})]
    events += [_chunk({"content": " wörld"}), _chunk({"content": " 日本"}), _chunk({"content": ""})]
    events += [_chunk({}, "stop"), b"data: [DONE]\n\n"]
    out = _feed(parser, *events)
    assert out == b"".join(events)  # every byte relayed as it came
    assert monitor.contents == [6, 3]  # characters, not bytes; the empty content passes without a call
    assert [e["choices"][0]["delta"] for e in monitor.parsed] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello"},
        {},
    ]
    assert parser.events == 6 and parser.done and parser.stop is None


def test_content_that_needs_unescaping_is_parsed() -> None:
    monitor = Recorder()
    parser = SseParser(monitor)
    _feed(parser, _chunk({"content": "Hello"}), _chunk({"content": 'say "hi"\n'}), _chunk({"content": "ok"}))
    assert [e["choices"][0]["delta"]["content"] for e in monitor.parsed] == ["Hello", 'say "hi"\n']
    assert monitor.contents == [2]


def test_a_chunk_whose_other_members_differ_is_parsed() -> None:
    monitor = Recorder()
    parser = SseParser(monitor)
    other = _chunk({"content": "b"}, usage_extra=1)
    _feed(parser, _chunk({"content": "a"}), other, _chunk({"content": "c"}, "length"))
    assert len(monitor.parsed) == 3 and monitor.contents == []


def test_a_broken_chunk_of_the_learned_shape_still_ends_the_stream_as_malformed() -> None:
    head = b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"'
    tail = b'"},"finish_reason":null}],"usage":null}\n\n'
    for broken in (b"\xff\xfe", b'a"b'):  # not UTF-8; a bare quote
        monitor = Recorder()
        parser = SseParser(monitor)
        first = head + b"Hi" + tail
        assert parser.feed(first) == first
        assert parser.feed(head + broken + tail) == b""
        assert parser.stop == ("upstream sent a malformed stream event", "upstream_malformed_event")
        assert monitor.contents == [] and parser.events == 1


def test_content_elsewhere_in_the_chunk_is_never_taken_for_the_delta_s() -> None:
    # The first "content" member with the delta's value is another object's: learning must refuse that place,
    # or the next chunk (another value there, the same delta) would be judged on the wrong string.
    def odd(meta: str, text: str) -> bytes:
        doc = {"meta": {"content": meta}, "choices": [{"delta": {"content": text}, "finish_reason": None}]}
        return b"data: " + orjson.dumps(doc) + b"\n\n"

    monitor = Recorder()
    parser = SseParser(monitor)
    _feed(parser, odd("same", "same"), odd("zz", "same"))
    assert monitor.contents == []
    assert [e["meta"]["content"] for e in monitor.parsed] == ["same", "zz"]


def test_a_last_string_member_that_varies_from_chunk_to_chunk_is_let_vary() -> None:
    # OpenAI pads each chunk with an "obfuscation" string of its own length as the chunk's last member.
    monitor = Recorder()
    parser = SseParser(monitor)
    events = [_chunk({"content": "Hi"}, obfuscation="x7Qa"), _chunk({"content": " there"}, obfuscation="k")]
    events.append(_chunk({"content": " you"}, obfuscation="0aZ9pQ"))
    events.append(_chunk({"content": " too"}, obfuscation='with "quotes"'))  # needs unescaping: parsed
    assert _feed(parser, *events) == b"".join(events)
    assert monitor.contents == [6, 4] and len(monitor.parsed) == 2 and parser.events == 4
    broken = _chunk({"content": "x"}, obfuscation="pad").replace(b"pad", b"p\xffd")
    assert parser.feed(broken) == b""  # not UTF-8 in the varying member: parsed, and refused
    assert parser.stop == ("upstream sent a malformed stream event", "upstream_malformed_event")


def test_a_last_member_that_is_not_a_string_must_repeat() -> None:
    monitor = Recorder()
    parser = SseParser(monitor)
    _feed(parser, _chunk({"content": "a"}, seq=1), _chunk({"content": "b"}, seq=2), _chunk({"content": "c"}, seq=2))
    assert monitor.contents == [] and len(monitor.parsed) == 3
    monitor = Recorder()
    parser = SseParser(monitor)
    _feed(parser, _chunk({"content": "a"}, seq=1), _chunk({"content": "b"}, seq=1))
    assert monitor.contents == [1] and len(monitor.parsed) == 1


def test_a_held_chunk_is_judged_again_on_resume_and_relayed_once() -> None:
    monitor = Recorder([HOLD, PASS])
    parser = SseParser(monitor)
    first, second, third = _chunk({"content": "a"}), _chunk({"content": "bb"}), _chunk({"content": "ccc"})
    assert parser.feed(first + second) == first
    assert parser.holding
    assert parser.feed(third) == b""
    assert parser.resume() == second + third
    assert monitor.contents == [2, 2, 3] and parser.events == 3


def test_an_end_stream_verdict_on_a_judged_chunk_stops_before_it() -> None:
    monitor = Recorder([EndStream("the token budget is exhausted", "token_budget_exceeded")])
    parser = SseParser(monitor)
    first = _chunk({"content": "a"})
    assert parser.feed(first) == first
    assert parser.feed(_chunk({"content": "b"}) + _chunk({"content": "c"})) == b""
    assert parser.stop == ("the token budget is exhausted", "token_budget_exceeded")


def test_dialects_with_terminal_events_and_monitors_without_the_hook_parse_every_event() -> None:
    monitor = Recorder()
    parser = SseParser(monitor, frozenset({"message_stop"}))
    _feed(parser, _chunk({"content": "a"}), _chunk({"content": "b"}))
    assert len(monitor.parsed) == 2 and monitor.contents == []
    assert MessagesUsageMonitor.chat_chunks is False and ResponsesUsageMonitor.chat_chunks is False


class _Endpoint:
    kind = "chat"


class _Ctx:
    def __init__(self) -> None:
        self.body: dict[str, Any] | None = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        self.body_bytes = b""
        self.usage: Usage | None = None
        self.endpoint = _Endpoint()


class _Budget(StreamLimits):
    """A stream's limits that record what they were told, and hold every third event once."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self._chars = 0
        self._asked = 0

    def after(self, chars: int) -> int:
        return (self._chars + chars + 3) // 4

    def relayed_calm(self, chars: int) -> bool:
        return False  # never calm: every event's calls are recorded

    def short(self, completion: int) -> list[tuple[int, int]]:
        self._asked += 1
        self.calls.append(("short", completion))
        return [(0, 1)] if self._asked % 3 == 0 else []

    def spent_cut(self, completion: int) -> None:
        return None

    def relayed(self, chars: int, completion: int) -> None:
        self.calls.append(("relayed", chars, completion))
        self._chars += chars
        self.completion_tokens = completion

    async def cover(self, completion: int) -> None:
        self.calls.append(("cover", completion))


class _EveryEventParsed(UsageMonitor):
    chat_chunks = False


class _Counting(UsageMonitor):
    """The usage monitor, counting the chunks it judged without their being parsed."""

    judged: int

    def on_content(self, chars: int) -> int | EndStream:  # type: ignore[override]
        self.judged = getattr(self, "judged", 0) + 1
        return self.generated(chars)


async def _relay(events: list[bytes], learn: bool) -> tuple[bytes, _Budget, Usage | None, int]:
    budget = _Budget()
    ctx = _Ctx()
    monitor = _Counting(ctx, False, budget) if learn else _EveryEventParsed(ctx, False, budget)
    parser = SseParser(monitor)
    out = b""
    for event in events:
        out += parser.feed(event)
        while parser.holding:
            await monitor.cover()
            out += parser.resume()
    monitor.on_end("done")
    return out, budget, ctx.usage, getattr(monitor, "judged", 0)


async def test_the_usage_monitor_meters_judged_chunks_exactly_as_parsed_ones() -> None:
    events = [_chunk({"role": "assistant", "content": ""})]
    events += [_chunk({"content": word}) for word in ["Once", " upon", " a", " tíme", " ", "there", " was"] * 3]
    events.append(_chunk({}, "stop"))
    events.append(
        b"data: "
        + orjson.dumps({**COMMON, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 21}})
        + b"\n\n"
    )
    events.append(b"data: [DONE]\n\n")
    judged = await _relay(events, learn=True)
    parsed = await _relay(events, learn=False)
    covers = sum(1 for call in judged[1].calls if call[0] == "cover")
    # Every content chunk after the first judged without being parsed, a held one twice.
    assert judged[3] == 20 + covers and parsed[3] == 0
    assert judged[0] == parsed[0] == b"".join(events[:-2] + events[-1:])  # the usage chunk the client did not ask for
    assert judged[1].calls == parsed[1].calls and any(call[0] == "cover" for call in judged[1].calls)
    assert judged[2] == parsed[2] == Usage(5, 21, True)
