"""Anthropic Messages clients: the official ``anthropic`` SDK against the gateway's ``/v1/messages``.

The gateway runs in-process (tests/resilience/helpers.py) in front of the mock upstream, also
in-process, which speaks both Anthropic's Messages API and OpenAI's chat completions. A Messages
request reaches an Anthropic upstream as it came (its model renamed to the deployment's) and an
OpenAI upstream as a chat completion; either way the client sees Anthropic's dialect: its answers,
its stream events, its errors.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest

from .resilience.helpers import gateway
from .support.upstream_log import access_lines, header_values, recorded

KEY = "tg_messages_test_key_0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-upstream-0123456789"
OPENAI_KEY = "sk-openai-upstream-0123456789"
MSG: list[Any] = [{"role": "user", "content": "hello there"}]
BUDGET = 1_000_000
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def config_doc(mock_url: str, log: Path, rules: dict[str, Any] | None = None) -> dict[str, Any]:
    steer = {"forward_headers": ["x-mock-*"]}
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "identity": {"chain": ["api_key"]},
        "plans": {"open": {"monthly_requests": 10_000_000, "concurrency": 10_000}},
        "tenants": {
            "acme": {"plan": "open", "keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}
        },
        "namespaces": {
            "burst": {"matchers": [{"type": "header", "field": "X-Scenario", "op": "equals", "value": "burst"}]}
        },
        "upstreams": {
            "anthropic": {"provider": "anthropic", "base_url": mock_url, "api_key": ANTHROPIC_KEY, **steer},
            "openai": {"base_url": f"{mock_url}/v1", "api_key": OPENAI_KEY, **steer},
            "openai-lax": {"base_url": f"{mock_url}/v1", "api_key": OPENAI_KEY, "drop_unsupported": True},
            "openai-down": {"base_url": f"{mock_url}/v1", "api_key": OPENAI_KEY, "headers": {"x-mock-status": "503"}},
        },
        "models": {
            "claude-sonnet": {"deployments": [{"upstream": "anthropic", "model": "claude-sonnet-4-5"}]},
            "gpt-4o": {"deployments": [{"upstream": "openai"}]},
            "gpt-lax": {"deployments": [{"upstream": "openai-lax", "model": "gpt-4o"}]},
            "gpt-down": {"deployments": [{"upstream": "openai-down"}], "fallbacks": ["claude-sonnet"]},
        },
        "rules": rules
        or {
            "tph": {
                "type": "token_limit",
                "limit": BUDGET,
                "per": "hour",
                "scope": ["tenant"],
                "attach": {"global": True},
            },
            "burst": {
                "type": "request_limit",
                "limit": 5,
                "per": "second",
                "algorithm": "gcra",
                "scope": ["key"],
                "attach": {"namespaces": ["burst"]},
            },
        },
        "access_log": {"path": str(log)},
        "resilience": {"retries": {"backoff_base": "1ms", "backoff_cap": "5ms"}},
    }


@pytest.fixture
async def url(mock_url: str, log_path: Path) -> AsyncIterator[str]:
    async with gateway(config_doc(mock_url, log_path)) as (gateway_url, _state):
        yield gateway_url


@pytest.fixture
async def client(url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # Both mocks generate 16 tokens and end the turn, whatever max_tokens says.
    sdk = anthropic.AsyncAnthropic(
        base_url=url, api_key=KEY, max_retries=0, default_headers={"x-mock-completion-tokens": "16"}
    )
    try:
        yield sdk
    finally:
        await sdk.close()


# -- answers, from either kind of upstream ---------------------------------------------------


async def test_a_message_reaches_an_anthropic_upstream_as_it_came_with_the_gateways_key(
    client: anthropic.AsyncAnthropic, mock_url: str
) -> None:
    message = await client.messages.create(model="claude-sonnet", max_tokens=64, messages=MSG, system="be brief")
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 16 and message.usage.input_tokens > 0
    (request,) = await recorded(mock_url)
    assert request["path"] == "/v1/messages"
    assert request["body"] == {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": MSG, "system": "be brief"}
    assert header_values(request, "x-api-key") == [ANTHROPIC_KEY]
    assert not any(KEY in value for _, value in request["headers"])  # the client's credential stays here


async def test_a_message_reaches_an_openai_upstream_as_a_chat_completion_and_comes_back_as_a_message(
    client: anthropic.AsyncAnthropic, mock_url: str
) -> None:
    raw = await client.messages.with_raw_response.create(
        model="gpt-4o", max_tokens=64, messages=MSG, system="be brief", stop_sequences=["END"]
    )
    message = await raw.parse()
    assert raw.headers["x-tollgate-model"] == "gpt-4o"
    assert message.type == "message" and message.content[0].type == "text" and message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 16 and message.usage.input_tokens > 0
    (request,) = await recorded(mock_url)
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["messages"] == [{"role": "system", "content": "be brief"}, *MSG]
    assert (request["body"]["max_tokens"], request["body"]["stop"]) == (64, ["END"])
    assert header_values(request, "authorization") == [f"Bearer {OPENAI_KEY}"]


@pytest.mark.parametrize("model", ["claude-sonnet", "gpt-4o"])
async def test_a_stream_arrives_as_anthropic_events_one_delta_at_a_time(
    client: anthropic.AsyncAnthropic, model: str
) -> None:
    kinds: list[str] = []
    texts: list[str] = []
    async with client.messages.stream(model=model, max_tokens=64, messages=MSG) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "message_delta" in kinds and "content_block_stop" in kinds
    assert len(texts) > 1  # several deltas, not one buffered answer
    assert final.usage.output_tokens == 16 and final.stop_reason == "end_turn"


@pytest.mark.parametrize("model", ["claude-sonnet", "gpt-4o"])
async def test_a_tool_use_round_trip(client: anthropic.AsyncAnthropic, model: str, mock_url: str) -> None:
    first = await client.messages.create(
        model=model, max_tokens=64, messages=MSG, tools=[WEATHER_TOOL], tool_choice={"type": "any"}
    )
    assert first.stop_reason == "tool_use"
    (call,) = [block for block in first.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "mock"}
    followup: list[Any] = [
        *MSG,
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]},
    ]
    second = await client.messages.create(model=model, max_tokens=64, messages=followup, tools=[WEATHER_TOOL])
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    sent = (await recorded(mock_url))[-1]["body"]
    if model == "gpt-4o":  # the tool result reached the OpenAI upstream as a tool message
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}
    else:
        assert sent["messages"][-1] == followup[-1]


@pytest.mark.parametrize("model", ["claude-sonnet", "gpt-4o"])
async def test_a_streamed_tool_call_arrives_as_input_json_deltas(client: anthropic.AsyncAnthropic, model: str) -> None:
    partial = ""
    async with client.messages.stream(
        model=model, max_tokens=64, messages=MSG, tools=[WEATHER_TOOL], tool_choice={"type": "any"}
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partial += event.delta.partial_json
        final = await stream.get_final_message()
    assert orjson.loads(partial) == {"city": "mock"}
    assert final.stop_reason == "tool_use"


async def test_count_tokens_is_answered_by_an_anthropic_upstream_and_estimated_for_an_openai_one(
    client: anthropic.AsyncAnthropic, mock_url: str
) -> None:
    counted = await client.messages.count_tokens(model="claude-sonnet", messages=MSG)
    estimated = await client.messages.count_tokens(model="gpt-4o", messages=MSG)
    assert counted.input_tokens > 0 and estimated.input_tokens > 0
    (request,) = await recorded(mock_url)  # only the Anthropic upstream was asked
    assert request["path"] == "/v1/messages/count_tokens" and request["body"]["model"] == "claude-sonnet-4-5"


# -- identity, limits, errors in Anthropic's shape ---------------------------------------------


async def test_the_key_is_accepted_as_x_api_key_or_as_a_bearer_token(url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=url, auth_token=KEY, max_retries=0) as bearer:
        message = await bearer.messages.create(model="claude-sonnet", max_tokens=8, messages=MSG)
    assert message.content


async def test_a_bad_key_is_the_sdks_authentication_error(url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=url, api_key="tg_wrong", max_retries=0) as stranger:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await stranger.messages.create(model="claude-sonnet", max_tokens=8, messages=MSG)
    assert caught.value.status_code == 401
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "authentication_error"


@pytest.mark.serial  # the SDK's wait measured in wall-clock
async def test_over_the_limit_is_the_sdks_rate_limit_error_and_it_waits_retry_after_ms(url: str) -> None:
    sent: list[float] = []
    answers: list[tuple[int, dict[str, str]]] = []

    async def on_request(request: Any) -> None:
        sent.append(asyncio.get_running_loop().time())

    async def on_response(response: Any) -> None:
        answers.append((response.status_code, dict(response.headers)))

    def sdk(max_retries: int) -> anthropic.AsyncAnthropic:
        hooks = {"request": [on_request], "response": [on_response]}
        return anthropic.AsyncAnthropic(
            base_url=url,
            api_key=KEY,
            max_retries=max_retries,
            default_headers={"X-Scenario": "burst"},
            http_client=anthropic.DefaultAsyncHttpxClient(event_hooks=hooks),
        )

    async with sdk(0) as impatient:
        with pytest.raises(anthropic.RateLimitError) as caught:
            for _ in range(20):  # 5 a second, spread out: the burst runs out within a few requests
                await impatient.messages.create(model="claude-sonnet", max_tokens=8, messages=MSG)
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert caught.value.response.headers["retry-after"] == "1"
    # The patient SDK sends until a request of its own is refused (one token comes back every 200 ms: on a slow
    # machine the first may find it), then waits and retries that one.
    async with sdk(2) as patient:
        for _ in range(20):
            sent.clear()
            answers.clear()
            message = await patient.messages.create(model="claude-sonnet", max_tokens=8, messages=MSG)
            if answers[0][0] == 429:
                break
    assert message.content  # served after the SDK's retry
    statuses = [status for status, _ in answers]
    assert statuses[0] == 429 and statuses[-1] == 200, statuses
    wait_ms = int(answers[0][1]["retry-after-ms"])
    assert 0 < wait_ms < 1000
    waited = sent[1] - sent[0]
    # It slept retry-after-ms, not the whole second Retry-After rounds it up to.
    assert wait_ms / 1000 * 0.9 <= waited < 0.95, (wait_ms, waited)


async def test_errors_are_in_anthropics_shape_with_its_types(url: str) -> None:
    headers = {"x-api-key": KEY, "content-type": "application/json"}
    cases = [
        (b"{not json", 400, "invalid_request_error"),
        (orjson.dumps({"model": "no-such-model", "max_tokens": 8, "messages": MSG}), 404, "not_found_error"),
        (orjson.dumps({"max_tokens": 8, "messages": MSG}), 400, "invalid_request_error"),
    ]
    async with aiohttp.ClientSession() as s:
        for body, status, kind in cases:
            async with s.post(f"{url}/v1/messages", data=body, headers=headers) as r:
                doc = await r.json()
                assert (r.status, doc["type"], doc["error"]["type"]) == (status, "error", kind), doc
                assert doc["error"]["message"] and r.headers["x-request-id"] == doc["request_id"]


async def test_an_untranslatable_parameter_is_refused_in_anthropics_shape_naming_it(
    client: anthropic.AsyncAnthropic, mock_url: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(
            model="gpt-4o", max_tokens=8, messages=MSG, extra_body={"mcp_servers": [{"type": "url"}]}
        )
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert "mcp_servers" in body["error"]["message"]
    assert await recorded(mock_url) == []  # nothing reached the upstream


async def test_with_drop_unsupported_the_parameter_is_dropped_and_named_in_a_header(
    client: anthropic.AsyncAnthropic, mock_url: str
) -> None:
    raw = await client.messages.with_raw_response.create(
        model="gpt-lax", max_tokens=8, messages=MSG, extra_body={"mcp_servers": [{"type": "url"}]}
    )
    assert (await raw.parse()).content
    assert raw.headers["x-tollgate-dropped"] == "mcp_servers"
    (request,) = await recorded(mock_url)
    assert "mcp_servers" not in request["body"]


# -- accounting, budgets, fallbacks -----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_the_usage_settles_the_token_reservation_and_is_logged(
    client: anthropic.AsyncAnthropic, log_path: Path, stream: bool
) -> None:
    async def once() -> tuple[int, int]:
        raw = await client.messages.with_raw_response.create(
            model="claude-sonnet", max_tokens=200, messages=MSG, stream=stream
        )
        if not stream:
            usage = (await raw.parse()).usage
            return int(raw.headers["x-ratelimit-remaining-tokens"]), usage.input_tokens + usage.output_tokens
        used = 0
        async for event in await raw.parse():
            if event.type == "message_start":
                used += event.message.usage.input_tokens
            elif event.type == "message_delta":
                used += event.usage.output_tokens
        return int(raw.headers["x-ratelimit-remaining-tokens"]), used

    remaining_first, used = await once()
    await asyncio.sleep(0.3)  # settling runs just after each answer
    remaining_second, _ = await once()
    assert BUDGET - remaining_first > used  # the reservation held max_tokens, more than was used
    assert remaining_first - remaining_second == used  # then settled to the reported usage
    line = (await access_lines(log_path, 1))[0]
    assert (line["endpoint"], line["upstream"], line["usage_reported"]) == ("messages", "anthropic", True)
    assert line["prompt_tokens"] + line["completion_tokens"] == used


@pytest.mark.parametrize("model", ["claude-sonnet", "gpt-4o"])
async def test_a_token_budget_cuts_an_anthropic_stream_with_an_error_event(
    mock_url: str, log_path: Path, model: str
) -> None:
    rules = {
        "tiny": {"type": "token_limit", "limit": 40, "per": "hour", "scope": ["tenant"], "attach": {"global": True}}
    }
    async with gateway(config_doc(mock_url, log_path, rules)) as (url, _state), aiohttp.ClientSession() as s:
        body = {"model": model, "messages": MSG, "stream": True, "max_tokens": 1}
        headers = {"x-api-key": KEY, "x-mock-completion-tokens": "300"}
        async with s.post(f"{url}/v1/messages", json=body, headers=headers) as r:
            assert r.status == 200
            raw = await r.read()
    assert b"event: message_start" in raw and b"event: content_block_delta" in raw
    error = raw.rsplit(b"event: error\ndata: ", 1)[1]
    doc = orjson.loads(error)
    assert doc["type"] == "error" and doc["error"]["type"] == "rate_limit_error"
    assert "token_budget_exceeded" in doc["error"]["message"]
    assert b"message_stop" not in raw


async def test_gpt_down_before_its_first_byte_falls_back_to_claude_for_an_anthropic_client(
    client: anthropic.AsyncAnthropic, mock_url: str, log_path: Path
) -> None:
    raw = await client.messages.with_raw_response.create(model="gpt-down", max_tokens=32, messages=MSG)
    assert raw.headers["x-tollgate-model"] == "claude-sonnet"
    assert (await raw.parse()).content[0].type == "text"
    requests = await recorded(mock_url)
    assert requests[0]["path"] == "/v1/chat/completions"  # the OpenAI deployment, down
    assert requests[-1]["path"] == "/v1/messages" and requests[-1]["body"]["model"] == "claude-sonnet-4-5"
    line = (await access_lines(log_path, 1))[0]
    assert (line["model"], line["model_served"], line["upstream"]) == ("gpt-down", "claude-sonnet", "anthropic")


async def test_an_overloaded_anthropic_upstream_is_retried_and_answered_529(
    client: anthropic.AsyncAnthropic, mock_url: str
) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        await client.messages.create(
            model="claude-sonnet", max_tokens=8, messages=MSG, extra_headers={"x-mock-status": "529"}
        )
    assert caught.value.status_code == 529
    body = caught.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "overloaded_error"
    assert len(await recorded(mock_url)) > 1  # judged as the 503 it means: retried before giving up
