"""A stream's error events are the provider's words: they reach the client without credentials, as error bodies do.
Model output is the tenant's: it is relayed as written, whatever it looks like."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tollgate.upstream.sse import EndStream, SseParser
from tollgate.upstream.usage import UsageMonitor

from .chat_chunks import Recorder, chat_chunk

SECRET = b"plain-upstream-secret-0123"  # the upstream's own key: no credential shape, redacted as its own
KEY = "sk-proj-AbCdEf0123456789xyz"  # shaped like a key


def _data(event: bytes) -> Any:
    """The JSON of an event's data line."""
    line = next(line for line in event.split(b"\n") if line.startswith(b"data: "))
    return orjson.loads(line.removeprefix(b"data: "))


@pytest.mark.parametrize(
    "doc",
    [
        {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error"}},
        {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"}},
        {"type": "error", "code": "server_error", "message": f"bad key {KEY}", "param": None},
        {"type": "response.failed", "response": {"status": "failed", "error": {"message": f"key {KEY}"}}},
    ],
    ids=["openai", "anthropic", "responses-error", "responses-failed"],
)
@pytest.mark.parametrize("monitored", [False, True], ids=["unmonitored", "monitored"])
def test_an_error_event_loses_a_key_shaped_string_and_stays_json(doc: dict[str, Any], monitored: bool) -> None:
    parser = SseParser(Recorder() if monitored else None)
    out = parser.feed(b"data: " + orjson.dumps(doc) + b"\n\n")
    assert KEY.encode() not in out and b"[redacted]" in out
    assert out.startswith(b"data: ") and out.endswith(b"\n\n")
    assert _data(out) == orjson.loads(orjson.dumps(doc).replace(KEY.encode(), b"[redacted]"))
    assert parser.events == 1 and parser.stop is None


def test_the_upstreams_own_secret_is_redacted_whatever_its_shape_and_other_lines_are_kept() -> None:
    doc = {"type": "error", "error": {"type": "api_error", "message": f"key {SECRET.decode()} refused"}}
    event = b"event: error\nid: 7\ndata: " + orjson.dumps(doc) + b"\n\n"
    out = SseParser(Recorder(), secrets=(SECRET,)).feed(event)
    assert out.startswith(b"event: error\nid: 7\ndata: ")
    assert _data(out)["error"]["message"] == "key [redacted] refused"


def test_a_redacted_error_written_over_several_data_lines_goes_out_on_one_line() -> None:
    pretty = orjson.dumps({"error": {"message": f"key {KEY}"}}, option=orjson.OPT_INDENT_2)
    event = b"".join(b"data: " + line + b"\n" for line in pretty.split(b"\n")) + b"\n"
    out = SseParser().feed(event)
    assert out.startswith(b"data: {") and out.endswith(b"}\n\n") and out.count(b"\n") == 2
    assert _data(out) == {"error": {"message": "key [redacted]"}}


def test_a_secret_that_redaction_finds_outside_a_string_never_raises_and_keeps_the_event_on_one_line() -> None:
    """An upstream secret of digits may match a number: what is left is not JSON, and still goes out as one data
    line, without the secret, rather than failing the stream."""
    secret = b"12345678901234"
    event = b'data: {"error": {"code":\ndata:  12345678901234,\ndata:  "message": "no"}}\n\n'
    out = SseParser(secrets=(secret,)).feed(event)
    assert secret not in out and b"[redacted]" in out
    assert out == b'data: {"error": {"code":  [redacted],  "message": "no"}}\n\n'


def test_an_error_event_without_credentials_goes_out_byte_for_byte() -> None:
    event = b'data: {"error": {"message": "The server is overloaded", "type": "server_error"}}\n\n'
    anthropic = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    parser = SseParser(Recorder())
    assert parser.feed(event) == event
    assert parser.feed(anthropic) == anthropic


def test_model_output_shaped_like_a_key_is_relayed_as_written_in_every_path() -> None:
    """The first content (parsed, its shape learned), a later one (judged on its bytes), one with an escape (parsed
    again), a tool call's arguments and a legacy completion's text: none is an error event, none is touched."""
    recorder = Recorder()
    parser = SseParser(recorder)
    events = [
        chat_chunk({"content": f"export KEY={KEY}"}),
        chat_chunk({"content": f" or {KEY}"}),
        chat_chunk({"content": f'"quoted" {KEY}'}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": f'{{"key": "{KEY}"}}'}}]}),
        b"data: "
        + orjson.dumps({"choices": [{"index": 0, "text": f"AIzaSyA1234567890abcdefghijklmnop {KEY}"}]})
        + b"\n\n",
    ]
    for event in events:
        assert parser.feed(event) == event
    assert recorder.contents, "a later content was judged on its bytes, the path under test"


class _Replacing(Recorder):
    """A monitor replacing every event's data with its own JSON of it (as the usage monitor strips a usage)."""

    def on_event(self, data: Any) -> int | bytes | EndStream:
        super().on_event(data)
        return orjson.dumps({**data, "replaced": True})


def test_a_monitors_replacement_of_an_error_event_is_redacted_too() -> None:
    out = SseParser(_Replacing()).feed(b"data: " + orjson.dumps({"error": {"message": f"key {KEY}"}}) + b"\n\n")
    assert _data(out) == {"error": {"message": "key [redacted]"}, "replaced": True}


class _Ctx:
    def __init__(self) -> None:
        self.body: dict[str, Any] | None = {"model": "m", "messages": []}
        self.body_bytes = b""
        self.usage: Any = None
        self.endpoint: Any = None


def test_the_usage_monitor_strips_an_error_events_usage_and_the_credential_with_it() -> None:
    """An error event carrying the usage the gateway asked for (the client did not): passed without its usage,
    and without the key."""
    ctx = _Ctx()
    doc = {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
        "error": {"message": f"key {KEY}"},
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    out = SseParser(UsageMonitor(ctx, False, None)).feed(b"data: " + orjson.dumps(doc) + b"\n\n")
    assert _data(out) == {"choices": doc["choices"], "error": {"message": "key [redacted]"}}
    assert ctx.usage is not None and (ctx.usage.prompt_tokens, ctx.usage.completion_tokens) == (3, 1)


def test_a_dropped_or_ended_error_event_stays_dropped() -> None:
    class Ending(Recorder):
        def on_event(self, data: Any) -> int | bytes | EndStream:
            return EndStream("the budget is spent", "budget_exceeded")

    parser = SseParser(Ending())
    assert parser.feed(b"data: " + orjson.dumps({"error": {"message": f"key {KEY}"}}) + b"\n\n") == b""
    assert parser.stop == ("the budget is spent", "budget_exceeded")


def test_a_chunk_with_a_null_error_member_is_model_output_and_relayed_as_written() -> None:
    """Some proxies add ``"error": null`` to every chunk: such a chunk carries no error, and its content is the
    model's, whatever it looks like."""
    event = chat_chunk({"content": f'"quoted" {KEY}'}, error=None)
    assert SseParser(Recorder()).feed(event) == event
