"""The forward stage's pump (tollgate/pipeline/forward.py): what it relays in the connection's callback, and where it
hands a piece back to the relay's coroutine (a held or stopped event, a client gone, a client reading slower)."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from tollgate.edge.messages import Body, Request, StreamedAnswer
from tollgate.pipeline.forward import _Pump
from tollgate.upstream.deadlines import Deadlines
from tollgate.upstream.sse import HOLD, PASS, EndStream, SseParser


def _event(text: str) -> bytes:
    return b'data: {"choices":[{"delta":{"content":"%s"}}]}\n\n' % text.encode()


class _Monitor:
    def __init__(self, verdicts: list[object]) -> None:
        self.verdicts = verdicts

    def on_event(self, data: object) -> object:
        return self.verdicts.pop(0) if self.verdicts else PASS

    async def cover(self) -> None:
        return None

    def on_end(self, outcome: str) -> None:
        return None


class _Client:
    """The client's connection: records what the answer sends it; reads slower from the given piece on, or is gone."""

    def __init__(self, slow_at: int, gone: bool) -> None:
        self.sent: list[bytes] = []
        self.slow_at = slow_at
        self.gone = gone
        self.writing_paused = False

    def write_head(self, status: int, headers: object, framing: object, **options: object) -> None:
        return None

    def write(self, data: bytes) -> None:
        if self.gone:
            raise ConnectionResetError("the client closed the connection")
        self.sent.append(data)
        self.writing_paused = len(self.sent) - 1 >= self.slow_at >= 0


async def _answer(slow_at: int = -1, gone: bool = False) -> tuple[StreamedAnswer, _Client]:
    """A streamed answer prepared for an HTTP/1.0 client (no chunked framing: the pieces are sent as they are)."""
    client = _Client(slow_at, gone)
    headers = CIMultiDictProxy(CIMultiDict({"Host": "gateway"}))
    request = Request(
        "POST", "/v1/chat/completions", "", 0, headers, (), None, None, False, False, Body(client, True, False)
    )  # type: ignore[arg-type]
    answer = StreamedAnswer()
    await answer.prepare(request)
    return answer, client


class _Tape:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def add(self, data: bytes) -> None:
        self.parts.append(data)


def _pump(monitor: _Monitor, answer: StreamedAnswer, tape: _Tape | None = None) -> _Pump:
    timer = Deadlines().at(100.0)
    return _Pump(SseParser(monitor), answer, tape, timer, lambda: 1.0, 5.0, 100.0)  # type: ignore[arg-type]


async def test_events_are_sent_counted_recorded_and_the_idle_deadline_pushed_back() -> None:
    (answer, client), tape = await _answer(), _Tape()
    pump = _pump(_Monitor([]), answer, tape)
    pump.timer.when = 50.0
    assert pump(_event("a")) and pump(_event("b")[:10]) and pump(_event("b")[10:])
    assert client.sent == [_event("a"), _event("b")] == tape.parts
    assert pump.sent == len(_event("a") + _event("b"))
    assert pump.timer.when == 6.0  # now + idle, under the total deadline
    assert pump.out == b"" and pump.written == b""


async def test_a_held_or_stopped_event_hands_the_events_before_it_back() -> None:
    pump = _pump(_Monitor([PASS, HOLD]), (await _answer())[0])
    assert not pump(_event("a") + _event("b"))
    assert pump.out == _event("a") and pump.sent == 0 and pump.parser.holding
    pump = _pump(_Monitor([EndStream("cut", "token_budget_exceeded")]), (await _answer())[0])
    assert not pump(_event("a"))
    assert pump.out == b"" and pump.parser.stop == ("cut", "token_budget_exceeded")


async def test_a_client_gone_leaves_the_events_to_the_relay_which_finds_it_gone() -> None:
    pump = _pump(_Monitor([]), (await _answer(gone=True))[0])
    assert not pump(_event("a"))
    assert pump.out == _event("a") and pump.sent == 0


async def test_a_slow_client_leaves_the_piece_written_but_uncounted_until_the_relay_waited() -> None:
    (answer, client), tape = await _answer(slow_at=1), _Tape()
    pump = _pump(_Monitor([]), answer, tape)
    assert pump(_event("a"))
    assert not pump(_event("b"))
    assert client.sent == [_event("a"), _event("b")]
    assert pump.written == _event("b") and pump.out == b""
    assert pump.sent == len(_event("a")) and tape.parts == [_event("a")]


async def test_the_terminators_piece_is_left_for_the_answers_end_only_when_the_upstreams_body_ended_with_it() -> None:
    done = b"data: [DONE]\n\n"
    asked: list[str] = []

    def ended() -> bytes | None:
        asked.append("ended")
        return b""

    def open_() -> bytes | None:
        asked.append("open")
        return None

    answer, client = await _answer()
    pump = _pump(_Monitor([]), answer)
    pump.finished = ended
    assert pump(_event("a"))
    assert not pump(_event("b") + done), "the body ended with [DONE]: the loop writes it with the answer's end"
    assert client.sent == [_event("a")] and pump.out == _event("b") + done and pump.last and asked == ["ended"]

    answer, client = await _answer()
    pump = _pump(_Monitor([]), answer)
    pump.finished = open_
    assert pump(done), "the body goes on: [DONE] is sent now, not held for the body's end"
    assert pump(b": trailing comment\n\n")
    assert client.sent == [done, b": trailing comment\n\n"] and not pump.last and asked == ["ended", "open"]

    pump = _pump(_Monitor([]), (await _answer())[0])
    pump.finished = ended
    assert not pump(done + b"data: [DO")
    assert pump.out == done and not pump.last, "a partial event after the terminator: the loop flushes it as always"
