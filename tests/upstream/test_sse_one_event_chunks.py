"""Chunks of one event each, as a paced upstream sends them, are judged in one step once the parser knows a chat
chunk's bytes: the same bytes out, the same verdicts asked for, the same counts, holds and stops as whole buffers."""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.upstream.sse import HOLD, PASS, EndStream, SseParser

COMMON = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}


def _chunk(delta: dict[str, Any], finish: str | None = None, sep: bytes = b"\n\n") -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return b"data: " + orjson.dumps({**COMMON, "choices": [choice], "usage": None}) + sep


class _Judge:
    """Answers on_content with the verdicts given, in order, and records the lengths it was asked about."""

    chat_chunks = True

    def __init__(self, verdicts: list[Any]) -> None:
        self.verdicts = list(verdicts)
        self.contents: list[int] = []
        self.parsed = 0

    def on_event(self, data: Any) -> int | bytes | EndStream:
        self.parsed += 1
        return PASS

    def on_content(self, chars: int) -> int | EndStream:
        self.contents.append(chars)
        return self.verdicts.pop(0) if self.verdicts else PASS

    async def cover(self) -> None:
        return None

    def on_end(self, outcome: str) -> None:
        return None


def _run(events: list[bytes], verdicts: list[Any], one_by_one: bool) -> tuple[bytes, list[int], int, Any, bool]:
    judge = _Judge(verdicts)
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
