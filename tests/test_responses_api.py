"""OpenAI's Responses API through the gateway: the official ``openai`` SDK against ``/v1/responses``.

The gateway runs in-process in front of two in-process mocks (two upstreams, so a stored response
must be found on the one that created it). Limits, reservation and settlement read the Responses
API's usage; stored responses are fetched, continued and deleted through the gateway's ids.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tollgate.mock.upstream import MockSettings, make_mock_app
from tollgate.upstream.response_ids import gateway_id, stored_response

from .resilience.helpers import gateway
from .support.upstream_log import access_lines, recorded

KEYS = {"acme": "tg_responses_acme_0123456789abcdef", "globex": "tg_responses_globex_0123456789abcdef"}
BUDGET = 1_000_000
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

MakeServer = Callable[..., Awaitable[TestServer]]


def config_doc(first: str, second: str, log: Path, rules: dict[str, Any] | None = None) -> dict[str, Any]:
    steer = {"forward_headers": ["x-mock-*"]}
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "identity": {"chain": ["api_key"]},
        "plans": {"open": {"monthly_requests": 10_000_000, "concurrency": 10_000}},
        "tenants": {
            tenant: {
                "plan": "open",
                "keys": [{"id": f"{tenant}-1", "sha256": hashlib.sha256(key.encode()).hexdigest()}],
            }
            for tenant, key in KEYS.items()
        },
        "upstreams": {
            "east": {"base_url": f"{first}/v1", "api_key": "sk-east-0123456789", **steer},
            "west": {"base_url": f"{second}/v1", "api_key": "sk-west-0123456789", **steer},
        },
        # Turns over two upstreams: a stored response is on one of them only.
        "models": {
            "gpt-4.1": {
                "deployments": [{"upstream": "east"}, {"upstream": "west"}],
                "strategy": "weighted_round_robin",
            },
            "o4-mini": {"deployments": [{"upstream": "east"}]},
        },
        "rules": rules
        or {
            "tph": {
                "type": "token_limit",
                "limit": BUDGET,
                "per": "hour",
                "scope": ["tenant"],
                "attach": {"global": True},
            }
        },
        "access_log": {"path": str(log)},
    }


@pytest.fixture
async def mocks(aiohttp_server: MakeServer) -> tuple[str, str]:
    first = await aiohttp_server(make_mock_app(MockSettings()))
    second = await aiohttp_server(make_mock_app(MockSettings()))
    return f"http://127.0.0.1:{first.port}", f"http://127.0.0.1:{second.port}"


@pytest.fixture
async def url(mocks: tuple[str, str], log_path: Path) -> AsyncIterator[str]:
    async with gateway(config_doc(*mocks, log_path)) as (gateway_url, _state):
        yield gateway_url


def sdk(url: str, tenant: str = "acme") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEYS[tenant], max_retries=0)


async def test_a_response_is_served_with_its_usage_and_a_gateway_id_naming_its_upstream(
    url: str, mocks: tuple[str, str], log_path: Path
) -> None:
    async with sdk(url) as client:
        response = await client.responses.create(model="gpt-4.1", input="hello there")
    assert response.status == "completed" and response.output_text
    assert response.usage is not None and response.usage.output_tokens == 16
    ref = stored_response(response.id)
    assert ref is not None and ref.tenant == "acme" and ref.upstream in ("east", "west")
    (sent,) = await recorded(mocks[0] if ref.upstream == "east" else mocks[1])
    assert sent["path"] == "/v1/responses" and sent["body"]["input"] == "hello there"
    line = (await access_lines(log_path, 1))[0]
    assert (line["endpoint"], line["usage_reported"], line["completion_tokens"]) == ("responses", True, 16)


async def test_a_stream_relays_the_responses_events_and_settles_the_reservation_to_its_usage(url: str) -> None:
    async with sdk(url) as client:

        async def streamed() -> tuple[int, list[str], Any]:
            raw = await client.responses.with_raw_response.create(model="gpt-4.1", input="hi", stream=True)
            kinds: list[str] = []
            final = None
            async for event in raw.parse():
                kinds.append(event.type)
                if event.type == "response.completed":
                    final = event.response
            return int(raw.headers["x-ratelimit-remaining-tokens"]), kinds, final

        remaining_first, kinds, final = await streamed()
        await asyncio.sleep(0.3)  # settling runs just after each answer
        remaining_second, _, _ = await streamed()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") > 1
    assert final is not None and final.usage is not None and stored_response(final.id) is not None
    used = final.usage.input_tokens + final.usage.output_tokens
    assert BUDGET - remaining_first > used  # the reservation held the default completion cap
    assert remaining_first - remaining_second == used


async def test_reasoning_tokens_are_part_of_the_settled_output(url: str, log_path: Path) -> None:
    async with sdk(url) as client:
        response = await client.responses.create(model="o4-mini", input="think", reasoning={"effort": "low"})
    assert response.usage is not None and response.usage.output_tokens_details.reasoning_tokens == 16
    line = (await access_lines(log_path, 1))[0]
    assert line["reasoning_tokens"] == 16 and line["completion_tokens"] == response.usage.output_tokens


async def test_a_stored_response_is_fetched_continued_and_deleted_on_the_upstream_that_stores_it(
    url: str, mocks: tuple[str, str]
) -> None:
    async with sdk(url) as client:
        first = await client.responses.create(model="gpt-4.1", input="remember this")
        ref = stored_response(first.id)
        assert ref is not None
        for _ in range(3):  # round robin would take the next request elsewhere; previous_response_id pins it
            followup = await client.responses.create(model="gpt-4.1", input="and then?", previous_response_id=first.id)
            assert followup.previous_response_id == first.id
            assert stored_response(followup.id).upstream == ref.upstream  # type: ignore[union-attr]
        fetched = await client.responses.retrieve(first.id)
        assert fetched.id == first.id and fetched.output_text == first.output_text
        await client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(first.id)
    holder = mocks[0] if ref.upstream == "east" else mocks[1]
    other = mocks[1] if ref.upstream == "east" else mocks[0]
    continued = [r for r in await recorded(holder) if r["method"] == "POST" and r["body"].get("previous_response_id")]
    assert len(continued) == 3 and all(r["body"]["previous_response_id"] == ref.id for r in continued)
    assert not any(r["body"].get("previous_response_id") for r in await recorded(other) if r["method"] == "POST")


async def test_another_tenant_cannot_read_or_continue_a_stored_response(url: str) -> None:
    async with sdk(url) as acme, sdk(url, "globex") as globex:
        response = await acme.responses.create(model="gpt-4.1", input="secret")
        with pytest.raises(openai.NotFoundError):
            await globex.responses.retrieve(response.id)
        with pytest.raises(openai.BadRequestError) as caught:
            await globex.responses.create(model="gpt-4.1", input="more", previous_response_id=response.id)
        assert caught.value.code == "previous_response_not_found"
        with pytest.raises(openai.NotFoundError):  # an id the gateway never gave
            await acme.responses.retrieve("resp_made_up")
        ref = stored_response(response.id)
        assert ref is not None
        forged = gateway_id("nowhere", "acme", ref.id)
        with pytest.raises(openai.NotFoundError):
            await acme.responses.retrieve(forged)


async def test_a_streamed_function_call_and_its_arguments(url: str) -> None:
    async with sdk(url) as client:
        stream = await client.responses.create(
            model="gpt-4.1", input="weather?", tools=[WEATHER], tool_choice="required", stream=True
        )
        arguments = ""
        async for event in stream:
            if event.type == "response.function_call_arguments.delta":
                arguments += event.delta
    assert orjson.loads(arguments) == {"city": "mock"}


async def test_a_token_budget_cuts_a_responses_stream_with_an_error_event(
    mocks: tuple[str, str], log_path: Path
) -> None:
    rules = {
        "tiny": {"type": "token_limit", "limit": 40, "per": "hour", "scope": ["tenant"], "attach": {"global": True}}
    }
    async with gateway(config_doc(*mocks, log_path, rules)) as (url, _state), aiohttp.ClientSession() as s:
        body = {"model": "gpt-4.1", "input": "hi", "stream": True, "max_output_tokens": 1}
        headers = {"Authorization": f"Bearer {KEYS['acme']}", "x-mock-completion-tokens": "300"}
        async with s.post(f"{url}/v1/responses", json=body, headers=headers) as r:
            assert r.status == 200
            raw = await r.read()
    assert b"response.output_text.delta" in raw
    error = orjson.loads(raw.rsplit(b"event: error\ndata: ", 1)[1])
    assert (error["type"], error["code"]) == ("error", "token_budget_exceeded")
    assert b"response.completed" not in raw


async def test_azure_serves_the_responses_api_on_its_v1_path_and_an_anthropic_model_refuses_it(
    mocks: tuple[str, str], log_path: Path
) -> None:
    doc = config_doc(*mocks, log_path)
    doc["upstreams"]["azure-v1"] = {"provider": "azure", "base_url": mocks[0], "api_key": "azure-key-0123456789"}
    doc["upstreams"]["azure-dated"] = {**doc["upstreams"]["azure-v1"], "api_version": "2024-10-21"}
    doc["upstreams"]["claude"] = {"provider": "anthropic", "base_url": mocks[0], "api_key": "sk-ant-0123456789"}
    doc["models"].update(
        {
            "gpt-azure": {"deployments": [{"upstream": "azure-v1", "azure_deployment": "my-gpt"}]},
            "gpt-dated": {"deployments": [{"upstream": "azure-dated"}]},
            "claude-sonnet": {"deployments": [{"upstream": "claude"}]},
        }
    )
    async with gateway(doc) as (url, _state), sdk(url) as client:
        response = await client.responses.create(model="gpt-azure", input="hi")
        assert stored_response(response.id).upstream == "azure-v1"  # type: ignore[union-attr]
        fetched = await client.responses.retrieve(response.id)
        assert fetched.id == response.id
        for model in ("gpt-dated", "claude-sonnet"):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.responses.create(model=model, input="hi")
            assert (caught.value.code, caught.value.param) == ("unsupported_endpoint", "model")
    posted = [r for r in await recorded(mocks[0]) if r["method"] == "POST"]
    assert [(r["path"], r["body"]["model"]) for r in posted] == [("/openai/v1/responses", "my-gpt")]
    fetched_path = [r["path"] for r in await recorded(mocks[0]) if r["method"] == "GET"]
    assert fetched_path == [f"/openai/v1/responses/{stored_response(response.id).id}"]  # type: ignore[union-attr]
