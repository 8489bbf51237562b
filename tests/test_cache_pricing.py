"""Prompt-cache tokens billed at their own prices, from the upstream's usage to the money budget and the usage report.

The unit tests read usage as OpenAI and a translated Anthropic answer report it. The end-to-end
tests run a real gateway process (limits and usage in a real redis-server) in front of two small upstreams served by the test itself (the mock
upstream reports no cache tokens): an Anthropic Messages API and an OpenAI chat completions API,
each answering with a fixed usage that reads 4000 prompt tokens from the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tollgate.upstream.translate.vocabulary import anthropic_usage_to_openai
from tollgate.upstream.usage import Usage, usage_from_body, usage_from_json

from .support.processes import Proc, free_port, gateway_process
from .support.redis import RedisServer

# -- usage as the upstreams report it ----------------------------------------------------------


def test_openai_usage_with_cached_and_reasoning_details_is_read_into_its_parts() -> None:
    body = {
        "usage": {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 256, "audio_tokens": 0},
        }
    }
    assert usage_from_body(orjson.dumps(body)) == Usage(
        2006, 300, reported=True, cached_tokens=1920, cache_write_tokens=0, reasoning_tokens=256
    )


def test_translated_anthropic_usage_carries_cache_reads_and_writes_in_openai_terms() -> None:
    anthropic = {"input_tokens": 100, "cache_read_input_tokens": 4000, "cache_creation_input_tokens": 500}
    usage = usage_from_json({"usage": anthropic_usage_to_openai({**anthropic, "output_tokens": 20})})
    # prompt_tokens counts every input token, the cached ones included (OpenAI's convention)
    assert usage == Usage(4600, 20, reported=True, cached_tokens=4000, cache_write_tokens=500)


def test_usage_without_details_has_no_cache_or_reasoning_parts() -> None:
    assert usage_from_json({"usage": {"prompt_tokens": 10, "completion_tokens": 5}}) == Usage(10, 5, True)


@pytest.mark.parametrize(
    "details",
    [
        {"prompt_tokens_details": None, "completion_tokens_details": None},
        {"prompt_tokens_details": {"cached_tokens": None, "cache_creation_tokens": None}},
        {"prompt_tokens_details": {"cached_tokens": "7", "cache_creation_tokens": 1.5}},
        {"prompt_tokens_details": {"cached_tokens": -3}, "completion_tokens_details": {"reasoning_tokens": True}},
        {"prompt_tokens_details": [7], "completion_tokens_details": "many"},
    ],
)
def test_missing_null_or_malformed_details_are_ignored_never_raised(details: dict[str, Any]) -> None:
    usage = usage_from_json({"usage": {"prompt_tokens": 10, "completion_tokens": 5, **details}})
    assert usage == Usage(10, 5, True)


def test_parts_larger_than_their_whole_are_capped_to_it() -> None:
    usage = usage_from_json(
        {
            "usage": {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 8, "cache_creation_tokens": 8},
                "completion_tokens_details": {"reasoning_tokens": 9},
            }
        }
    )
    assert usage == Usage(10, 5, True, cached_tokens=8, cache_write_tokens=2, reasoning_tokens=5)


def test_usage_without_a_prompt_count_is_no_usage() -> None:
    assert usage_from_json({"usage": {"completion_tokens": 5}}) is None
    assert usage_from_json({"usage": {"prompt_tokens": None, "completion_tokens": 5}}) is None
    assert usage_from_json({"usage": {"prompt_tokens": -1, "completion_tokens": 5}}) is None
    assert usage_from_json({"usage": None}) is None and usage_from_json([1]) is None
    assert usage_from_body(b"not json") is None


# -- end to end ---------------------------------------------------------------------------------

KEY = "tg_cache-pricing-key-0123456789abcdefghijklmn"
ADMIN_TOKEN = "admin-token-for-the-cache-pricing-tests"
# Per token: 3000 nanos fresh prompt, 300 a cache read, 3750 a cache write, 15000 completion.
SONNET_PRICE = {
    "input_per_1k": 0.003,
    "output_per_1k": 0.015,
    "cached_input_per_1k": 0.0003,
    "cache_write_per_1k": 0.00375,
}
# The Anthropic upstream's usage: 100 fresh input tokens, 4000 read from the cache, 500 written to it, 20 out.
ANTHROPIC_USAGE = {"input_tokens": 100, "cache_read_input_tokens": 4000, "cache_creation_input_tokens": 500}
ANTHROPIC_COST = 100 * 3000 + 4000 * 300 + 500 * 3750 + 20 * 15000  # 3_675_000 nanos
# The OpenAI upstream's usage: 4600 prompt tokens, 4000 of them cached; 20 completion tokens, 12 of them reasoning.
OPENAI_USAGE = {
    "prompt_tokens": 4600,
    "completion_tokens": 20,
    "total_tokens": 4620,
    "prompt_tokens_details": {"cached_tokens": 4000},
    "completion_tokens_details": {"reasoning_tokens": 12},
}
OPENAI_COST = 600 * 3000 + 4000 * 300 + 20 * 15000  # 3_300_000 nanos


async def _messages(request: web.Request) -> web.StreamResponse:
    """Anthropic's Messages API, answering every request with the same text and ANTHROPIC_USAGE."""
    body = await request.json()
    message = {"id": "msg_cached", "type": "message", "role": "assistant", "model": body["model"]}
    if not body.get("stream"):
        done = {
            "content": [{"type": "text", "text": "from the cache"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {**ANTHROPIC_USAGE, "output_tokens": 20},
        }
        return web.json_response(message | done)
    start = {
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**ANTHROPIC_USAGE, "output_tokens": 1},
    }
    events = [
        ("message_start", {"type": "message_start", "message": message | start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "from"}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " the cache"}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 20}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for name, data in events:
        await response.write(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")
    await response.write_eof()
    return response


async def _chat(request: web.Request) -> web.Response:
    """OpenAI's chat completions, answering every request with the same text and OPENAI_USAGE."""
    body = await request.json()
    return web.json_response(
        {
            "id": "chatcmpl-cached",
            "object": "chat.completion",
            "created": 1,
            "model": body["model"],
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "from the cache"}, "finish_reason": "stop"}
            ],
            "usage": OPENAI_USAGE,
        }
    )


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/chat/completions", _chat)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _doc(upstream_url: str, log: Path, redis: RedisServer) -> dict[str, Any]:
    prefix = f"cache{time.monotonic_ns()}"
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": ADMIN_TOKEN}},
        "upstreams": {
            "anthropic": {"provider": "anthropic", "base_url": upstream_url, "api_key": "sk-ant-upstream-0123456789"},
            "openai": {"base_url": f"{upstream_url}/v1", "api_key": "sk-openai-upstream-0123456789"},
        },
        "models": {
            "claude-sonnet": {"deployments": [{"upstream": "anthropic", "model": "claude-sonnet-4-5"}]},
            "gpt-cached": {"deployments": [{"upstream": "openai"}]},
        },
        "identity": {"chain": ["api_key"]},
        "plans": {"open": {"monthly_requests": 1_000_000, "concurrency": 100}},
        "tenants": {
            "acme": {"plan": "open", "keys": [{"id": "acme-key", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]},
        },
        "rules": {
            "daily": {"type": "budget", "amount": 1.0, "per": "day", "scope": ["tenant"], "attach": {"global": True}}
        },
        "admission": {"default_max_tokens": 100},
        "pricing": {"currency": "USD", "models": {"claude-sonnet": SONNET_PRICE, "gpt-cached": SONNET_PRICE}},
        "store": {"backend": "redis", "url": redis.url, "key_prefix": prefix, "timeout": "5s"},
        "usage": {"backend": "redis", "url": redis.url, "key_prefix": prefix, "flush_interval": "100ms"},
        "access_log": {"path": str(log)},
    }


class _Admin:
    def __init__(self, session: aiohttp.ClientSession, proc: Proc) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{proc.extra_ports['admin']}"

    async def get(self, path: str, **params: str) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self.session.get(self.base + path, headers=headers, params=params) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def when(self, path: str, done: Any, timeout: float = 15.0, **params: str) -> Any:
        """The answer at ``path`` once ``done(answer)`` holds (settling and flushing run after the response)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = await self.get(path, **params)
            if done(answer) or time.monotonic() > deadline:
                return answer
            await asyncio.sleep(0.1)


async def _post(session: aiohttp.ClientSession, proc: Proc, body: dict[str, Any]) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with session.post(f"{proc.url}/v1/chat/completions", json=body, headers=headers) as r:
        return r.status, await r.read()


@pytest.mark.process
async def test_an_anthropic_answer_read_from_the_cache_is_billed_at_the_cached_price_end_to_end(
    upstream_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    log = tmp_path / "access.log"
    with gateway_process(_doc(upstream_url, log, redis)) as proc:
        async with aiohttp.ClientSession() as s:
            admin = _Admin(s, proc)
            status, raw = await _post(
                s, proc, {"model": "claude-sonnet", "messages": [{"role": "user", "content": "hi"}]}
            )
            assert status == 200, raw
            answer = orjson.loads(raw)
            assert answer["usage"]["prompt_tokens"] == 4600
            assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 4000
            budget = await admin.when(
                "/admin/rules/daily/counter", lambda c: c["used"] == ANTHROPIC_COST, tenant="acme"
            )
            usage = await admin.when("/admin/tenants/acme/usage", lambda u: u["requests"] == 1)
            prices = await admin.get("/admin/pricing")
    # The money budget holds the real cost: 3.675 milli-dollars, where 4600 tokens at the input price are 14.1.
    assert budget["unit"] == "nanos" and budget["used"] == ANTHROPIC_COST
    assert usage["prompt_tokens"] == 4600 and usage["completion_tokens"] == 20
    assert usage["cached_tokens"] == 4000 and usage["cache_write_tokens"] == 500
    assert usage["cost"] == pytest.approx(ANTHROPIC_COST / 1e9, abs=1e-12)
    model = usage["by_model"]["claude-sonnet"]
    assert model["cached_tokens"] == 4000 and model["cache_write_tokens"] == 500
    assert prices["models"]["claude-sonnet"] == SONNET_PRICE
    (line,) = map(orjson.loads, log.read_bytes().splitlines())
    assert line["cached_tokens"] == 4000 and line["cache_write_tokens"] == 500
    assert line["cost"] == pytest.approx(ANTHROPIC_COST / 1e9, abs=1e-12)


@pytest.mark.process
async def test_a_streamed_anthropic_answer_is_billed_at_the_cached_price(
    upstream_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    body = {
        "model": "claude-sonnet",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with gateway_process(_doc(upstream_url, tmp_path / "access.log", redis)) as proc:
        async with aiohttp.ClientSession() as s:
            admin = _Admin(s, proc)
            status, raw = await _post(s, proc, body)
            assert status == 200 and raw.rstrip().endswith(b"data: [DONE]"), raw
            budget = await admin.when(
                "/admin/rules/daily/counter", lambda c: c["used"] == ANTHROPIC_COST, tenant="acme"
            )
            usage = await admin.when("/admin/tenants/acme/usage", lambda u: u["requests"] == 1)
    assert budget["used"] == ANTHROPIC_COST
    assert usage["cached_tokens"] == 4000 and usage["cache_write_tokens"] == 500
    assert usage["cost"] == pytest.approx(ANTHROPIC_COST / 1e9, abs=1e-12)


@pytest.mark.process
async def test_an_openai_answer_with_cached_tokens_is_billed_at_the_cached_price_end_to_end(
    upstream_url: str, tmp_path: Path, redis: RedisServer
) -> None:
    log = tmp_path / "access.log"
    with gateway_process(_doc(upstream_url, log, redis)) as proc:
        async with aiohttp.ClientSession() as s:
            admin = _Admin(s, proc)
            for _ in range(2):
                status, raw = await _post(
                    s, proc, {"model": "gpt-cached", "messages": [{"role": "user", "content": "hi"}]}
                )
                assert status == 200, raw
            budget = await admin.when(
                "/admin/rules/daily/counter", lambda c: c["used"] == 2 * OPENAI_COST, tenant="acme"
            )
            usage = await admin.when("/admin/tenants/acme/usage", lambda u: u["requests"] == 2)
    assert budget["used"] == 2 * OPENAI_COST
    assert usage["cached_tokens"] == 8000 and usage["cache_write_tokens"] == 0
    assert usage["cost"] == pytest.approx(2 * OPENAI_COST / 1e9, abs=1e-12)
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [line["cached_tokens"] for line in lines] == [4000, 4000]
    assert all(line["reasoning_tokens"] == 12 and "cache_write_tokens" not in line for line in lines)
