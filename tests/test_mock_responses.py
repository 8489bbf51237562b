"""The mock upstream's Responses API: the official OpenAI SDK against a started mock, the SSE framing, stored responses."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI
from openai.types.responses import Response

from tollgate.mock.state import STORED_RESPONSES

SIXTEEN_WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly pack boxes of"
WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
}
TEXT_STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 4,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def sdk(base: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)


def frames(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event line, data) of each SSE event; asserts each is exactly an ``event:`` and a ``data:`` line."""
    assert body.endswith(b"\n\n")
    events = []
    for frame in body.decode().split("\n\n")[:-1]:
        event_line, data_line = frame.split("\n")
        assert event_line.startswith("event: ") and data_line.startswith("data: "), frame
        events.append((event_line.removeprefix("event: "), orjson.loads(data_line.removeprefix("data: "))))
    return events


async def post(base: str, path: str, body: dict[str, Any], **headers: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(base + path, json=body, headers=headers) as resp:
        return resp.status, await resp.read()


# ---------------------------------------------------------------- non-stream


async def test_a_response_is_openai_shaped_with_one_output_text_and_usage(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        response = await client.responses.create(model="gpt-4o-mini", input="Hello there, mock!")
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.model == "gpt-4o-mini"
    assert [item.type for item in response.output] == ["message"]
    message = response.output[0]
    assert message.type == "message" and [part.type for part in message.content] == ["output_text"]
    assert response.output_text == SIXTEEN_WORDS
    usage = response.usage
    assert usage is not None and usage.output_tokens == 16 and usage.output_tokens_details.reasoning_tokens == 0
    assert usage.input_tokens > 0 and usage.input_tokens_details.cached_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


async def test_list_input_counts_like_the_same_chat_messages(mock_server: Any) -> None:
    base = await mock_server()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there, mock!"}]
    async with sdk(base) as client:
        listed = await client.responses.create(model="gpt-4o", input=messages)
        instructed = await client.responses.create(
            model="gpt-4o", instructions="Be brief.", input=[{"role": "user", "content": "Hello there, mock!"}]
        )
        chat = await client.chat.completions.create(model="gpt-4o", messages=messages)
    assert listed.usage is not None and instructed.usage is not None and chat.usage is not None
    assert listed.usage.input_tokens == instructed.usage.input_tokens == chat.usage.prompt_tokens
    assert instructed.instructions == "Be brief."


async def test_an_o_model_reasons_first_and_counts_reasoning_in_output_tokens(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        response = await client.responses.create(model="o4-mini", input="Think, then answer.")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].id.startswith("rs_")
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 32
    assert response.usage.output_tokens == 32 + 16 and response.output_text == SIXTEEN_WORDS
    assert response.reasoning is not None and response.reasoning.effort == "medium"


async def test_the_reasoning_effort_of_the_request_sets_the_reasoning_tokens(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        high = await client.responses.create(model="gpt-5", input="x", reasoning={"effort": "high"})
        none = await client.responses.create(model="gpt-5", input="x", reasoning={"effort": "none"})
    assert high.usage is not None and high.usage.output_tokens_details.reasoning_tokens == 64
    assert [item.type for item in high.output] == ["reasoning", "message"]
    assert none.usage is not None and none.usage.output_tokens_details.reasoning_tokens == 0
    assert [item.type for item in none.output] == ["message"]


async def test_max_output_tokens_cuts_reasoning_plus_text_and_makes_the_response_incomplete(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        cut = await client.responses.create(model="o3", input="x", max_output_tokens=36)
        roomy = await client.responses.create(model="gpt-4o", input="x", max_output_tokens=1000)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens"
    assert cut.usage is not None and cut.usage.output_tokens == 36
    assert cut.usage.output_tokens_details.reasoning_tokens == 32 and cut.output_text == "the quick brown fox"
    assert roomy.status == "completed" and roomy.output_text == SIXTEEN_WORDS


async def test_the_completion_tokens_knob_sets_the_text_length(mock_server: Any) -> None:
    async with sdk(await mock_server(completion_tokens=3)) as client:
        response = await client.responses.create(model="gpt-4o", input="x", max_output_tokens=1)
    assert response.status == "completed" and response.output_text == "the quick brown"


async def test_forced_function_tool_answers_one_function_call_with_sample_arguments(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        required = await client.responses.create(
            model="gpt-4o", input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
        )
        named = await client.responses.create(
            model="gpt-4o",
            input="Weather?",
            tools=[{"type": "function", "name": "noop", "parameters": {}}, WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
        )
        auto = await client.responses.create(model="gpt-4o", input="Hi", tools=[WEATHER], tool_choice="auto")
    for response in (required, named):
        (call,) = response.output
        assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
        assert orjson.loads(call.arguments) == {"city": "mock", "unit": "celsius"}
    assert [item.type for item in auto.output] == ["message"]


async def test_a_bad_request_is_an_openai_400(mock_server: Any) -> None:
    base = await mock_server()
    async with sdk(base) as client:
        with pytest.raises(openai.BadRequestError) as missing_input:
            await client.responses.create(model="gpt-4o")
        with pytest.raises(openai.BadRequestError) as no_tools:
            await client.responses.create(model="gpt-4o", input="x", tool_choice="required")
    assert missing_input.value.param == "input" and no_tools.value.param == "tool_choice"


# ---------------------------------------------------------------- stored responses


async def test_a_stored_response_is_retrieved_as_answered_and_deleted_once(mock_server: Any) -> None:
    base = await mock_server()
    async with sdk(base) as client:
        created = await client.responses.create(model="gpt-4o-mini", input="Remember me.")
        fetched = await client.responses.retrieve(created.id)
        assert fetched.model_dump() == created.model_dump()
        async with aiohttp.ClientSession() as session, session.delete(f"{base}/v1/responses/{created.id}") as resp:
            assert resp.status == 200
            assert await resp.json() == {"id": created.id, "object": "response.deleted", "deleted": True}
        with pytest.raises(openai.NotFoundError) as gone:
            await client.responses.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.delete(created.id)
    assert isinstance(gone.value.body, dict) and created.id in gone.value.body["message"]


async def test_store_false_keeps_nothing(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        created = await client.responses.create(model="gpt-4o-mini", input="Forget me.", store=False)
        assert created.store is False
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(created.id)


async def test_previous_response_id_adds_the_conversation_as_cached_input(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        first = await client.responses.create(model="gpt-4o-mini", input="Hello there, mock!")
        again = await client.responses.create(model="gpt-4o-mini", input="Hello there, mock!")
        follow = await client.responses.create(
            model="gpt-4o-mini", input="Hello there, mock!", previous_response_id=first.id
        )
        with pytest.raises(openai.BadRequestError) as unknown:
            await client.responses.create(model="gpt-4o-mini", input="x", previous_response_id="resp_nope")
    assert first.usage is not None and again.usage is not None and follow.usage is not None
    context = first.usage.input_tokens + first.usage.output_tokens
    assert follow.usage.input_tokens == again.usage.input_tokens + context
    assert follow.usage.input_tokens_details.cached_tokens == context
    assert follow.previous_response_id == first.id
    assert unknown.value.code == "previous_response_not_found" and unknown.value.param == "previous_response_id"


async def test_stored_responses_are_bounded_the_oldest_going_first(mock_server: Any) -> None:
    base = await mock_server(record=False)
    async with aiohttp.ClientSession() as session:
        ids = []
        for _ in range(STORED_RESPONSES + 1):
            async with session.post(f"{base}/v1/responses", json={"model": "m", "input": "x"}) as resp:
                ids.append((await resp.json())["id"])
        async with session.get(f"{base}/v1/responses/{ids[0]}") as oldest:
            assert oldest.status == 404
        async with session.get(f"{base}/v1/responses/{ids[1]}") as kept:
            assert kept.status == 200


# ---------------------------------------------------------------- streams


async def test_sdk_stream_yields_the_events_in_order_and_a_final_response_with_usage(mock_server: Any) -> None:
    async with sdk(await mock_server(tokens_per_chunk=4)) as client:
        stream = await client.responses.create(model="gpt-4o-mini", input="Hello there, mock!", stream=True)
        events = [event async for event in stream]
    assert [event.type for event in events] == TEXT_STREAM_EVENTS
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert deltas == ["the quick brown fox", " jumps over a lazy", " dog while seven wizards", " quietly pack boxes of"]
    final = events[-1]
    assert final.type == "response.completed"
    assert final.response.status == "completed" and final.response.output_text == SIXTEEN_WORDS
    assert final.response.usage is not None and final.response.usage.output_tokens == 16
    created = events[0]
    assert created.type == "response.created" and created.response.status == "in_progress"
    assert created.response.id == final.response.id and created.response.usage is None


async def test_stream_of_an_o_model_carries_a_reasoning_item_and_reasoning_tokens(mock_server: Any) -> None:
    client = sdk(await mock_server(tokens_per_chunk=16))
    async with client, client.responses.stream(model="o3-mini", input="Think.") as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_item.done",
    ]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 32
    assert final.usage.output_tokens == 48 and final.output_text == SIXTEEN_WORDS


async def test_stream_framing_is_event_and_data_lines_without_done(mock_server: Any) -> None:
    status, body = await post(await mock_server(), "/v1/responses", {"model": "gpt-4o", "input": "x", "stream": True})
    assert status == 200 and b"[DONE]" not in body
    events = frames(body)
    assert [name for name, _ in events] == [data["type"] for _, data in events]
    assert events[-1][0] == "response.completed"
    Response.model_validate(events[-1][1]["response"])  # the SDK's model parses the final response strictly


async def test_function_call_stream_sends_argument_deltas_that_join_into_the_arguments(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        stream = await client.responses.create(
            model="gpt-4o", input="Weather?", tools=[WEATHER], tool_choice="required", stream=True
        )
        events = [event async for event in stream]
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    deltas = [event.delta for event in events if event.type == "response.function_call_arguments.delta"]
    done = next(event for event in events if event.type == "response.function_call_arguments.done")
    assert len(deltas) > 1 and "".join(deltas) == done.arguments
    assert orjson.loads(done.arguments) == {"city": "mock", "unit": "celsius"}
    final = events[-1]
    assert final.type == "response.completed" and final.response.output[0].type == "function_call"


async def test_max_output_tokens_stream_ends_with_response_incomplete(mock_server: Any) -> None:
    status, body = await post(
        await mock_server(), "/v1/responses", {"model": "gpt-4o", "input": "x", "stream": True, "max_output_tokens": 2}
    )
    events = frames(body)
    assert status == 200 and events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["usage"]["output_tokens"] == 2


async def test_cut_after_ends_a_responses_stream_without_response_completed(mock_server: Any) -> None:
    base = await mock_server()
    async with sdk(base) as client:
        stream = await client.responses.create(
            model="gpt-4o-mini", input="x", stream=True, extra_headers={"x-mock-cut-after": "5"}
        )
        seen: list[str] = []
        with pytest.raises(openai.APIConnectionError):  # the connection closes mid-body
            async for event in stream:
                seen.append(event.type)
    assert seen == TEXT_STREAM_EVENTS[:5]
    async with aiohttp.ClientSession() as session, session.get(f"{base}/_mock/stats") as resp:
        assert (await resp.json())["streams_cut"] == 1


async def test_injected_status_applies_to_the_responses_endpoint(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.responses.create(
                model="gpt-4o", input="x", extra_headers={"x-mock-status": "429", "x-mock-retry-after": "7"}
            )
    assert limited.value.response.headers["retry-after"] == "7"


# ---------------------------------------------------------------- Azure's v1 path


async def test_azure_v1_responses_path_creates_retrieves_and_deletes_with_the_expected_key(mock_server: Any) -> None:
    base = await mock_server(azure_api_key="azure-secret")
    azure = AsyncAzureOpenAI(
        base_url=f"{base}/openai/v1/", api_key="azure-secret", api_version="preview", max_retries=0
    )
    async with azure:
        created = await azure.responses.create(model="my-deployment", input="Hello via Azure")
        fetched = await azure.responses.retrieve(created.id)
        await azure.responses.delete(created.id)
    assert created.output_text == SIXTEEN_WORDS and fetched.id == created.id
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/v1/responses/{created.id}") as gone:
            assert gone.status == 404
        async with session.post(
            f"{base}/openai/v1/responses", json={"model": "d", "input": "x"}, headers={"api-key": "wrong"}
        ) as refused:
            assert refused.status == 401 and (await refused.json())["error"]["code"] == "401"
        async with session.get(f"{base}/_mock/requests") as resp:
            paths = [(r["method"], r["path"]) for r in (await resp.json())["requests"]]
    assert paths == [
        ("POST", "/openai/v1/responses"),
        ("GET", f"/openai/v1/responses/{created.id}"),
        ("DELETE", f"/openai/v1/responses/{created.id}"),
        ("GET", f"/v1/responses/{created.id}"),
    ]
