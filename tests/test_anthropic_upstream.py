"""Anthropic as an upstream of OpenAI-dialect clients: the official ``openai`` SDK in front of the gateway.

The gateway runs in-process (tests/resilience/helpers.py) in front of the mock upstream, also
in-process, whose ``/v1/messages`` speaks Anthropic's Messages API. Every request the mock got is
read back from ``/_mock/requests`` to check what went over the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tollgate.config import config_from_dict
from tollgate.upstream.pool import UpstreamClient

from .resilience.helpers import gateway
from .support.upstream_log import access_lines, header_values, recorded

ANTHROPIC_KEY = "sk-ant-upstream-0123456789"
OPENAI_KEY = "sk-openai-upstream-0123456789"
CLIENT_KEY = "tg-client-key"
MSG: list[Any] = [{"role": "user", "content": "hello there"}]
BUDGET = 1_000_000
DEFAULT_MAX_TOKENS = 500
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def config_doc(mock_url: str, log: Path) -> dict[str, Any]:
    anthropic = {"provider": "anthropic", "base_url": mock_url, "api_key": ANTHROPIC_KEY}
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "upstreams": {
            # x-mock-* passes so a test can steer the mock per request (the client's credentials never do).
            "anthropic": {**anthropic, "forward_headers": ["x-mock-*"]},
            "anthropic-lax": {**anthropic, "drop_unsupported": True, "anthropic_version": "2024-01-01"},
            "anthropic-busy": {**anthropic, "headers": {"x-mock-status": "429", "x-mock-retry-after": "0"}},
            "openai-down": {"base_url": f"{mock_url}/v1", "api_key": OPENAI_KEY, "headers": {"x-mock-status": "503"}},
        },
        "models": {
            "claude-sonnet": {
                "deployments": [{"upstream": "anthropic", "model": "claude-sonnet-4-5", "max_tokens": 300}]
            },
            "claude-lax": {"deployments": [{"upstream": "anthropic-lax", "model": "claude-haiku-4-5"}]},
            "claude-busy": {"deployments": [{"upstream": "anthropic-busy"}]},
            "gpt-4o": {"deployments": [{"upstream": "openai-down"}], "fallbacks": ["claude-sonnet"]},
        },
        "rules": {
            "tph": {
                "type": "token_limit",
                "limit": BUDGET,
                "per": "hour",
                "scope": ["tenant"],
                "attach": {"global": True},
            }
        },
        "admission": {"default_max_tokens": DEFAULT_MAX_TOKENS},
        "access_log": {"path": str(log)},
        "usage": {"flush_interval": "100ms"},
        "resilience": {"retries": {"backoff_base": "1ms", "backoff_cap": "5ms"}},
    }


@pytest.fixture
async def client(mock_url: str, log_path: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    async with gateway(config_doc(mock_url, log_path)) as (url, _state):
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0)
        try:
            yield sdk
        finally:
            await sdk.close()


# -- answers ------------------------------------------------------------------------------


async def test_a_chat_completion_is_served_by_the_messages_api_with_the_gateways_key_and_version(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    completion = await client.chat.completions.create(model="claude-sonnet", messages=MSG)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 16
    (request,) = await recorded(mock_url)
    assert request["path"] == "/v1/messages"
    assert request["body"]["model"] == "claude-sonnet-4-5"
    assert request["body"]["max_tokens"] == 300  # the deployment's default: the client gave none
    assert request["body"]["messages"] == [{"role": "user", "content": "hello there"}]
    assert header_values(request, "x-api-key") == [ANTHROPIC_KEY]
    assert header_values(request, "anthropic-version") == ["2023-06-01"]
    assert header_values(request, "authorization") == []
    assert not any(CLIENT_KEY in value for _, value in request["headers"])


async def test_the_configured_version_and_the_default_max_tokens_of_4096_are_sent(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    await client.chat.completions.create(model="claude-lax", messages=MSG)
    (request,) = await recorded(mock_url)
    assert header_values(request, "anthropic-version") == ["2024-01-01"]
    assert request["body"]["max_tokens"] == 4096


async def test_a_stream_is_translated_chunk_by_chunk_with_usage_when_the_client_asks(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    stream = await client.chat.completions.create(
        model="claude-sonnet", messages=MSG, stream=True, stream_options={"include_usage": True}, max_tokens=50
    )
    texts: list[str] = []
    usage = None
    finish = None
    async for chunk in stream:
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert len([t for t in texts if t]) > 1  # several content chunks, not one buffered answer
    assert "".join(texts).strip()
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 16 and usage.prompt_tokens > 0
    (request,) = await recorded(mock_url)
    assert request["body"]["stream"] is True and request["body"]["max_tokens"] == 50
    assert "stream_options" not in request["body"]


async def test_a_stream_without_include_usage_gets_no_usage_chunk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="claude-sonnet", messages=MSG, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()


async def test_a_tool_call_round_trip(client: openai.AsyncOpenAI, mock_url: str) -> None:
    first = await client.chat.completions.create(
        model="claude-sonnet", messages=MSG, tools=[WEATHER_TOOL], tool_choice="required"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"city": "mock"}
    followup: list[Any] = [
        *MSG,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    second = await client.chat.completions.create(model="claude-sonnet", messages=followup, tools=[WEATHER_TOOL])
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    sent = (await recorded(mock_url))[-1]["body"]
    assert sent["tools"][0]["name"] == "get_weather"
    assert sent["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]
    assistant, result = sent["messages"][1], sent["messages"][2]
    assert assistant["content"] == [
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "mock"}}
    ]
    assert result == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}],
    }


async def test_a_streamed_tool_call_arrives_as_tool_call_deltas(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="claude-sonnet", messages=MSG, tools=[WEATHER_TOOL], tool_choice="required", stream=True
    )
    arguments = ""
    names = []
    async for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            if call.function is not None:
                names.append(call.function.name)
                arguments += call.function.arguments or ""
    assert "get_weather" in names
    assert orjson.loads(arguments) == {"city": "mock"}


# -- limits and accounting ---------------------------------------------------------------


async def test_the_translated_usage_settles_the_token_reservation(client: openai.AsyncOpenAI, log_path: Path) -> None:
    first = await client.chat.completions.with_raw_response.create(model="claude-sonnet", messages=MSG)
    used = first.parse().usage
    assert used is not None
    await asyncio.sleep(0.3)  # settling runs just after each answer
    second = await client.chat.completions.with_raw_response.create(model="claude-sonnet", messages=MSG)
    remaining_first = int(first.headers["x-ratelimit-remaining-tokens"])
    remaining_second = int(second.headers["x-ratelimit-remaining-tokens"])
    assert BUDGET - remaining_first > used.total_tokens  # the reservation held more than was used
    assert remaining_first - remaining_second == used.total_tokens  # the first settled to the translated usage
    line = (await access_lines(log_path, 1))[0]
    assert (line["upstream"], line["usage_reported"]) == ("anthropic", True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (used.prompt_tokens, used.completion_tokens)


async def test_a_translated_streams_usage_settles_the_token_reservation(client: openai.AsyncOpenAI) -> None:
    async def streamed() -> tuple[int, int]:
        raw = await client.chat.completions.with_raw_response.create(
            model="claude-sonnet", messages=MSG, stream=True, stream_options={"include_usage": True}
        )
        total = 0
        async for chunk in raw.parse():
            if chunk.usage is not None:
                total = chunk.usage.total_tokens
        return int(raw.headers["x-ratelimit-remaining-tokens"]), total

    remaining_first, used = await streamed()
    await asyncio.sleep(0.3)
    remaining_second, _ = await streamed()
    assert used > 0
    assert remaining_first - remaining_second == used


async def test_a_token_budget_cuts_a_translated_stream(mock_url: str, log_path: Path) -> None:
    doc = config_doc(mock_url, log_path)
    doc["rules"] = {
        "tiny": {
            "type": "token_limit",
            "limit": 30,
            "per": "hour",
            "scope": ["tenant"],
            "attach": {"global": True},
        }
    }
    doc["admission"] = {"default_max_tokens": 1}
    async with gateway(doc) as (url, _state), aiohttp.ClientSession() as s:
        body = {"model": "claude-sonnet", "messages": MSG, "stream": True, "max_tokens": 1}
        headers = {"Authorization": f"Bearer {CLIENT_KEY}", "x-mock-completion-tokens": "200"}
        async with s.post(f"{url}/v1/chat/completions", json=body, headers=headers) as r:
            assert r.status == 200
            raw = await r.read()
    assert b"token_budget_exceeded" in raw
    assert not raw.endswith(b"data: [DONE]\n\n")


# -- errors, retries, fallbacks ------------------------------------------------------------


async def test_an_openai_deployment_down_before_its_first_byte_falls_back_to_the_anthropic_model(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MSG)
    assert raw.headers["x-tollgate-model"] == "claude-sonnet"
    assert raw.parse().choices[0].message.content
    requests = await recorded(mock_url)
    down, served = requests[:-1], requests[-1]
    assert down and all(r["path"] == "/v1/chat/completions" for r in down)
    assert served["path"] == "/v1/messages" and served["body"]["model"] == "claude-sonnet-4-5"
    assert header_values(served, "x-api-key") == [ANTHROPIC_KEY]


async def test_an_untranslatable_parameter_is_a_400_naming_it(client: openai.AsyncOpenAI, mock_url: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="claude-sonnet", messages=MSG, logprobs=True)
    assert caught.value.status_code == 400
    assert caught.value.param == "logprobs"
    assert caught.value.code == "unsupported_parameter"
    assert "logprobs" in caught.value.message
    assert await recorded(mock_url) == []  # nothing reached the upstream


async def test_embeddings_on_an_anthropic_model_are_a_400_naming_the_model(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model="claude-sonnet", input="hi")
    assert (caught.value.param, caught.value.code) == ("model", "unsupported_endpoint")
    assert await recorded(mock_url) == []


async def test_with_drop_unsupported_the_parameter_is_dropped(client: openai.AsyncOpenAI, mock_url: str) -> None:
    completion = await client.chat.completions.create(model="claude-lax", messages=MSG, logprobs=True)
    assert completion.choices[0].message.content
    (request,) = await recorded(mock_url)
    assert "logprobs" not in request["body"]


async def test_a_429_from_anthropic_is_retried_then_surfaces_as_the_sdks_rate_limit_error(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="claude-busy", messages=MSG)
    error = caught.value.body
    assert isinstance(error, dict) and error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    requests = await recorded(mock_url)
    assert len(requests) > 1  # the gateway retried before giving up
    assert all(r["path"] == "/v1/messages" for r in requests)


async def test_a_529_overloaded_is_retried_and_answered_503_in_openais_shape(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model="claude-sonnet", messages=MSG, extra_headers={"x-mock-status": "529"}
        )
    assert caught.value.status_code == 503
    body = caught.value.body
    assert isinstance(body, dict) and (body["type"], body["code"]) == ("server_error", "overloaded")
    assert len(await recorded(mock_url)) > 1


async def test_a_401_from_anthropic_is_the_gateways_auth_refusal_never_relayed_or_retried(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(
            model="claude-sonnet", messages=MSG, extra_headers={"x-mock-status": "401"}
        )
    assert caught.value.status_code == 502  # the upstream refused the gateway's key, not the client's
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "upstream_auth_error"
    assert "authentication_error" not in str(body)
    assert len(await recorded(mock_url)) == 1


async def test_an_error_event_mid_stream_ends_the_clients_stream_with_the_gateways_stream_error(
    client: openai.AsyncOpenAI,
) -> None:
    stream = await client.chat.completions.create(
        model="claude-sonnet", messages=MSG, stream=True, extra_headers={"x-mock-error-after": "5"}
    )
    texts = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts)  # the client had the start of the answer
    assert "upstream sent an error event: api_error" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "upstream_stream_error"


# -- built once, with the config -----------------------------------------------------------


def test_the_dialect_and_headers_are_built_once_per_upstream_and_openai_keeps_none() -> None:
    config = config_from_dict(config_doc("http://127.0.0.1:9", Path("/dev/null")), env={})
    anthropic = UpstreamClient(config.upstreams["anthropic"])
    assert anthropic.dialect is not None and anthropic.dialect.drop_unsupported is False
    assert ("x-api-key", ANTHROPIC_KEY) in anthropic.fixed_headers
    assert ("anthropic-version", "2023-06-01") in anthropic.fixed_headers
    assert not any(name.lower() == "authorization" for name, _ in anthropic.fixed_headers)
    assert UpstreamClient(config.upstreams["openai-down"]).dialect is None
    assert config.models["gpt-4o"].deployments[0].max_tokens is None
