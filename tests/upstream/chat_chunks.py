"""Chat completion chunks as an OpenAI upstream streams them, and a monitor that records what the SSE parser asks
of it: shared by the tests of the parser's chat-chunk paths."""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.upstream.sse import PASS, EndStream

COMMON = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}


def chat_chunk(delta: dict[str, Any], finish: str | None = None, sep: bytes = b"\n\n", **extra: Any) -> bytes:
    """One chunk's event: ``delta`` in its only choice, ``extra`` top-level members after ``usage``."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return b"data: " + orjson.dumps({**COMMON, "choices": [choice], "usage": None, **extra}) + sep


class Recorder:
    """A monitor that records what it was asked: parsed events, and content lengths judged without parsing; it
    answers those with ``verdicts`` in order (a copy: the caller's list is left as it is), then PASS."""

    chat_chunks = True

    def __init__(self, verdicts: list[Any] | None = None) -> None:
        self.parsed: list[Any] = []
        self.contents: list[int] = []
        self.verdicts = list(verdicts or [])

    def on_event(self, data: Any) -> int | bytes | EndStream:
        self.parsed.append(data)
        return PASS

    def on_content(self, chars: int) -> int | EndStream:
        self.contents.append(chars)
        return self.verdicts.pop(0) if self.verdicts else PASS

    async def cover(self) -> None:
        return None

    def on_end(self, outcome: str) -> None:
        return None
