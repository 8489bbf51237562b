"""Chunks of one event each, as a paced upstream sends them, are judged in one step once the parser knows a chat
chunk's bytes: the same bytes out, the same verdicts asked for, the same counts, holds and stops as whole buffers."""

from __future__ import annotations

from typing import Any

from tests.upstream.chat_chunks import Recorder
from tests.upstream.chat_chunks import chat_chunk as _chunk
from tollgate.upstream.sse import HOLD, PASS, EndStream, SseParser


def _run(events: list[bytes], verdicts: list[Any], one_by_one: bool) -> tuple[bytes, list[int], int, Any, bool]:
    judge = Recorder(verdicts)
    parser = SseParser(judge)
    out = b""
    pieces = events if one_by_one else [events[0], events[1], b"".join(events[2:])]
    for piece in pieces:
        out += parser.feed(piece)
        while parser.holding:
            out += parser.resume()
        if parser.stop is not None:
            break
    return out, judge.contents, parser.events, parser.stop, parser.done


def _events(sep: bytes = b"\n\n") -> list[bytes]:
    events = [_chunk({"role": "assistant", "content": ""}, sep=sep), _chunk({"content": "Hi"}, sep=sep)]
    events += [_chunk({"content": word}, sep=sep) for word in (" there", " wörld", "", " 日本", " again")]
    return [*events, _chunk({}, "stop", sep=sep), b"data: [DONE]" + sep]


def test_one_event_chunks_pass_as_whole_buffers_do() -> None:
    for sep in (b"\n\n", b"\r\n\r\n"):
        events = _events(sep)
        alone = _run(events, [], one_by_one=True)
        assert alone == _run(events, [], one_by_one=False)
        out, contents, count, stop, done = alone
        assert out == b"".join(events) and contents == [6, 6, 3, 6] and count == 8 and stop is None and done


def test_a_held_one_event_chunk_goes_out_once_on_resume() -> None:
    events = _events()
    alone = _run(events, [HOLD, PASS, PASS, HOLD], one_by_one=True)
    assert alone == _run(events, [HOLD, PASS, PASS, HOLD], one_by_one=False)
    out, contents, count, stop, done = alone
    assert out == b"".join(events) and contents == [6, 6, 6, 3, 3, 6] and count == 8 and stop is None and done


def test_an_end_stream_verdict_on_a_one_event_chunk_stops_before_it() -> None:
    events = _events()
    cut = EndStream("the token budget is exhausted", "token_budget_exceeded")
    alone = _run(events, [PASS, cut], one_by_one=True)
    assert alone == _run(events, [PASS, cut], one_by_one=False)
    out, contents, count, stop, done = alone
    assert out == b"".join(events[:3]) and contents == [6, 6] and count == 4
    assert stop == ("the token budget is exhausted", "token_budget_exceeded") and not done
