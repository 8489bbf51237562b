"""The response cache end to end in one in-process gateway (embedded store, injectable clock) before the mock upstream.

Each test names what it proves: hits and misses per route, byte-equal stream replay, the shapes kept apart, tenant
isolation, TTL expiry, the bypass and opt-in headers, what is never stored, a hit with the upstream stopped, limits
and budgets, and what usage and metrics show.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from tollgate.accounting.access_log import line_of
from tollgate.accounting.aggregates import cache_savings, month_of
from tollgate.accounting.pricing import Pricing
from tollgate.accounting.records import Entry, fields_of
from tollgate.accounting.spend_log import spend_row
from tollgate.clock import ManualClock
from tollgate.config import config_from_dict
from tollgate.config.accounting import Price, PricingConfig
from tollgate.database.spend import SPEND_COLUMNS
from tollgate.errors import ConfigError
from tollgate.mock.upstream import MockSettings, start_mock
from tollgate.pipeline.cache import cache_key
from tollgate.policy.response_cache import CACHE_HEADER, CacheHit
from tollgate.runtime.state import GatewayState

from ..resilience.helpers import gateway

ACME_KEY = "sk-acme-response-cache-test-000000001"
GLOBEX_KEY = "sk-globex-response-cache-test-0000001"
MSG = [{"role": "user", "content": "say something"}]


class Mock:
    """The mock upstream on a real port, that a test can stop."""

    def __init__(self) -> None:
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        self.runner, port = await start_mock("127.0.0.1", 0, MockSettings())
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def calls(self, path: str) -> int:
        async with aiohttp.ClientSession() as s, s.get(f"{self.url}/_mock/requests") as r:
            data = await r.json()
        return sum(1 for req in data["requests"] if req["path"] == path)


@pytest.fixture
async def mock() -> AsyncIterator[Mock]:
    m = Mock()
    await m.start()
    yield m
    await m.stop()


def doc(mock: Mock, cache: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "upstreams": {"mock": {"base_url": f"{mock.url}/v1", "forward_headers": ["x-mock-*"]}},
        "models": {
            "gpt-4o-mini": {"deployments": [{"upstream": "mock"}]},
            "text-embedding-3-small": {"deployments": [{"upstream": "mock"}]},
        },
        "tenants": {
            "acme": {"plan": "enterprise", "keys": [{"id": "acme-1", "key": ACME_KEY}]},
            "globex": {"plan": "enterprise", "keys": [{"id": "globex-1", "key": GLOBEX_KEY}]},
        },
        "cache": {"enabled": True, **(cache or {})},
        **extra,
    }


Post = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]


def poster(session: aiohttp.ClientSession, url: str) -> Post:
    async def post(
        path: str, body: dict[str, Any], key: str = ACME_KEY, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        sent = {"Authorization": f"Bearer {key}", **{k.replace("_", "-"): v for k, v in headers.items()}}
        async with session.post(f"{url}{path}", json=body, headers=sent) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()

    return post


CHAT = {"model": "gpt-4o-mini", "messages": MSG, "temperature": 0, "max_tokens": 12}
ROUTES = [
    ("/v1/chat/completions", CHAT),
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "say something", "temperature": 0, "max_tokens": 12}),
    ("/v1/messages", {"model": "gpt-4o-mini", "messages": MSG, "temperature": 0, "max_tokens": 12}),
    ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "say something"}),
]


@pytest.mark.parametrize(("path", "body"), ROUTES, ids=[p for p, _ in ROUTES])
async def test_each_route_misses_then_hits_with_the_same_body_and_no_second_upstream_call(
    mock: Mock, path: str, body: dict[str, Any]
) -> None:
    upstream_path = "/v1/chat/completions" if path == "/v1/messages" else path
    async with gateway(doc(mock)) as (url, _state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        status, first_headers, first = await post(path, body)
        assert status == 200 and first_headers[CACHE_HEADER] == "miss"
        status, headers, second = await post(path, body)
        assert status == 200 and headers[CACHE_HEADER] == "hit"
        assert second == first
        assert headers["x-request-id"] != first_headers["x-request-id"]  # the request's own id in the headers
        assert headers["content-type"].startswith("application/json")
    assert await mock.calls(upstream_path) == 1


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_streamed_hit_replays_the_first_stream_byte_for_byte(mock: Mock, path: str) -> None:
    body = {**CHAT, "stream": True}
    async with gateway(doc(mock)) as (url, _state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        _, first_headers, first = await post(path, body)
        status, headers, second = await post(path, body)
    assert first_headers[CACHE_HEADER] == "miss" and headers[CACHE_HEADER] == "hit"
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert second == first
    assert first.count(b"data: ") > 3  # several events, not one blob of JSON
    assert await mock.calls("/v1/chat/completions") == 1


async def test_a_streamed_and_a_plain_request_each_get_an_answer_in_their_own_shape(mock: Mock) -> None:
    async with gateway(doc(mock)) as (url, _state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        await post("/v1/chat/completions", {**CHAT, "stream": True})
        _, plain_headers, plain = await post("/v1/chat/completions", CHAT)
        _, again_headers, again = await post("/v1/chat/completions", {**CHAT, "stream": True})
    assert plain_headers[CACHE_HEADER] == "miss" and orjson.loads(plain)["object"] == "chat.completion"
    assert again_headers[CACHE_HEADER] == "hit" and again.startswith(b"data: ")


async def test_framing_parameters_and_key_order_do_not_change_the_key() -> None:
    a = cache_key("/v1/chat/completions", {"model": "m", "temperature": 0, "messages": MSG}, "json")
    b = cache_key("/v1/chat/completions", {"messages": MSG, "user": "u1", "model": "m", "temperature": 0}, "json")
    assert a == b
    assert a != cache_key("/v1/chat/completions", {"model": "m", "temperature": 0, "messages": MSG, "seed": 1}, "json")
    assert a != cache_key("/v1/chat/completions", {"model": "m", "temperature": 0, "messages": MSG}, "sse")
    assert a != cache_key("/v1/completions", {"model": "m", "temperature": 0, "messages": MSG}, "json")


async def test_one_tenants_answer_never_answers_another_tenant_unless_shared(mock: Mock) -> None:
    async with gateway(doc(mock)) as (url, _state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        await post("/v1/chat/completions", CHAT)
        _, headers, _ = await post("/v1/chat/completions", CHAT, key=GLOBEX_KEY)
        assert headers[CACHE_HEADER] == "miss"
    async with gateway(doc(mock, {"shared_across_tenants": True})) as (url, _state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        await post("/v1/chat/completions", CHAT)
        _, headers, _ = await post("/v1/chat/completions", CHAT, key=GLOBEX_KEY)
        assert headers[CACHE_HEADER] == "hit"


async def test_an_entry_expires_at_its_ttl_on_the_injected_clock_model_ttl_first(mock: Mock) -> None:
    clock = ManualClock(time.time())
    config = doc(mock, {"ttl": "60s", "model_ttl": {"text-embedding-3-small": "10s"}})
    embedding = {"model": "text-embedding-3-small", "input": "x"}
    async with gateway(config, clock) as (url, _state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        await post("/v1/chat/completions", CHAT)
        await post("/v1/embeddings", embedding)
        clock.advance(30)
        assert (await post("/v1/chat/completions", CHAT))[1][CACHE_HEADER] == "hit"
        assert (await post("/v1/embeddings", embedding))[1][CACHE_HEADER] == "miss"  # its model's 10 s are over
        clock.advance(31)
        assert (await post("/v1/chat/completions", CHAT))[1][CACHE_HEADER] == "miss"


async def test_no_store_neither_reads_nor_writes_and_use_opts_in_a_sampled_request(mock: Mock) -> None:
    sampled = {**CHAT, "temperature": 0.7}
    async with gateway(doc(mock)) as (url, state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        _, headers, _ = await post("/v1/chat/completions", CHAT, x_tollgate_cache="no-store")
        assert CACHE_HEADER not in headers
        assert len(state.response_cache.local) == 0  # not written
        await post("/v1/chat/completions", CHAT)
        _, headers, _ = await post("/v1/chat/completions", CHAT, x_tollgate_cache="no-store")
        assert CACHE_HEADER not in headers  # not read either
        assert (await post("/v1/chat/completions", sampled))[1].get(CACHE_HEADER) is None  # sampled: not cached
        assert (await post("/v1/chat/completions", sampled, x_tollgate_cache="use"))[1][CACHE_HEADER] == "miss"
        assert (await post("/v1/chat/completions", sampled, x_tollgate_cache="use"))[1][CACHE_HEADER] == "hit"
        metrics = state.accounting.metrics
        assert metrics.sample_value("tollgate_cache_requests_total", {"result": "bypass"}) == 2
    assert await mock.calls("/v1/chat/completions") == 5


async def test_errors_and_cut_streams_are_not_stored(mock: Mock) -> None:
    async with gateway(doc(mock)) as (url, state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        status, headers, _ = await post("/v1/chat/completions", CHAT, x_mock_status="400")
        assert status == 400 and headers[CACHE_HEADER] == "miss"
        status, _, raw = await post("/v1/chat/completions", {**CHAT, "stream": True}, x_mock_cut_after="2")
        assert status == 200 and b"upstream_stream" in raw  # the stream ended in an error event
        assert len(state.response_cache.local) == 0
        status, headers, _ = await post("/v1/chat/completions", CHAT)
        assert status == 200 and headers[CACHE_HEADER] == "miss"


async def test_a_hit_is_served_with_the_upstream_stopped(mock: Mock) -> None:
    async with gateway(doc(mock)) as (url, state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        _, _, first = await post("/v1/chat/completions", CHAT)
        _, _, first_stream = await post("/v1/chat/completions", {**CHAT, "stream": True})
        await mock.stop()
        status, headers, body = await post("/v1/chat/completions", CHAT)
        assert (status, headers[CACHE_HEADER], body) == (200, "hit", first)
        status, headers, body = await post("/v1/chat/completions", {**CHAT, "stream": True})
        assert (status, headers[CACHE_HEADER], body) == (200, "hit", first_stream)
        status, _, _ = await post("/v1/chat/completions", {**CHAT, "seed": 7})  # a miss has nowhere to go
        assert status in (502, 503)
        assert state.counters.requests == 3  # the two hits were never routed: no upstream attempt, no breaker


async def settled(state: GatewayState, count: int) -> None:
    """Wait until the settler has settled ``count`` requests (it works in the background)."""
    for _ in range(200):
        if state.settler.settled >= count:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"{count} requests not settled within 5 s")


async def test_hits_count_against_request_limits_but_give_back_their_token_reservation(mock: Mock) -> None:
    rules = {
        "rpm": {"type": "request_limit", "limit": 4, "per": "minute", "scope": ["tenant"], "attach": {"global": True}},
        "tpm": {
            "type": "token_limit",
            "limit": 100_000,
            "per": "hour",
            "scope": ["tenant"],
            "attach": {"global": True},
        },
    }
    async with gateway(doc(mock, rules=rules)) as (url, state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        await post("/v1/chat/completions", CHAT)
        await settled(state, 1)  # the miss's reservation settled to its real usage
        _, headers, _ = await post("/v1/chat/completions", CHAT)
        assert headers[CACHE_HEADER] == "hit"
        reserved_by_hit = int(headers["x-ratelimit-remaining-tokens"])
        await settled(state, 2)
        _, headers, _ = await post("/v1/chat/completions", CHAT)
        after_hit = int(headers["x-ratelimit-remaining-tokens"])
        # the hit's estimate went back: the next request sees as many tokens left as the hit did before it reserved
        assert after_hit == reserved_by_hit
        assert headers["x-ratelimit-remaining-requests"] == "1"
        await post("/v1/chat/completions", CHAT)
        status, headers, _ = await post("/v1/chat/completions", CHAT)
        assert status == 429 and CACHE_HEADER not in headers  # a hit is still a request
        assert state.settler.settled >= 3


async def test_usage_spend_fields_and_metrics_show_hits_tokens_and_cost_saved_apart(mock: Mock) -> None:
    pricing = {"models": {"gpt-4o-mini": {"input_per_1k": 1.0, "output_per_1k": 2.0}}}
    config = doc(mock, {"price_per_1k_tokens": 0.5}, pricing=pricing)
    async with gateway(config) as (url, state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        _, _, first = await post("/v1/chat/completions", CHAT)
        await post("/v1/chat/completions", CHAT)
        await post("/v1/chat/completions", CHAT)
        usage = orjson.loads(first)["usage"]
        tokens = usage["prompt_tokens"] + usage["completion_tokens"]
        await state.accounting.flush()
        month, _days = await state.accounting.store.read("acme", month_of(time.time()))
        metrics = state.accounting.metrics
        hits = metrics.sample_value("tollgate_cache_requests_total", {"result": "hit"})
        saved_metric = metrics.sample_value("tollgate_cache_tokens_saved_total")
    saved = cache_savings(month)
    upstream_cost = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1000
    assert saved == {"hits": 2, "saved_tokens": 2 * tokens, "saved_cost": pytest.approx(2 * upstream_cost)}
    assert month["requests"] == 3
    assert month["prompt_tokens"] == usage["prompt_tokens"]  # only the miss used tokens
    assert month["cost_n"] == pytest.approx((upstream_cost + 2 * tokens * 0.5 / 1000) * 1e9, abs=2)
    assert (hits, saved_metric) == (2, 2 * tokens)
    assert metrics.sample_value("tollgate_cache_requests_total", {"result": "miss"}) == 1
    assert metrics.sample_value("tollgate_cache_requests_total", {"result": "stored"}) == 1


async def test_a_local_invalidation_by_tenant_or_model_drops_only_those_entries(mock: Mock) -> None:
    embedding = {"model": "text-embedding-3-small", "input": "x"}
    async with gateway(doc(mock)) as (url, state), aiohttp.ClientSession() as s:
        post = poster(s, url)
        for key in (ACME_KEY, GLOBEX_KEY):
            await post("/v1/chat/completions", CHAT, key=key)
            await post("/v1/embeddings", embedding, key=key)
        assert await state.response_cache.invalidate(tenant="globex") == 2
        assert (await post("/v1/chat/completions", CHAT))[1][CACHE_HEADER] == "hit"
        assert (await post("/v1/chat/completions", CHAT, key=GLOBEX_KEY))[1][CACHE_HEADER] == "miss"
        assert await state.response_cache.invalidate(model="text-embedding-3-small") == 1
        assert (await post("/v1/embeddings", embedding))[1][CACHE_HEADER] == "miss"
        assert (await post("/v1/chat/completions", CHAT))[1][CACHE_HEADER] == "hit"
        await state.response_cache.invalidate()
        assert (await post("/v1/chat/completions", CHAT))[1][CACHE_HEADER] == "miss"


async def test_the_in_process_level_stays_within_max_bytes(mock: Mock) -> None:
    async with gateway(doc(mock, {"max_bytes": "4KiB", "max_entry_bytes": "2KiB"})) as (url, state):
        async with aiohttp.ClientSession() as s:
            post = poster(s, url)
            for i in range(12):
                await post("/v1/chat/completions", {**CHAT, "seed": i})
        cache = state.response_cache.local
        assert 0 < len(cache) < 12 and cache.size <= 4096


def test_the_entry_access_log_line_and_spend_row_of_a_hit_say_cache_hit_with_no_tokens_and_the_cache_charge() -> None:
    pricing = Pricing(PricingConfig(models={"gpt-4o-mini": Price(input_per_1k=1.0, output_per_1k=2.0)}))
    rec = (
        "req_1",
        SimpleNamespace(kind="chat"),
        "gpt-4o-mini",
        "gpt-4o-mini",
        None,
        200,
        None,
        False,
        False,
        "127.0.0.1",
        100.0,
        None,
        100.001,
        None,
        40,
        SimpleNamespace(tenant="acme", key_id="acme-1", plan="enterprise"),
        None,
        "default",
        None,
        0,
        100.002,
        1_700_000_000.0,
        None,
        CacheHit(100, 20, 777),
    )
    entry = Entry(*fields_of(rec, pricing))
    saved_cost = 140_000_000  # 100 * 1.0 / 1000 + 20 * 2.0 / 1000 = 0.14, in nanos
    assert (entry.upstream_s, entry.saved_tokens, entry.saved_cost_nanos) == (0.0, 120, saved_cost)
    line = orjson.loads(line_of(entry, "USD"))
    assert (line["cache"], line["saved_tokens"], line["upstream"]) == ("hit", 120, None)
    row = dict(zip(SPEND_COLUMNS, spend_row(fields_of(rec, pricing), "USD"), strict=True))
    assert row["cache_hit"] == 1
    assert (row["prompt_tokens"], row["completion_tokens"], row["cost_nanos"]) == (0, 0, 777)
    assert row["upstream"] is None
    assert fields_of(rec[:23], pricing)[32:] == (False, 0, 0)  # a record without a hit, as before


def test_config_problems_name_the_field() -> None:
    base = {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"deployments": [{"upstream": "u"}]}},
    }
    with pytest.raises(ConfigError) as caught:
        config_from_dict({**base, "cache": {"enabled": True, "max_bytes": "1KiB", "max_entry_bytes": "2KiB", "tll": 3}})
    text = "\n".join(caught.value.problems)
    assert "cache.max_entry_bytes: must not exceed max_bytes" in text
    assert "cache.tll" in text
    assert config_from_dict(base).cache.enabled is False
