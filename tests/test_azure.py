"""Azure OpenAI as an upstream: its paths, api-version and api-key on the wire, limits and accounting, fallbacks.

The gateway runs in-process (tests/resilience/helpers.py) in front of the mock
upstream, also in-process, started with an expected Azure key: a request that
reached an Azure route at all carried the gateway's key in ``api-key``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict, CIMultiDictProxy

from tollgate.config import config_from_dict
from tollgate.config.upstreams import AZURE_V1_ONLY
from tollgate.mock.azure import AZURE_API_KEY
from tollgate.mock.upstream import MockSettings, make_mock_app
from tollgate.pipeline.context import ENDPOINTS
from tollgate.upstream.pool import UpstreamClient, upstream_headers

from .resilience.helpers import gateway
from .support.upstream_log import access_lines, header_values, recorded

AZURE_KEY = "azure-resource-key-0123456789"
OPENAI_KEY = "sk-openai-upstream-0123456789"
API_VERSION = "2024-10-21"
MSG = [{"role": "user", "content": "hello there"}]
BUDGET = 1_000_000
DEFAULT_MAX_TOKENS = 500
# What a tenant sends beside its request: its own credentials, mock fault knobs, a provider's account header.
CLIENT_HEADERS = {
    "Authorization": "Bearer tg-client-key",
    "api-key": "tenant-azure-key",
    "x-mock-latency-ms": "0",
    "OpenAI-Organization": "org-of-the-tenant",
}
PRICES = {"gpt-4o": {"input_per_1k": 2.5, "output_per_1k": 10.0}}

MakeServer = Callable[..., Awaitable[TestServer]]


def config_doc(mock_url: str, log: Path) -> dict[str, Any]:
    azure = {"provider": "azure", "base_url": mock_url, "api_key": AZURE_KEY}
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "upstreams": {
            "azure": {**azure, "api_version": API_VERSION},
            "azure-v1": azure,
            # Answers 503 to everything: the mock reads the knob from the header this upstream always sends.
            "azure-down": {**azure, "api_version": API_VERSION, "headers": {"x-mock-status": "503"}},
            "openai": {"base_url": f"{mock_url}/v1", "api_key": OPENAI_KEY},
        },
        "models": {
            "gpt-4o": {"deployments": [{"upstream": "azure", "azure_deployment": "my-gpt4o"}]},
            "gpt-4o-v1": {"deployments": [{"upstream": "azure-v1", "azure_deployment": "my-gpt4o"}]},
            "text-embedding-3-small": {"deployments": [{"upstream": "azure", "azure_deployment": "my-embeddings"}]},
            "gpt-4o-east": {
                "deployments": [{"upstream": "azure-down", "azure_deployment": "east"}],
                "fallbacks": ["gpt-4o-mini"],
            },
            "gpt-4o-mini": {"deployments": [{"upstream": "openai"}]},
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
        "pricing": {"currency": "USD", "models": PRICES},
        "access_log": {"path": str(log)},
        "usage": {"flush_interval": "100ms"},
        "resilience": {"retries": {"backoff_base": "1ms", "backoff_cap": "5ms"}},
    }


@pytest.fixture
async def mock_url(aiohttp_server: MakeServer) -> str:
    app = make_mock_app(MockSettings())
    app[AZURE_API_KEY] = AZURE_KEY
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
async def gw(mock_url: str, log_path: Path) -> AsyncIterator[str]:
    async with gateway(config_doc(mock_url, log_path)) as (url, _state):
        yield url


async def clear(mock_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        await (await s.delete(f"{mock_url}/_mock/requests")).read()


def assert_sent_as_azure(request: dict[str, Any]) -> None:
    """The gateway's key in api-key, once; nothing of the tenant's credentials, knobs or account headers."""
    assert header_values(request, "api-key") == [AZURE_KEY]
    assert header_values(request, "authorization") == []
    assert header_values(request, "x-mock-latency-ms") == []
    assert header_values(request, "openai-organization") == []


async def post(
    s: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, str], bytes]:
    async with s.post(f"{url}{path}", json=body, headers=CLIENT_HEADERS) as r:
        return r.status, dict(r.headers), await r.read()


def stream_usage(raw: bytes) -> dict[str, Any]:
    events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
    return dict(events[-1]["usage"])


# -- on the wire --------------------------------------------------------------------


async def test_chat_goes_to_the_deployment_url_with_the_api_version_and_the_gateways_api_key(
    gw: str, mock_url: str
) -> None:
    async with aiohttp.ClientSession() as s:
        status, headers, body = await post(s, gw, "/v1/chat/completions", {"model": "gpt-4o", "messages": MSG})
    assert status == 200, body
    assert headers["x-tollgate-model"] == "gpt-4o"
    assert orjson.loads(body)["choices"][0]["message"]["content"]
    (request,) = await recorded(mock_url)
    assert request["path"] == "/openai/deployments/my-gpt4o/chat/completions"
    assert request["query"] == f"api-version={API_VERSION}"
    assert_sent_as_azure(request)


async def test_a_chat_stream_goes_to_the_deployment_url_and_is_relayed_to_its_end(gw: str, mock_url: str) -> None:
    body = {"model": "gpt-4o", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as s:
        status, headers, raw = await post(s, gw, "/v1/chat/completions", body)
    assert status == 200
    assert headers["Content-Type"] == "text/event-stream"
    assert raw.endswith(b"data: [DONE]\n\n")
    assert stream_usage(raw)["completion_tokens"] == 16
    (request,) = await recorded(mock_url)
    assert request["path"] == "/openai/deployments/my-gpt4o/chat/completions"
    assert request["query"] == f"api-version={API_VERSION}"
    assert request["body"]["stream"] is True
    assert_sent_as_azure(request)


async def test_embeddings_go_to_the_embedding_deployment(gw: str, mock_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        status, _, body = await post(s, gw, "/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"})
    assert status == 200, body
    assert orjson.loads(body)["data"][0]["object"] == "embedding"
    (request,) = await recorded(mock_url)
    assert request["path"] == "/openai/deployments/my-embeddings/embeddings"
    assert request["query"] == f"api-version={API_VERSION}"
    assert_sent_as_azure(request)


async def test_without_api_version_the_v1_api_gets_the_deployment_as_the_bodys_model(gw: str, mock_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        status, headers, body = await post(s, gw, "/v1/chat/completions", {"model": "gpt-4o-v1", "messages": MSG})
    assert status == 200, body
    assert headers["x-tollgate-model"] == "gpt-4o-v1"
    (request,) = await recorded(mock_url)
    assert request["path"] == "/openai/v1/chat/completions"
    assert request["query"] == ""
    assert request["body"]["model"] == "my-gpt4o"
    assert_sent_as_azure(request)


# -- limits and accounting ------------------------------------------------------------


async def test_azure_usage_settles_the_token_reservation_and_is_billed_like_openais(
    gw: str, mock_url: str, log_path: Path
) -> None:
    body = {"model": "gpt-4o", "messages": MSG}  # no max_tokens: the reservation holds DEFAULT_MAX_TOKENS
    async with aiohttp.ClientSession() as s:
        status, first, raw = await post(s, gw, "/v1/chat/completions", body)
        assert status == 200
        used = orjson.loads(raw)["usage"]
        await asyncio.sleep(0.3)  # settling runs just after each answer
        status, second, _ = await post(s, gw, "/v1/chat/completions", body)
        assert status == 200
    reserved = BUDGET - int(first["x-ratelimit-remaining-tokens"])
    assert reserved > DEFAULT_MAX_TOKENS > used["total_tokens"]
    # The second request reserves as much as the first did; the first now counts only what it used.
    assert (
        int(first["x-ratelimit-remaining-tokens"]) - int(second["x-ratelimit-remaining-tokens"]) == used["total_tokens"]
    )
    line = (await access_lines(log_path, 1))[0]
    assert (line["model_served"], line["upstream"], line["usage_reported"]) == ("gpt-4o", "azure", True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (used["prompt_tokens"], used["completion_tokens"])
    price = PRICES["gpt-4o"]
    expected = (
        used["prompt_tokens"] * price["input_per_1k"] + used["completion_tokens"] * price["output_per_1k"]
    ) / 1000
    assert line["cost"] == pytest.approx(expected)


async def test_a_streams_usage_settles_the_token_reservation(gw: str, mock_url: str) -> None:
    body = {"model": "gpt-4o", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    async with aiohttp.ClientSession() as s:
        status, first, raw = await post(s, gw, "/v1/chat/completions", body)
        assert status == 200
        used = stream_usage(raw)
        await asyncio.sleep(0.3)
        status, second, _ = await post(s, gw, "/v1/chat/completions", body)
        assert status == 200
    assert BUDGET - int(first["x-ratelimit-remaining-tokens"]) > used["total_tokens"]
    assert (
        int(first["x-ratelimit-remaining-tokens"]) - int(second["x-ratelimit-remaining-tokens"]) == used["total_tokens"]
    )


# -- fallbacks ------------------------------------------------------------------------


async def test_an_azure_deployment_failing_before_the_first_byte_falls_back_to_an_openai_model(
    gw: str, mock_url: str, log_path: Path
) -> None:
    async with aiohttp.ClientSession() as s:
        status, headers, body = await post(s, gw, "/v1/chat/completions", {"model": "gpt-4o-east", "messages": MSG})
    assert status == 200, body
    assert headers["x-tollgate-model"] == "gpt-4o-mini"
    requests = await recorded(mock_url)
    azure, openai = requests[:-1], requests[-1]
    assert azure and all(r["path"] == "/openai/deployments/east/chat/completions" for r in azure)
    assert all(r["query"] == f"api-version={API_VERSION}" for r in azure)
    for r in azure:
        assert_sent_as_azure(r)
    assert openai["path"] == "/v1/chat/completions" and openai["query"] == ""
    assert openai["body"]["model"] == "gpt-4o-mini"
    assert header_values(openai, "authorization") == [f"Bearer {OPENAI_KEY}"]
    assert header_values(openai, "api-key") == []
    line = (await access_lines(log_path, 1))[0]
    assert (line["model"], line["model_served"], line["upstream"]) == ("gpt-4o-east", "gpt-4o-mini", "openai")
    assert line["attempts"] == len(requests)


# -- built once, with the config ------------------------------------------------------


def test_paths_and_headers_are_built_with_the_config_and_openai_deployments_keep_the_endpoints_path() -> None:
    config = config_from_dict(config_doc("http://127.0.0.1:9", Path("/dev/null")), env={})
    assert config.models["gpt-4o-mini"].deployments[0].paths is None
    azure_paths = config.models["gpt-4o"].deployments[0].paths
    assert azure_paths is not None
    # Every endpoint the gateway proxies has its Azure path, but moderations (Azure has none: a 400 per request)
    # and those Azure serves under its v1 API only.
    wanted = {e.upstream_suffix for e in ENDPOINTS.values() if e.kind != "moderation"} - AZURE_V1_ONLY
    assert wanted <= set(azure_paths)
    assert "/moderations" not in azure_paths and not AZURE_V1_ONLY & set(azure_paths)
    client = UpstreamClient(config.upstreams["azure"])
    assert ("api-key", AZURE_KEY) in client.fixed_headers
    sent = upstream_headers(client, CIMultiDictProxy(CIMultiDict(CLIENT_HEADERS)), "198.51.100.7", "req-1")
    assert [v for k, v in sent if k.lower() == "api-key"] == [AZURE_KEY]
    assert not [k for k, _ in sent if k.lower() in ("authorization", "x-mock-latency-ms", "openai-organization")]


# -- the mock's Azure front -----------------------------------------------------------


@pytest.fixture
async def azure_mock(aiohttp_server: MakeServer) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    app: web.Application = make_mock_app(MockSettings())
    app[AZURE_API_KEY] = AZURE_KEY
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as s:
        yield s, f"http://127.0.0.1:{server.port}"


CHAT = {"model": "gpt-4o", "messages": MSG}


async def test_the_mock_refuses_a_deployment_url_without_api_version_in_azures_error_shape(
    azure_mock: tuple[aiohttp.ClientSession, str],
) -> None:
    s, url = azure_mock
    for query, code in (("", "MissingApiVersionParameter"), ("?api-version=latest", "InvalidApiVersionParameter")):
        async with s.post(
            f"{url}/openai/deployments/d/chat/completions{query}", json=CHAT, headers={"api-key": AZURE_KEY}
        ) as r:
            assert r.status == 400
            error = (await r.json())["error"]
            assert error["code"] == code and set(error) == {"code", "message"}


async def test_the_mock_requires_its_expected_api_key(azure_mock: tuple[aiohttp.ClientSession, str]) -> None:
    s, url = azure_mock
    path = f"{url}/openai/deployments/d/chat/completions?api-version={API_VERSION}"
    for headers in ({}, {"api-key": "wrong"}, {"Authorization": f"Bearer {AZURE_KEY}"}):
        async with s.post(path, json=CHAT, headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["error"]["code"] == "401"
    async with s.post(path, json=CHAT, headers={"api-key": AZURE_KEY}) as r:
        assert r.status == 200


async def test_the_mock_serves_every_azure_path_and_records_path_query_and_headers(
    azure_mock: tuple[aiohttp.ClientSession, str],
) -> None:
    s, url = azure_mock
    bodies = {
        "chat/completions": CHAT,
        "completions": {"model": "m", "prompt": "hi"},
        "embeddings": {"model": "m", "input": "hi"},
    }
    calls = []
    for api, body in bodies.items():
        calls += [
            (f"/openai/deployments/dep/{api}", f"api-version={API_VERSION}", body),
            (f"/openai/v1/{api}", "", body),
        ]
    for path, query, body in calls:
        target = f"{url}{path}?{query}" if query else f"{url}{path}"
        async with s.post(target, json=body, headers={"api-key": AZURE_KEY}) as r:
            assert r.status == 200, await r.text()
    async with s.get(f"{url}/_mock/requests") as r:
        requests = (await r.json())["requests"]
    assert [(q["path"], q["query"]) for q in requests] == [(path, query) for path, query, _ in calls]
    assert all(["api-key", AZURE_KEY] in q["headers"] for q in requests)
