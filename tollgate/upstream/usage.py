"""Real token usage: read from a JSON answer or a stream's final chunk, else counted from the streamed text.

For streams the gateway asks the upstream for ``stream_options.include_usage``
when the client did not, and hides that extra chunk from such a client. The
:class:`UsageMonitor` also holds a stream to its token and money budgets: an
event whose tokens the reservation does not cover waits until an extension
does, and when a budget is gone the stream ends before that event if the
rule says ``cut``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import orjson
from mypy_extensions import mypyc_attr

from tollgate.limiter import LimitSpec
from tollgate.token_estimate import estimate_tokens
from tollgate.upstream.estimates import estimate_prompt_tokens
from tollgate.upstream.sse import DROP, HOLD, PASS, EndStream

__all__ = [
    "MeteredRequest",
    "StreamLimits",
    "Usage",
    "UsageMonitor",
    "request_stream_usage",
    "usage_from_body",
    "usage_from_io_tokens",
    "usage_from_json",
]


@dataclass(slots=True)
class Usage:
    """A request's tokens: what the upstream reported, or what the gateway estimated."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    # True when the numbers come from the upstream; False when we estimated them.
    reported: bool = False
    # Parts of ``prompt_tokens`` billed at their own prices: read from a provider's prompt cache, and written to it.
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    # The part of ``completion_tokens`` the model spent reasoning (reported, never estimated).
    reasoning_tokens: int = 0

    # Written out, not generated: a compiled build runs it as compiled code, where the dataclass's generated
    # __init__ is interpreted (about 2.4 K instructions a Usage, one a request); the dataclass keeps eq and repr.
    def __init__(
        self,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        reported: bool = False,
        cached_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.reported = reported
        self.cached_tokens = cached_tokens
        self.cache_write_tokens = cache_write_tokens
        self.reasoning_tokens = reasoning_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class _Endpoint(Protocol):
    @property
    def kind(self) -> str: ...


class MeteredRequest(Protocol):
    """What usage extraction reads and writes of a request (the pipeline's ``RequestContext`` is one)."""

    body: dict[str, Any] | None
    body_bytes: bytes
    usage: Usage | None

    @property
    def endpoint(self) -> _Endpoint | None: ...


# Tests' stand-ins are its subclasses, even when this module is compiled.
@mypyc_attr(allow_interpreted_subclasses=True)
class StreamLimits:
    """The reserved limits a stream is held to (the admit stage's ``StreamBudget``, in
    tollgate/policy/settlement.py): see :class:`UsageMonitor`.

    A base class rather than a Protocol: the compiled monitor calls a compiled subclass's methods through its
    table, about 800 instructions fewer a call than a Python method call (one to four calls an event)."""

    __slots__ = ("completion_tokens",)

    def __init__(self) -> None:
        self.completion_tokens = 0  # estimated from the text relayed so far

    def after(self, chars: int) -> int:
        raise NotImplementedError

    def relayed_calm(self, chars: int) -> bool:
        raise NotImplementedError

    def short(self, completion: int) -> list[tuple[int, int]]:
        raise NotImplementedError

    def spent_cut(self, completion: int) -> LimitSpec | None:
        raise NotImplementedError

    def relayed(self, chars: int, completion: int) -> None:
        raise NotImplementedError

    async def cover(self, completion: int) -> None:
        raise NotImplementedError


def usage_from_json(doc: Any) -> Usage | None:
    """The OpenAI-shaped ``usage`` of an answer or a stream's chunk, with the parts of it billed apart.

    ``prompt_tokens_details.cached_tokens`` (cache reads), ``prompt_tokens_details.cache_creation_tokens``
    (cache writes, as an Anthropic answer translated to OpenAI's shape carries them) and
    ``completion_tokens_details.reasoning_tokens``: a part missing, null, not a count, or past the
    whole it belongs to is ignored or capped to it; never raises.
    """
    usage = doc.get("usage") if isinstance(doc, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0)
    if (
        type(prompt) is int
        and type(completion) is int
        and prompt >= 0
        and completion >= 0
        and "prompt_tokens_details" not in usage
        and "completion_tokens_details" not in usage
    ):  # two counts and no parts: what the checks below would find, without them
        return Usage(prompt, completion, True)
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    cached = _part(usage, "prompt_tokens_details", "cached_tokens", prompt)
    cache_write = _part(usage, "prompt_tokens_details", "cache_creation_tokens", prompt - cached)
    reasoning = _part(usage, "completion_tokens_details", "reasoning_tokens", completion)
    return Usage(prompt, completion, True, cached, cache_write, reasoning)


def usage_from_io_tokens(usage: Any) -> Usage | None:
    """A ``usage`` object counted in ``input_tokens`` and ``output_tokens`` (images, transcriptions, the Responses API).

    ``input_tokens_details.cached_tokens`` and ``output_tokens_details.reasoning_tokens`` are read as
    :func:`usage_from_json` reads its parts; None when either count is missing or not a count (a whisper
    transcription's ``{"type": "duration"}`` usage has neither); never raises.
    """
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("input_tokens"))
    completion = _count(usage.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    cached = _part(usage, "input_tokens_details", "cached_tokens", prompt)
    reasoning = _part(usage, "output_tokens_details", "reasoning_tokens", completion)
    return Usage(prompt, completion, True, cached, 0, reasoning)


def _count(value: Any) -> int | None:
    """``value`` when it is a count of tokens (an int, not a bool, not negative); else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _part(usage: dict[str, Any], details: str, name: str, most: int) -> int:
    """``usage[details][name]`` when it is a count, capped to ``most`` (the whole it is a part of); else 0."""
    found = usage.get(details)
    value = _count(found.get(name)) if isinstance(found, dict) else None
    return 0 if value is None else min(value, most)


def usage_from_body(body: bytes) -> Usage | None:
    """The ``usage`` of a non-streamed JSON answer; None when it has none or is not JSON.

    OpenAI-shaped answers end with it: when the answer's last member is ``"usage"``, that member alone
    is parsed (the choices before it, often most of the body, are not); otherwise the whole body is.
    """
    usage = _last_member(body, b'"usage"')
    if usage is not None:
        return usage_from_json(usage)
    try:
        return usage_from_json(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


_WHITESPACE = frozenset(b" \t\r\n")
_OPENS_MEMBER = frozenset(b",{")


def _last_member(body: bytes, key: bytes) -> dict[str, Any] | None:
    """``{key: value}`` when the JSON object ``body`` ends with the member ``key: value``; None when it does not seem to.

    The key's opening quote follows a ``{`` or a ``,``, so it opens a string (a quote inside a string is escaped);
    ``{`` and what follows the key parse as one object, so the document's last ``}`` closes the object the key is
    a member of, the outermost one. The bytes before the key are not read: a body broken there passes for JSON.
    """
    at = body.rfind(key)
    if at <= 0:
        return None
    before = at - 1
    while before > 0 and body[before] in _WHITESPACE:
        before -= 1
    if body[before] not in _OPENS_MEMBER:
        return None
    try:
        member = orjson.loads(b"{" + body[at:])
    except orjson.JSONDecodeError:
        return None
    return member if type(member) is dict else None


def request_stream_usage(ctx: MeteredRequest) -> bool:
    """Make sure the upstream reports usage at the end of the stream; returns whether the client asked for it."""
    body = ctx.body
    assert body is not None
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return True
    body["stream_options"] = (
        {**options, "include_usage": True} if isinstance(options, dict) else {"include_usage": True}
    )
    ctx.body_bytes = orjson.dumps(body)
    return False


# The Responses and Messages monitors (interpreted) are its subclasses, even when this module is compiled.
@mypyc_attr(allow_interpreted_subclasses=True)
class UsageMonitor:
    """The stream monitor of one request: captures usage, hides the usage chunk the client did not ask for,
    and holds the stream to its budgets (no event goes out before the limits it counts against cover it)."""

    __slots__ = ("ctx", "client_wants_usage", "budget", "_chars", "_wanted")

    # on_event judges a chat chunk whose one choice's delta is only content by that content's length (on_content).
    chat_chunks: ClassVar[bool] = True
    # What on_event says of a chat chunk whose only news is ``chars`` (> 0) characters of content (see SseParser):
    # generated itself, set below the class (mypyc cannot compile a method's alias in the class body).
    on_content: ClassVar[Callable[[UsageMonitor, int], int | EndStream]]

    def __init__(self, ctx: MeteredRequest, client_wants_usage: bool, budget: StreamLimits | None) -> None:
        # None once the stream has ended (on_end): the request holds this monitor, and the monitor letting go of
        # the request lets the two be freed as the request ends, not by the cyclic collector (with all the
        # request's admission, budget and settlement objects behind them).
        self.ctx: MeteredRequest | None = ctx
        self.client_wants_usage = client_wants_usage
        self.budget = budget
        self._chars = 0
        self._wanted = 0  # the completion tokens the held event needs covered

    def on_event(self, data: Any) -> int | bytes | EndStream:
        if not isinstance(data, dict):
            return PASS
        usage = data.get("usage")
        choices = data.get("choices")
        if usage is not None:
            found = usage_from_json(data)
            ctx = self.ctx
            if found is not None and ctx is not None:
                ctx.usage = found
            if not self.client_wants_usage:
                # The usage chunk the gateway asked for: dropped when it carries nothing else (``choices: []``,
                # or choices with empty deltas as some proxies send), else passed on without its usage.
                if not _carries_output(choices):
                    return DROP
                return orjson.dumps({k: v for k, v in data.items() if k != "usage"})
        if not choices or not isinstance(choices, list):
            return PASS
        text = _text_chars(choices)
        if not text:
            return PASS
        return self.generated(text)

    def generated(self, text: int) -> int | EndStream:
        """The verdict on an event carrying ``text`` characters of output: pass, hold for budget, or end the stream."""
        budget = self.budget
        if budget is None:
            self._chars += text
            return PASS
        if budget.relayed_calm(text):  # the usual event: nothing short, spent or due, counted in one call
            return PASS
        completion = budget.after(text)
        if budget.short(completion):
            self._wanted = completion
            return HOLD
        spent = budget.spent_cut(completion)
        if spent is not None:
            if spent.unit == "nanos":
                return EndStream(f"the stream was ended: the money budget {spent.name} is spent", "budget_exceeded")
            return EndStream(
                f"the stream was ended: the token budget {spent.name} is exhausted", "token_budget_exceeded"
            )
        budget.relayed(text, completion)
        return PASS

    async def cover(self) -> None:
        if self.budget is not None:
            await self.budget.cover(self._wanted)

    def on_end(self, outcome: str) -> None:
        ctx = self.ctx
        if ctx is None:  # ended already
            return
        self.ctx = None
        if ctx.usage is None or not ctx.usage.reported:
            # No usage chunk (cut, broken, or an upstream that ignores include_usage): count what was streamed.
            assert ctx.endpoint is not None and ctx.body is not None
            ctx.usage = Usage(estimate_prompt_tokens(ctx.endpoint.kind, ctx.body), self.streamed_tokens())

    def streamed_tokens(self) -> int:
        """The completion tokens of what was relayed, as the budget counted them or estimated from its characters."""
        return self.budget.completion_tokens if self.budget is not None else estimate_tokens(self._chars)


UsageMonitor.on_content = UsageMonitor.generated


def _text_chars(choices: list[Any]) -> int:
    """Characters of generated output in an event: content, completion text, reasoning and tool-call arguments."""
    chars = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for name in ("content", "reasoning_content", "refusal"):
                piece = delta.get(name)
                if isinstance(piece, str):
                    chars += len(piece)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for call in calls:
                    function = call.get("function") if isinstance(call, dict) else None
                    arguments = function.get("arguments") if isinstance(function, dict) else None
                    if isinstance(arguments, str):
                        chars += len(arguments)
        else:
            piece = choice.get("text")
            if isinstance(piece, str):
                chars += len(piece)
    return chars


def _carries_output(choices: Any) -> bool:
    """Does an event's ``choices`` carry anything for the client (a delta with content, a finish reason, text)?"""
    if not isinstance(choices, list):
        return False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") is not None or choice.get("text"):
            return True
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(v not in (None, "", [], {}) for k, v in delta.items() if k != "role"):
            return True
    return False
