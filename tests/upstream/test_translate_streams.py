"""Streams translated event by event: each event fed alone yields its complete frames at once, as the table says."""

from __future__ import annotations

from typing import Any

import anthropic
import anthropic.types
import openai
import openai.types.chat
import pydantic
import pytest

try:
    import httpx
except ImportError:  # where the SDKs are built on the httpx2 distribution of it
    import httpx2 as httpx  # type: ignore[no-redef]

from tests.upstream.translate_fixtures import case_ids, frames, load
from tollgate.upstream.translate import AnthropicToOpenAIStream, OpenAIToAnthropicStream

TABLE = load("streams.json")
TO_OPENAI = TABLE["anthropic_to_openai"]
TO_ANTHROPIC = TABLE["openai_to_anthropic"]
CREATED = 1700000000
ANTHROPIC_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


def _expected_openai_frame(short: list[Any], message_id: str, model: str) -> tuple[str | None, Any]:
    """A whole OpenAI frame from its short form in the table: chunk, usage, done or error."""
    head = {"id": message_id, "object": "chat.completion.chunk", "created": CREATED, "model": model}
    kind = short[0]
    if kind == "chunk":
        return None, {**head, "choices": [{"index": 0, "delta": short[1], "finish_reason": short[2]}]}
    if kind == "usage":
        return None, {**head, "choices": [], "usage": short[1]}
    if kind == "done":
        return None, "[DONE]"
    return None, short[1]


@pytest.mark.parametrize("case", TO_OPENAI, ids=case_ids(TO_OPENAI))
def test_anthropic_events_become_openai_chunks_one_event_at_a_time(case: dict[str, Any]) -> None:
    stream = AnthropicToOpenAIStream(created=CREATED, include_usage=case["include_usage"])
    start = case["steps"][0][0]["message"]
    for event, expected in case["steps"]:
        out = frames(stream.feed(event))
        assert out == [_expected_openai_frame(short, start["id"], start["model"]) for short in expected], event
        for _, payload in out:
            if isinstance(payload, dict) and "choices" in payload:
                openai.types.chat.ChatCompletionChunk.model_validate(payload)
    assert stream.finished


@pytest.mark.parametrize("case", TO_ANTHROPIC, ids=case_ids(TO_ANTHROPIC))
def test_openai_chunks_become_anthropic_events_one_chunk_at_a_time(case: dict[str, Any]) -> None:
    stream = OpenAIToAnthropicStream()
    for chunk, expected in case["steps"]:
        data = stream.done() if chunk == "[DONE]" else stream.feed(chunk)
        out = frames(data)
        assert out == [(name, payload) for name, payload in expected], chunk
        for name, payload in out:
            assert payload["type"] == name  # the event: line names the type the data carries
            if name != "error":
                ANTHROPIC_EVENT.validate_python(payload)
    assert stream.finished


def test_a_text_delta_in_is_a_frame_out_at_once() -> None:
    stream = AnthropicToOpenAIStream(created=CREATED, include_usage=False)
    stream.feed(TO_OPENAI[0]["steps"][0][0])
    out = stream.feed({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})
    assert out == (
        b'data: {"id":"msg_1","object":"chat.completion.chunk","created":1700000000,"model":"claude-x",'
        b'"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
    )

    reverse = OpenAIToAnthropicStream()
    reverse.feed(
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
    )
    reverse.feed({"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]})
    out = reverse.feed(
        {"id": "c", "model": "m", "choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": None}]}
    )
    assert out == (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"b"}}\n\n'
    )


def _serving(body: bytes) -> httpx.Client:
    """An HTTP client whose every request is answered 200 with ``body`` as an event stream."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    return httpx.Client(transport=httpx.MockTransport(answer))


def test_the_anthropic_sdk_rebuilds_the_message_from_the_translated_stream() -> None:
    stream = OpenAIToAnthropicStream()
    body = b"".join(stream.done() if chunk == "[DONE]" else stream.feed(chunk) for chunk, _ in TO_ANTHROPIC[0]["steps"])
    client = anthropic.Anthropic(api_key="k", base_url="http://upstream.test", http_client=_serving(body))
    with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}]) as events:
        message = events.get_final_message()
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].type == "text" and message.content[0].text == "Hello"
    assert message.content[1].type == "tool_use" and message.content[1].input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 12
    assert message.usage.input_tokens == 20 and message.usage.cache_read_input_tokens == 10


def test_the_openai_sdk_reads_the_translated_stream_to_its_usage_chunk() -> None:
    stream = AnthropicToOpenAIStream(created=CREATED, include_usage=True)
    body = b"".join(stream.feed(event) for event, _ in TO_OPENAI[0]["steps"])
    client = openai.OpenAI(api_key="k", base_url="http://upstream.test/v1", http_client=_serving(body))
    chunks = list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    arguments = "".join(
        call.function.arguments or ""
        for chunk in chunks
        if chunk.choices
        for call in chunk.choices[0].delta.tool_calls or ()
        if call.function is not None
    )
    assert text == "Hello!"
    assert arguments == '{"city": "Paris"}'
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 125


def test_nothing_is_sent_after_the_stream_finished() -> None:
    stream = OpenAIToAnthropicStream()
    stream.feed({"error": {"message": "x", "type": "server_error"}})
    assert stream.feed({"id": "c", "choices": [{"index": 0, "delta": {"content": "late"}}]}) == b""
    assert stream.done() == b""


def test_the_model_name_the_client_asked_for_replaces_the_upstreams() -> None:
    stream = AnthropicToOpenAIStream(created=CREATED, include_usage=False, model="my-alias")
    [(_, first)] = frames(stream.feed(TO_OPENAI[0]["steps"][0][0]))
    assert first["model"] == "my-alias"
    reverse = OpenAIToAnthropicStream(model="my-alias")
    [(_, start)] = frames(reverse.feed(TO_ANTHROPIC[0]["steps"][0][0]))
    assert start["message"]["model"] == "my-alias"
