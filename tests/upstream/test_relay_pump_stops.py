"""The forward stage's pump (tollgate/pipeline/forward.py): what it relays in the connection's callback, and where it
hands a piece back to the relay's coroutine (a held or stopped event, a client gone, a client reading slower)."""

from __future__ import annotations

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


class _Answer:
    """A streamed answer that records what it was sent: slow from the given piece on, or gone."""

    def __init__(self, slow_at: int = -1, gone: bool = False) -> None:
        self.sent: list[bytes] = []
        self.slow_at = slow_at
        self.gone = gone

    def send(self, data: bytes) -> bool:
        if self.gone:
            raise ConnectionResetError("the client closed the connection")
        self.sent.append(data)
        return len(self.sent) - 1 == self.slow_at


class _Tape:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def add(self, data: bytes) -> None:
        self.parts.append(data)


def _pump(monitor: _Monitor, answer: _Answer, tape: _Tape | None = None) -> _Pump:
    timer = Deadlines().at(100.0)
    return _Pump(SseParser(monitor), answer, tape, timer, lambda: 1.0, 5.0, 100.0)  # type: ignore[arg-type]


def test_events_are_sent_counted_recorded_and_the_idle_deadline_pushed_back() -> None:
    answer, tape = _Answer(), _Tape()
    pump = _pump(_Monitor([]), answer, tape)
    pump.timer.when = 50.0
    assert pump(_event("a")) and pump(_event("b")[:10]) and pump(_event("b")[10:])
    assert answer.sent == [_event("a"), _event("b")] == tape.parts
    assert pump.sent == len(_event("a") + _event("b"))
    assert pump.timer.when == 6.0  # now + idle, under the total deadline
    assert pump.out == b"" and pump.written == b""


def test_a_held_or_stopped_event_hands_the_events_before_it_back() -> None:
    pump = _pump(_Monitor([PASS, HOLD]), _Answer())
    assert not pump(_event("a") + _event("b"))
    assert pump.out == _event("a") and pump.sent == 0 and pump.parser.holding
    pump = _pump(_Monitor([EndStream("cut", "token_budget_exceeded")]), _Answer())
    assert not pump(_event("a"))
    assert pump.out == b"" and pump.parser.stop == ("cut", "token_budget_exceeded")


def test_a_client_gone_leaves_the_events_to_the_relay_which_finds_it_gone() -> None:
    pump = _pump(_Monitor([]), _Answer(gone=True))
    assert not pump(_event("a"))
    assert pump.out == _event("a") and pump.sent == 0


def test_a_slow_client_leaves_the_piece_written_but_uncounted_until_the_relay_waited() -> None:
    answer, tape = _Answer(slow_at=1), _Tape()
    pump = _pump(_Monitor([]), answer, tape)
    assert pump(_event("a"))
    assert not pump(_event("b"))
    assert answer.sent == [_event("a"), _event("b")]
    assert pump.written == _event("b") and pump.out == b""
    assert pump.sent == len(_event("a")) and tape.parts == [_event("a")]


def test_the_terminators_piece_is_left_for_the_answers_end_only_when_the_upstreams_body_ended_with_it() -> None:
    done = b"data: [DONE]\n\n"
    asked: list[str] = []

    def ended() -> bytes | None:
        asked.append("ended")
        return b""

    def open_() -> bytes | None:
        asked.append("open")
        return None

    answer = _Answer()
    pump = _pump(_Monitor([]), answer)
    pump.finished = ended
    assert pump(_event("a"))
    assert not pump(_event("b") + done), "the body ended with [DONE]: the loop writes it with the answer's end"
    assert answer.sent == [_event("a")] and pump.out == _event("b") + done and pump.last and asked == ["ended"]

    answer = _Answer()
    pump = _pump(_Monitor([]), answer)
    pump.finished = open_
    assert pump(done), "the body goes on: [DONE] is sent now, not held for the body's end"
    assert pump(b": trailing comment\n\n")
    assert answer.sent == [done, b": trailing comment\n\n"] and not pump.last and asked == ["ended", "open"]

    pump = _pump(_Monitor([]), _Answer())
    pump.finished = ended
    assert not pump(done + b"data: [DO")
    assert pump.out == done and not pump.last, "a partial event after the terminator: the loop flushes it as always"
