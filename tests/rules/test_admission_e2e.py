"""Limits enforced per request, end to end: real gateway processes, a real redis-server, the mock upstream."""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from contextlib import ExitStack
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from ..support.processes import Proc, gateway_config, gateway_process
from ..support.redis import RedisServer

KEY = "tg_admission_test_key_0123456789abcdefghij"
MSG = [{"role": "user", "content": "hello there"}]


def doc(mock: Proc, rules: dict[str, Any], *, store: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return gateway_config(
        f"{mock.url}/v1",
        identity={"chain": ["api_key"]},
        plans={"open": {"monthly_requests": 10_000_000, "concurrency": 10_000}},
        tenants={
            "acme": {"plan": "open", "keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}
        },
        rules=rules,
        **({"store": store} if store else {}),
        **extra,
    )


def auth(**headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", **headers}


async def chat(
    s: aiohttp.ClientSession, gw: Proc, body: dict[str, Any] | None = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    body = body or {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5}
    async with s.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(**headers)) as r:
        return r.status, dict(r.headers), await r.read()


def redis_store(redis: RedisServer) -> dict[str, Any]:
    """The shared store, under a fresh key prefix, with a generous time budget: these tests are about
    exactness, not about the fail mode a slow CI machine would trigger (tests/limiter covers those)."""
    return {"backend": "redis", "url": redis.url, "key_prefix": f"t{time.monotonic_ns()}", "timeout": "5s"}


async def test_200_concurrent_requests_on_two_gateway_processes_at_a_limit_of_50_admit_exactly_50(
    mock: Proc, redis: RedisServer
) -> None:
    rules = {
        "rpm": {"type": "request_limit", "limit": 50, "per": "minute", "scope": ["tenant"], "attach": {"global": True}}
    }
    config = doc(mock, rules, store=redis_store(redis))
    with ExitStack() as stack:
        gws = [stack.enter_context(gateway_process(config)) for _ in range(2)]
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as s:
            results = await asyncio.gather(*(chat(s, gws[i % 2]) for i in range(200)))
    statuses = [status for status, _, _ in results]
    assert not [h for _, h, _ in results if "x-tollgate-degraded" in h], "no admission may be decided without the store"
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150
    refused = next(body for status, _, body in results if status == 429)
    assert "rpm" in orjson.loads(refused)["error"]["message"]
    admitted_headers = [h for status, h, _ in results if status == 200]
    assert {h["x-ratelimit-limit-requests"] for h in admitted_headers} == {"50"}
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in admitted_headers) == list(range(50))
    assert all("RateLimit" in h and "RateLimit-Policy" in h for h in admitted_headers)
    assert all(int(h["Retry-After"]) >= 1 for status, h, _ in results if status == 429)


async def stream(
    s: aiohttp.ClientSession, gw: Proc, body: dict[str, Any], **headers: str
) -> tuple[int, list[Any], bytes]:
    """POST a streaming request; returns status, the parsed data events, and the raw bytes."""
    async with s.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(**headers)) as r:
        raw = await r.read()
    events = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            events.append(orjson.loads(line[6:]))
    return r.status, events, raw


def remaining_tokens(headers: dict[str, str]) -> int:
    return int(headers["x-ratelimit-remaining-tokens"])


async def test_every_stream_reservation_settles_to_the_real_usage(mock: Proc, redis: RedisServer) -> None:
    budget = 1_000_000
    rules = {
        "tph": {"type": "token_limit", "limit": budget, "per": "hour", "scope": ["tenant"], "attach": {"global": True}}
    }
    config = doc(mock, rules, store=redis_store(redis), admission={"default_max_tokens": 500})
    with gateway_process(config) as gw:
        async with aiohttp.ClientSession() as s:
            bodies = [
                {"model": "gpt-4o-mini", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
                for _ in range(50)
            ]
            results = await asyncio.gather(
                *(stream(s, gw, b, **{"x-mock-completion-tokens": str(10 + i)}) for i, b in enumerate(bodies))
            )
            used = 0
            for status, events, _ in results:
                assert status == 200
                usage = events[-1]["usage"]
                used += usage["prompt_tokens"] + usage["completion_tokens"]
            await asyncio.sleep(0.3)  # settling runs just after each answer
            # A probe's own reservation (its prompt estimate + max_tokens 1) is in the remaining count it reports.
            status, headers, _body = await chat(s, gw, {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 1})
            assert status == 200
    probe_reservation = 3 + 4 + 3 + 1  # per-request + per-message + "hello there" + max_tokens
    assert budget - remaining_tokens(headers) - probe_reservation == used


async def test_streams_past_their_reservation_are_cut_when_the_token_budget_is_gone(
    mock: Proc, redis: RedisServer
) -> None:
    budget = 3_000
    rules = {
        "tph": {
            "type": "token_limit",
            "limit": budget,
            "per": "hour",
            "scope": ["tenant"],
            "on_exceed": "cut",
            "attach": {"global": True},
        }
    }
    config = doc(mock, rules, store=redis_store(redis), admission={"default_max_tokens": 40})
    with gateway_process(config) as gw:
        async with aiohttp.ClientSession() as s:
            body = {"model": "gpt-4o-mini", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
            fault = {"x-mock-completion-tokens": "400", "x-mock-tokens-per-second": "800"}
            results = await asyncio.gather(*(stream(s, gw, body, **fault) for _ in range(50)))
            await asyncio.sleep(0.3)
            status, headers, _ = await chat(s, gw, {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 1})
    admitted = [r for r in results if r[0] == 200]
    cut = [raw for status, _, raw in admitted if b"token_budget_exceeded" in raw]
    assert admitted and cut, "the budget should admit some streams and cut some of them"
    # What the clients received, counted the way the mock generates it (one word per token).
    delivered = 0
    for _, events, _ in admitted:
        text = "".join(
            (c.get("delta") or {}).get("content") or "" for e in events if "choices" in e for c in e["choices"]
        )
        delivered += len(text.split())
    assert delivered <= budget
    charged = budget - remaining_tokens(headers) if status == 200 else budget
    assert charged <= budget


async def test_concurrency_limit_holds_5_of_20_slow_streams_and_every_lease_comes_back(
    mock: Proc, redis: RedisServer
) -> None:
    rules = {"five": {"type": "connection_limit", "limit": 5, "scope": ["tenant"], "attach": {"global": True}}}
    config = doc(mock, rules, store=redis_store(redis))
    slow = {"x-mock-tokens-per-second": "20", "x-mock-completion-tokens": "10"}
    body = {"model": "gpt-4o-mini", "messages": MSG, "stream": True}
    with gateway_process(config) as gw:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            results = await asyncio.gather(*(stream(s, gw, body, **slow) for _ in range(20)))
            statuses = [r[0] for r in results]
            assert statuses.count(200) == 5
            assert statuses.count(429) == 15
            # All five leases came back (settling runs just after each answer): five more fit at once.
            assert await five_fit_at_once(s, gw) == [200] * 5
            # Clients that leave mid-stream give their leases back too.
            for _ in range(5):
                r = await s.post(f"{gw.url}/v1/chat/completions", json=body, headers=auth(**slow))
                assert r.status == 200
                await r.content.readany()
                r.close()
            # Their leases come back as the gateway notices each client gone (the lease TTL is 60 s, far longer).
            assert await five_fit_at_once(s, gw) == [200] * 5


async def five_fit_at_once(s: aiohttp.ClientSession, gw: Proc, within: float = 3.0) -> list[int]:
    """Statuses of five concurrent requests, retried until all five fit or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        statuses = [r[0] for r in await asyncio.gather(*(chat(s, gw) for _ in range(5)))]
        if statuses == [200] * 5 or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(0.1)


def test_openai_sdk_gets_a_rate_limit_error_naming_the_rule_and_honours_retry_after(mock: Proc) -> None:
    rules = {
        "one-per-second": {
            "type": "request_limit",
            "limit": 1,
            "per": "second",
            "scope": ["key"],
            "attach": {"global": True},
        }
    }
    with gateway_process(doc(mock, rules)) as gw:
        strict = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=KEY, max_retries=0)
        strict.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        with pytest.raises(openai.RateLimitError) as info:
            strict.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert "one-per-second" in str(info.value)
        assert 1 <= int(info.value.response.headers["retry-after"]) <= 2  # a one-second window, rounded up
        patient = openai.OpenAI(base_url=f"{gw.url}/v1", api_key=KEY, max_retries=3)
        started = time.monotonic()
        reply = patient.chat.completions.create(model="gpt-4o-mini", messages=MSG)
        assert reply.choices[0].message.content
        assert time.monotonic() - started >= 0.5  # it waited as told instead of hammering


async def test_shadow_rule_never_refuses_but_counts_what_it_would_have_refused(mock: Proc) -> None:
    rules = {
        "would-be": {
            "type": "request_limit",
            "limit": 2,
            "per": "minute",
            "scope": ["tenant"],
            "shadow": True,
            "attach": {"global": True},
        }
    }
    config = doc(mock, rules)
    config["listeners"]["admin"] = {"enabled": True, "token": "admin-token-for-the-shadow-test"}
    with gateway_process(config) as gw:
        async with aiohttp.ClientSession() as s:
            statuses = [(await chat(s, gw))[0] for _ in range(5)]
            assert statuses == [200] * 5
            admin = f"http://127.0.0.1:{gw.extra_ports['admin']}"
            deadline = time.monotonic() + 5
            count = 0.0
            while time.monotonic() < deadline:
                async with s.get(
                    f"{admin}/metrics", headers={"Authorization": "Bearer admin-token-for-the-shadow-test"}
                ) as r:
                    text = await r.text()
                m = re.search(
                    r'tollgate_limit_decisions_total\{outcome="shadow_refused",rule="would-be"\} (\S+)', text
                ) or re.search(
                    r'tollgate_limit_decisions_total\{rule="would-be",outcome="shadow_refused"\} (\S+)', text
                )
                count = float(m.group(1)) if m else 0.0
                if count >= 3:
                    break
                await asyncio.sleep(0.2)
    assert count == 3


async def test_field_check_refuses_with_its_message_before_any_limit_or_upstream_call(mock: Proc) -> None:
    rules = {
        "cap": {
            "type": "field_check",
            "field": "max_tokens",
            "op": "lte",
            "value": 20000,
            "message": "max_tokens must be at most 20000",
            "attach": {"global": True},
        },
        "rpm": {"type": "request_limit", "limit": 1, "per": "minute", "attach": {"global": True}},
    }
    with gateway_process(doc(mock, rules)) as gw:
        async with aiohttp.ClientSession() as s:
            status, _, body = await chat(s, gw, {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 50000})
            assert status == 400
            assert orjson.loads(body)["error"]["message"] == "max_tokens must be at most 20000"
            status, _, _ = await chat(s, gw)  # the refused request consumed nothing
            assert status == 200


async def test_namespace_matched_by_header_applies_its_own_rule(mock: Proc) -> None:
    namespaces = {
        "support": {
            "priority": 10,
            "matchers": [{"type": "header", "field": "X-Channel", "op": "equals", "value": "support"}],
        }
    }
    rules = {
        "support-rpm": {
            "type": "request_limit",
            "limit": 1,
            "per": "minute",
            "scope": ["tenant", "namespace"],
            "attach": {"namespaces": ["support"]},
        }
    }
    with gateway_process(doc(mock, rules, namespaces=namespaces)) as gw:
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, gw, None, **{"X-Channel": "support"}))[0] == 200
            assert (await chat(s, gw, None, **{"X-Channel": "support"}))[0] == 429
            assert (await chat(s, gw, None, **{"X-Channel": "web"}))[0] == 200  # the default namespace has no such rule


async def test_requests_over_a_queueing_concurrency_limit_wait_for_a_lease_until_their_deadline(mock: Proc) -> None:
    rules = {
        "two-at-once": {
            "type": "connection_limit",
            "limit": 2,
            "queue_timeout": "4s",
            "scope": ["tenant"],
            "attach": {"global": True},
        }
    }
    body = {"model": "gpt-4o-mini", "messages": MSG, "stream": True}
    slow = {"x-mock-tokens-per-second": "20", "x-mock-completion-tokens": "8"}  # ~0.4 s each
    with gateway_process(doc(mock, rules)) as gw:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            started = time.monotonic()
            results = await asyncio.gather(*(stream(s, gw, body, **slow) for _ in range(6)))
            elapsed = time.monotonic() - started
    assert [r[0] for r in results] == [200] * 6  # nobody refused: they queued
    assert elapsed >= 1.0  # three waves of two


async def test_a_queued_request_past_its_deadline_gets_429_saying_it_waited(mock: Proc) -> None:
    rules = {
        "one-at-once": {
            "type": "connection_limit",
            "limit": 1,
            "queue_timeout": "300ms",
            "scope": ["tenant"],
            "attach": {"global": True},
        }
    }
    body = {"model": "gpt-4o-mini", "messages": MSG, "stream": True}
    slow = {"x-mock-tokens-per-second": "10", "x-mock-completion-tokens": "15"}  # ~1.5 s
    with gateway_process(doc(mock, rules)) as gw:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            holder = asyncio.create_task(stream(s, gw, body, **slow))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            status, _, raw = await chat(s, gw)
            waited = time.monotonic() - started
            assert (await holder)[0] == 200
    assert status == 429
    assert b"waited 0.3s for a free slot" in raw
    assert 0.25 <= waited < 1.0
