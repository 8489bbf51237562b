"""A stream's monitor lets go of its request when the stream ends: the request and its monitor, which it holds, are
freed as the request ends, without waiting for the cyclic collector."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tollgate.upstream.anthropic_usage import MessagesUsageMonitor
from tollgate.upstream.responses_usage import ResponsesUsageMonitor
from tollgate.upstream.usage import Usage, UsageMonitor


class _Endpoint:
    kind = "chat"


class _Request:
    """What a monitor reads of its request, holding the monitor as the pipeline's request does."""

    def __init__(self) -> None:
        self.body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
        self.body_bytes = b""
        self.usage: Usage | None = Usage(3, 2, True)
        self.endpoint = _Endpoint()
        self.principal = None
        self.upstream_name = "openai"
        self.stream_monitor: Any = None


@pytest.fixture
def no_collector() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


MONITORS: dict[str, Callable[[_Request], UsageMonitor]] = {
    "chat": lambda ctx: UsageMonitor(ctx, False, None),  # type: ignore[arg-type]
    "responses": lambda ctx: ResponsesUsageMonitor(ctx, None),  # type: ignore[arg-type]
    "messages": lambda ctx: MessagesUsageMonitor(ctx, None),
}


@pytest.mark.parametrize("kind", list(MONITORS))
@pytest.mark.usefixtures("no_collector")
def test_an_ended_stream_leaves_no_cycle_between_the_request_and_its_monitor(kind: str) -> None:
    ctx = _Request()
    ctx.stream_monitor = MONITORS[kind](ctx)
    ctx.stream_monitor.on_end("done")
    request = weakref.ref(ctx)
    del ctx
    assert request() is None, "the request was kept alive by its monitor after the stream ended"
