"""The mock upstream's Anthropic Messages API: the official SDK against a started mock, and the SSE framing byte by byte."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tollgate.mock.upstream import MockSettings, make_mock_app

Client = TestClient[web.Request, web.Application]
MODEL = "claude-sonnet-4-5"
HELLO: list[Any] = [{"role": "user", "content": "Hello there, mock!"}]
SIXTEEN_WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly pack boxes of"
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
        },
        "required": ["city", "unit"],
    },
}
CLOCK_TOOL: dict[str, Any] = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


def sdk(base_url: str, **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=base_url, api_key="sk-ant-test", **{"max_retries": 0, **options})


@pytest.fixture
async def mock(aiohttp_client: Callable[..., Awaitable[Client]]) -> Callable[..., Awaitable[Client]]:
    async def start(**settings: Any) -> Client:
        return await aiohttp_client(make_mock_app(MockSettings(**settings)))

    return start


def sse(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, parsed data) of each event; asserts every event is exactly an ``event:`` and a ``data:`` line."""
    assert body.endswith(b"\n\n")
    events = []
    for frame in body.decode().split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: ")
        events.append((event_line.removeprefix("event: "), orjson.loads(data_line.removeprefix("data: "))))
    return events


# ---------------------------------------------------------------- the official SDK


async def test_sdk_message_is_anthropic_shaped_and_counts_input_like_the_openai_route(mock_server: Any) -> None:
    base = await mock_server()
    async with sdk(base) as client:
        message = await client.messages.create(model=MODEL, max_tokens=1024, system="Be brief.", messages=HELLO)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == SIXTEEN_WORDS
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == 16
    assert message.usage.cache_creation_input_tokens == 0 and message.usage.cache_read_input_tokens == 0
    async with aiohttp.ClientSession() as session:
        openai_messages = [{"role": "system", "content": "Be brief."}, *HELLO]
        chat = await session.post(f"{base}/v1/chat/completions", json={"model": "gpt-4o", "messages": openai_messages})
        assert message.usage.input_tokens == (await chat.json())["usage"]["prompt_tokens"]


async def test_max_tokens_cuts_the_reply_with_stop_reason_max_tokens(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        message = await client.messages.create(model=MODEL, max_tokens=4, messages=HELLO)
    assert message.content[0].type == "text" and message.content[0].text == "the quick brown fox"
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 4


async def test_stop_sequence_ends_the_reply_before_it_and_counts_the_tokens_up_to_it(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        message = await client.messages.create(
            model=MODEL, max_tokens=100, messages=HELLO, stop_sequences=["never there", "fox jum", "lazy"]
        )
    assert message.content[0].type == "text" and message.content[0].text == "the quick brown "
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "fox jum"
    assert message.usage.output_tokens == 5  # "the quick brown fox jumps": the stop sequence ends in the fifth


async def test_sdk_stream_helper_assembles_the_text_and_the_final_usage(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        async with client.messages.stream(model=MODEL, max_tokens=1024, messages=HELLO) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        counted = await client.messages.count_tokens(model=MODEL, messages=HELLO)
    assert len(pieces) == 16 and "".join(pieces) == SIXTEEN_WORDS
    assert final.content[0].type == "text" and final.content[0].text == SIXTEEN_WORDS
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 16 and final.usage.input_tokens == counted.input_tokens > 0


async def test_tool_use_round_trip_with_the_sdk(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        asked: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
        call = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=asked, tools=[CLOCK_TOOL, WEATHER_TOOL], tool_choice={"type": "any"}
        )
        assert call.stop_reason == "tool_use"
        (use,) = call.content
        assert use.type == "tool_use" and use.id.startswith("toolu_") and use.name == "get_time" and use.input == {}
        named = await client.messages.create(
            model=MODEL,
            max_tokens=1024,
            messages=asked,
            tools=[CLOCK_TOOL, WEATHER_TOOL],
            tool_choice={"type": "tool", "name": "get_weather"},
        )
        (use,) = named.content
        assert use.type == "tool_use" and use.name == "get_weather"
        assert use.input == {"city": "mock", "unit": "celsius"}  # the required properties: a string, the first enum
        answered = [
            *asked,
            {"role": "assistant", "content": [block.model_dump() for block in named.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees"}]},
        ]
        reply = await client.messages.create(
            model=MODEL, max_tokens=1024, messages=answered, tools=[WEATHER_TOOL], tool_choice={"type": "auto"}
        )
    assert reply.stop_reason == "end_turn" and reply.content[0].type == "text"
    assert reply.usage.input_tokens > named.usage.input_tokens  # the tool call and its result are counted


async def test_sdk_stream_assembles_a_tool_call_from_input_json_deltas(mock_server: Any) -> None:
    client = sdk(await mock_server())
    async with (
        client,
        client.messages.stream(
            model=MODEL,
            max_tokens=1024,
            messages=HELLO,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "tool", "name": "get_weather"},
        ) as stream,
    ):
        partials = [event.partial_json async for event in stream if event.type == "input_json"]
        final = await stream.get_final_message()
    assert len(partials) > 1
    assert orjson.loads("".join(partials)) == {"city": "mock", "unit": "celsius"}
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "mock", "unit": "celsius"}


async def test_injected_429_surfaces_as_rate_limit_error_with_retry_after(mock_server: Any) -> None:
    async with sdk(await mock_server(retry_after=7)) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(
                model=MODEL, max_tokens=16, messages=HELLO, extra_headers={"x-mock-status": "429"}
            )
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "Rate limit reached (injected by the mock upstream)."},
    }


async def test_sdk_retries_a_429_after_the_retry_after_it_was_sent(mock_server: Any) -> None:
    base = await mock_server(status=429, retry_after=1)
    async with sdk(base, max_retries=1) as client:
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(model=MODEL, max_tokens=16, messages=HELLO)
    async with aiohttp.ClientSession() as session:
        recorded = (await (await session.get(f"{base}/_mock/requests")).json())["requests"]
    first, second = recorded
    assert 0.95 <= second["time"] - first["time"] < 3  # the SDK's own back-off would be at most 0.5 s


@pytest.mark.parametrize(
    ("status", "error_class", "error_type"),
    [
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
async def test_injected_statuses_surface_as_the_sdks_errors_with_anthropic_types(
    mock_server: Any, status: int, error_class: type[anthropic.APIStatusError], error_type: str
) -> None:
    async with sdk(await mock_server()) as client:
        with pytest.raises(error_class) as caught:
            await client.messages.create(
                model=MODEL, max_tokens=16, messages=HELLO, extra_headers={"x-mock-status": str(status)}
            )
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict) and caught.value.body["error"]["type"] == error_type


async def test_injected_mid_stream_error_surfaces_as_the_sdks_error_after_the_first_text(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        pieces: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with client.messages.stream(
                model=MODEL,
                max_tokens=1024,
                messages=HELLO,
                extra_headers={"x-mock-error-after": "5", "x-mock-error-status": "529"},
            ) as stream:
                async for text in stream.text_stream:
                    pieces.append(text)
    assert pieces == ["the", " quick"]  # message_start, content_block_start, ping, two deltas, then the error
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "overloaded_error"


async def test_missing_max_tokens_is_a_400_invalid_request_error(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            # messages.create will not send a request without max_tokens: the SDK's raw post sends one
            await client.post("/v1/messages", cast_to=object, body={"model": MODEL, "messages": HELLO})
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }


async def test_requests_are_recorded_with_the_api_key_and_version_the_client_sent(mock_server: Any) -> None:
    base = await mock_server()
    async with sdk(base) as client:
        version = client.default_headers["anthropic-version"]
        await client.messages.create(model=MODEL, max_tokens=8, messages=HELLO)
    async with aiohttp.ClientSession() as session:
        raw = {"x-api-key": "sk-ant-raw", "anthropic-version": "2023-06-01"}
        await session.post(
            f"{base}/v1/messages", json={"model": MODEL, "max_tokens": 4, "messages": HELLO}, headers=raw
        )
        by_sdk, by_hand = (await (await session.get(f"{base}/_mock/requests")).json())["requests"]
    assert by_sdk["method"] == "POST" and by_sdk["path"] == "/v1/messages"
    assert by_sdk["body"] == {"model": MODEL, "max_tokens": 8, "messages": HELLO}
    sdk_headers = {name.lower(): value for name, value in by_sdk["headers"]}
    # this SDK sends its api_key as a bearer token; gateways and older SDKs send x-api-key
    assert sdk_headers["authorization"] == "Bearer sk-ant-test" and sdk_headers["anthropic-version"] == version
    hand_headers = {name.lower(): value for name, value in by_hand["headers"]}
    assert hand_headers["x-api-key"] == "sk-ant-raw" and hand_headers["anthropic-version"] == "2023-06-01"


# ---------------------------------------------------------------- the bytes on the wire


async def test_stream_is_anthropic_sse_framing_in_order(mock: Any) -> None:
    client = await mock()
    body = {"model": MODEL, "max_tokens": 3, "messages": HELLO, "stream": True}
    resp = await client.post("/v1/messages", json=body)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    events = sse(await resp.read())
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["id"].startswith("msg_") and start["model"] == MODEL and start["content"] == []
    assert start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert deltas == [{"type": "text_delta", "text": t} for t in ("the", " quick", " brown")]
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    }


async def test_tool_stream_sends_input_json_deltas_and_stop_reason_tool_use(mock: Any) -> None:
    client = await mock(tokens_per_chunk=2)
    body = {
        "model": MODEL,
        "max_tokens": 64,
        "messages": HELLO,
        "stream": True,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "any"},
    }
    events = sse(await (await client.post("/v1/messages", json=body)).read())
    block = events[1][1]["content_block"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather" and block["input"] == {}
    partials = [data["delta"]["partial_json"] for name, data in events if name == "content_block_delta"]
    assert all(len(p) <= 8 for p in partials)  # 4 characters a token, 2 tokens a delta
    assert orjson.loads("".join(partials)) == {"city": "mock", "unit": "celsius"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_mid_stream_error_is_an_error_event_ending_the_stream(mock: Any) -> None:
    client = await mock()
    body = {"model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": True}
    resp = await client.post("/v1/messages", json=body, headers={"x-mock-error-after": "4"})
    events = sse(await resp.read())
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "error",
    ]
    assert events[-1][1]["error"]["type"] == "api_error"  # error_status defaults to 500


async def test_front_errors_are_anthropic_shaped(mock: Any) -> None:
    client = await mock()
    for body, headers in [
        (b"{not json", {}),
        (orjson.dumps({"max_tokens": 8, "messages": HELLO}), {}),
        (orjson.dumps({"model": MODEL, "max_tokens": 8}), {}),
        (orjson.dumps({"model": MODEL, "max_tokens": 0, "messages": HELLO}), {}),
        (orjson.dumps({"model": MODEL, "max_tokens": 8, "messages": HELLO}), {"x-mock-nonsense": "1"}),
        (
            orjson.dumps(
                {
                    "model": MODEL,
                    "max_tokens": 8,
                    "messages": HELLO,
                    "tools": [WEATHER_TOOL],
                    "tool_choice": {"type": "tool", "name": "nope"},
                }
            ),
            {},
        ),
    ]:
        resp = await client.post("/v1/messages", data=body, headers={"Content-Type": "application/json", **headers})
        assert resp.status == 400, body
        error = await resp.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert isinstance(error["error"]["message"], str) and error["error"]["message"]


async def test_stream_faults_of_the_shared_writer_apply_to_messages(mock: Any) -> None:
    client = await mock()
    body = {"model": MODEL, "max_tokens": 8, "messages": HELLO, "stream": True}
    resp = await client.post("/v1/messages", json=body, headers={"x-mock-cut-after": "2"})
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    resp = await client.post("/v1/messages", json=body, headers={"x-mock-latency-ms": "1", "x-mock-status": "503"})
    assert resp.status == 503 and (await resp.json())["error"]["type"] == "api_error"
    stats = await (await client.get("/_mock/stats")).json()
    assert stats["streams_cut"] == 1 and stats["errors_injected"] == 1


async def test_count_tokens_answers_the_input_tokens_a_message_reports(mock: Any) -> None:
    client = await mock()
    request = {"model": MODEL, "system": [{"type": "text", "text": "Be brief."}], "messages": HELLO}
    counted = await (await client.post("/v1/messages/count_tokens", json=request)).json()
    message = await (await client.post("/v1/messages", json={**request, "max_tokens": 8})).json()
    assert counted == {"input_tokens": message["usage"]["input_tokens"]}
