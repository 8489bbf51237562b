"""The incremental SSE parser: events across chunk boundaries, [DONE], malformed data, and the monitor hook."""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.upstream.sse import DROP, HOLD, PASS, EndStream, MonitorChain, SseParser


def _event(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


STREAM = _event({"i": 0}) + _event({"i": 1}) + _event({"i": 2, "usage": {"total_tokens": 7}}) + b"data: [DONE]\n\n"


def test_every_split_of_the_stream_yields_the_same_bytes_and_events() -> None:
    for cut in range(1, len(STREAM)):
        p = SseParser()
        out = p.feed(STREAM[:cut]) + p.feed(STREAM[cut:])
        assert out == STREAM, cut
        assert p.events == 3 and p.done and p.stop is None


def test_only_complete_events_are_released() -> None:
    p = SseParser()
    assert p.feed(b'data: {"a"') == b""
    assert p.feed(b": 1}\n") == b""
    assert p.feed(b"\ndata: {") == b'data: {"a": 1}\n\n'
    assert p.pending == b"data: {"


def test_chunk_of_whole_events_is_written_as_the_same_object() -> None:
    chunk = _event({"i": 0})
    assert SseParser().feed(chunk) is chunk


def test_malformed_data_stops_after_the_good_events_before_it() -> None:
    p = SseParser()
    good = _event({"i": 0})
    out = p.feed(good + b'data: {"broken\n\n' + _event({"i": 1}))
    assert out == good
    assert p.stop is not None and p.stop[1] == "upstream_malformed_event"


def test_multiline_data_comments_and_crlf_are_understood() -> None:
    p = SseParser()
    out = p.feed(b': keep-alive\r\n\r\nevent: x\r\ndata: {"a":\r\ndata: 1}\r\n\r\ndata: [DONE]\r\n\r\n')
    assert p.events == 1 and p.done and p.stop is None
    assert out.endswith(b"[DONE]\r\n\r\n")


def test_a_last_event_without_its_blank_line_is_flushed_at_the_end() -> None:
    p = SseParser()
    assert p.feed(_event({"i": 0}) + b"data: [DONE]") == _event({"i": 0})
    assert p.flush() == b"data: [DONE]\n\n" and p.done


class Recorder:
    def __init__(self, drop_usage: bool = False, end_after: int | None = None) -> None:
        self.seen: list[Any] = []
        self.usage: Any = None
        self.ended: str | None = None
        self.drop_usage = drop_usage
        self.end_after = end_after

    def on_event(self, data: Any) -> int | EndStream:
        self.seen.append(data)
        if data.get("usage"):
            self.usage = data["usage"]
            if self.drop_usage:
                return DROP
        if self.end_after is not None and len(self.seen) > self.end_after:
            return EndStream("token budget exhausted", "token_budget_exceeded")
        return PASS

    def on_end(self, outcome: str) -> None:
        self.ended = outcome


def test_monitor_reads_usage_and_can_drop_that_event() -> None:
    m = Recorder(drop_usage=True)
    p = SseParser(m)
    out = p.feed(STREAM)
    assert m.usage == {"total_tokens": 7}
    assert out == _event({"i": 0}) + _event({"i": 1}) + b"data: [DONE]\n\n"


def test_monitor_can_end_the_stream_and_nothing_after_is_released() -> None:
    m = Recorder(end_after=1)
    p = SseParser(m)
    out = p.feed(STREAM)
    assert out == _event({"i": 0})  # the event that triggered the end is not sent either
    assert p.stop == ("token budget exhausted", "token_budget_exceeded")


def test_monitor_chain_lets_the_first_non_pass_verdict_decide() -> None:
    a, b = Recorder(drop_usage=True), Recorder()
    p = SseParser(MonitorChain(a, b))
    p.feed(STREAM)
    assert len(a.seen) == 3 and len(b.seen) == 2  # b never saw the dropped usage event


class Gate:
    """Holds every event past ``allowed`` until ``cover()`` lets one more through."""

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self.passed: list[Any] = []

    def on_event(self, data: Any) -> int:
        if len(self.passed) >= self.allowed:
            return HOLD
        self.passed.append(data)
        return PASS

    async def cover(self) -> None:
        self.allowed += 1

    def on_end(self, outcome: str) -> None:
        pass


async def test_a_held_event_and_everything_after_it_wait_until_resume_in_order() -> None:
    gate = Gate(allowed=1)
    p = SseParser(gate)
    for cut in (5, len(STREAM) // 2):
        gate.allowed, gate.passed, p = 1, [], SseParser(gate)
        out = p.feed(STREAM[:cut])
        out += p.feed(STREAM[cut:])  # arrives while an event is held: kept, not parsed past the held one
        assert p.holding and out == _event({"i": 0}) and p.events == 1
        while p.holding:
            await gate.cover()
            out += p.resume()
        assert out == STREAM and p.done and p.events == 3
        assert [e["i"] for e in gate.passed] == [0, 1, 2]


async def test_a_hold_at_the_end_of_the_stream_survives_the_flush() -> None:
    gate = Gate(allowed=0)
    p = SseParser(gate)
    assert p.feed(b'data: {"i": 0}') == b""
    assert p.flush() == b"" and p.holding  # the last event, flushed without its blank line, is held
    await gate.cover()
    assert p.resume() == b'data: {"i": 0}\n\n' and not p.holding


def test_a_monitor_can_replace_an_event_s_data() -> None:
    class Strip:
        def on_event(self, data: Any) -> int | bytes:
            return orjson.dumps({k: v for k, v in data.items() if k != "usage"}) if "usage" in data else PASS

    out = SseParser(Strip()).feed(STREAM)  # type: ignore[arg-type]
    assert out == _event({"i": 0}) + _event({"i": 1}) + _event({"i": 2}) + b"data: [DONE]\n\n"
