"""The guard takes a body that has all arrived at once, without a coroutine; one still arriving is awaited."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from tollgate.config.model import Guard
from tollgate.edge.messages import Body, Request
from tollgate.errors import BadRequest, PayloadTooLarge
from tollgate.pipeline.context import ENDPOINTS, RequestContext
from tollgate.pipeline.guard import guard

BODY = b'{"model": "gpt-4o-mini", "stream": true, "messages": []}'


class _Connection:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.writing_paused = False

    def body_wanted(self, body: Body) -> None:
        return None


def _context(parts: list[bytes], done: bool, length: int | None) -> RequestContext:
    body = Body(_Connection(), False, False)  # type: ignore[arg-type]
    for part in parts:
        body.feed(part)
    if done:
        body.end()
    headers = CIMultiDictProxy(CIMultiDict({"Host": "gw", "Content-Type": "application/json"}))
    request = Request("POST", "/v1/chat/completions", "", 1, headers, (), None, length, length is None, True, body)  # type: ignore[arg-type]
    return RequestContext(request, "req_1", ENDPOINTS["/v1/chat/completions"], 0.0, "127.0.0.1")


def _filled(ctx: RequestContext) -> tuple[Any, ...]:
    return ctx.body_bytes, ctx.body, ctx.model, ctx.stream


async def test_a_body_that_has_all_arrived_is_taken_without_waiting() -> None:
    ctx = _context([BODY[:10], BODY[10:]], True, len(BODY))
    assert guard(ctx, Guard()) is None
    assert _filled(ctx) == (BODY, {"model": "gpt-4o-mini", "stream": True, "messages": []}, "gpt-4o-mini", True)


async def test_a_body_still_arriving_or_chunked_is_awaited_with_the_same_outcome() -> None:
    for length in (len(BODY), None):
        ctx = _context([BODY[:10]], False, length)
        reading = guard(ctx, Guard())
        assert reading is not None
        task = asyncio.ensure_future(reading)
        await asyncio.sleep(0)
        assert not task.done()
        ctx.request.content.feed(BODY[10:])
        ctx.request.content.end()
        await task
        assert _filled(ctx) == _filled(_sync(BODY))


def _sync(body: bytes) -> RequestContext:
    ctx = _context([body], True, len(body))
    assert guard(ctx, Guard()) is None
    return ctx


async def test_refusals_come_from_either_path() -> None:
    with pytest.raises(BadRequest, match="model"):
        _sync(b'{"messages": []}')
    ctx = _context([BODY], True, len(BODY))
    reading = guard(ctx, Guard(max_body_bytes=10))  # too large: refused by the reading path, unread
    assert reading is not None
    with pytest.raises(PayloadTooLarge):
        await reading
