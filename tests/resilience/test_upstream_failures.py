"""Retries, retry budget, circuit breakers and fallbacks, end to end: in-process gateway → real mock upstream process."""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
import orjson
import pytest

from tollgate.clock import ManualClock
from tollgate.routing.breaker import CLOSED, OPEN

from ..support.processes import Proc
from .helpers import chat, config_doc, gateway, mock_get, mock_reset, upstream_calls_by_request

pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.mock_upstream("--record-limit", "5000"),
]

FAIL = {"x-mock-status": "503"}
FAST_RETRIES = {"backoff_base": "1ms", "backoff_cap": "5ms"}


def _one(upstream: str = "mock", **model: object) -> dict[str, object]:
    return {"deployments": [{"upstream": upstream}], **model}


async def test_always_503_keeps_attempts_per_request_and_total_retries_within_the_budget(mock: Proc) -> None:
    await mock_reset(mock.url)
    resilience = {
        "retries": {"max": 2, "budget_ratio": 0.2, "budget_floor": 5, **FAST_RETRIES},
        "breaker": {"enabled": False},
    }
    async with gateway(config_doc(mock.url, {"m": _one()}, resilience)) as (url, state), aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(chat(s, url, "m", FAIL) for _ in range(100)))
        assert {status for status, _, _ in results} == {503}  # the provider's own answer, relayed
        calls = await upstream_calls_by_request(mock.url)
        assert len(calls) == 100
        assert max(len(v) for v in calls.values()) <= 1 + 2
        retries = sum(len(v) for v in calls.values()) - 100
        assert 0 < retries <= 5 + 0.2 * 100
        assert state.counters.retries == retries and state.counters.budget_refused > 0
        letters = state.dead_letter_records()
        assert len(letters) == 100
        assert letters[0]["status"] == 503 and letters[0]["attempts"][0]["outcome"] == "status 503"
        assert "messages" not in orjson.dumps(letters).decode()  # metadata only, never bodies


async def test_breaker_opens_after_n_failures_and_spares_the_upstream(mock: Proc) -> None:
    await mock_reset(mock.url)
    clock = ManualClock()
    resilience = {"retries": {"max": 0}, "breaker": {"consecutive_failures": 5, "cool_down": "30s"}}
    async with (
        gateway(config_doc(mock.url, {"m": _one()}, resilience), clock) as (url, state),
        aiohttp.ClientSession() as s,
    ):
        for _ in range(5):
            assert (await chat(s, url, "m", FAIL))[0] == 503
        [dstate] = state.deployments.states.values()
        assert dstate.breaker.state == OPEN
        for _ in range(20):
            status, headers, body = await chat(s, url, "m", FAIL)
            assert status == 503 and b"no_healthy_deployment" in body
            assert headers["Retry-After"] == "30"
        assert (await mock_get(mock.url, "stats"))["requests"] == 5
        assert dstate.breaker.transitions == {"closed->open": 1}


async def test_half_open_lets_exactly_k_of_50_concurrent_requests_probe(mock: Proc) -> None:
    await mock_reset(mock.url)
    clock = ManualClock()
    resilience = {
        "retries": {"max": 0},
        "breaker": {"consecutive_failures": 3, "cool_down": "10s", "half_open_probes": 3},
    }
    async with (
        gateway(config_doc(mock.url, {"m": _one()}, resilience), clock) as (url, state),
        aiohttp.ClientSession() as s,
    ):
        for _ in range(3):
            await chat(s, url, "m", FAIL)
        clock.advance(10.0)
        await mock_reset(mock.url)
        results = await asyncio.gather(*(chat(s, url, "m", {"x-mock-latency-ms": "300"}) for _ in range(50)))
        statuses = sorted(status for status, _, _ in results)
        assert statuses.count(200) == 3 and statuses.count(503) == 47
        assert (await mock_get(mock.url, "stats"))["requests"] == 3
        [dstate] = state.deployments.states.values()
        assert dstate.breaker.state == CLOSED  # the three probes succeeded
        assert (await chat(s, url, "m"))[0] == 200


@pytest.mark.slow
async def test_upstream_flapping_every_2s_causes_no_transition_faster_than_the_cool_down(mock: Proc) -> None:
    base = 1.5
    resilience = {
        "retries": {"max": 0},
        "breaker": {"consecutive_failures": 3, "cool_down": f"{base}s", "cool_down_max": "8s", "half_open_probes": 1},
    }
    async with gateway(config_doc(mock.url, {"m": _one()}, resilience)) as (url, state), aiohttp.ClientSession() as s:
        started = time.monotonic()

        async def client() -> None:
            while (elapsed := time.monotonic() - started) < 10.0:
                down = int(elapsed / 2.0) % 2 == 1  # up 0-2 s, down 2-4 s, up 4-6 s, ...
                await chat(s, url, "m", FAIL if down else None)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(client() for _ in range(4)))
        [dstate] = state.deployments.states.values()
        history = list(dstate.breaker.history)
    opened = [i for i, (_, _, to, _) in enumerate(history) if to == OPEN]
    assert opened, "the breaker never opened while the upstream was down half the time"
    for i in opened:  # whatever follows an opening comes a full cool-down later at the earliest
        if i + 1 < len(history):
            assert history[i + 1][0] - history[i][0] >= base - 1e-6, history
    trips = [h for h in history if h[1] == CLOSED and h[2] == OPEN]
    assert len(trips) <= 3  # at most one per down phase (2-4 s, 6-8 s, and the start of 10 s)
    cool_downs = [float(r.rsplit("cool-down ", 1)[1].rstrip("s")) for _, _, to, r in history if to == OPEN]
    assert max(cool_downs) > base  # repeated trips grew the cool-down


async def test_fallback_serves_with_its_model_header_and_is_counted(mock: Proc) -> None:
    await mock_reset(mock.url)
    models = {"primary": _one(fallbacks=["backup"]), "backup": _one("healthy")}
    async with (
        gateway(config_doc(mock.url, models, {"retries": {"max": 2, **FAST_RETRIES}})) as (url, state),
        aiohttp.ClientSession() as s,
    ):
        status, headers, _body = await chat(s, url, "primary", FAIL)
        assert status == 200 and headers["x-tollgate-model"] == "backup"
        assert state.counters.fallbacks == {"primary->backup": 1}
        [calls] = (await upstream_calls_by_request(mock.url)).values()
        assert [c["body"]["model"] for c in calls] == [
            "primary",
            "backup",
        ]  # the body's model rewritten for the fallback
        status, headers, _ = await chat(s, url, "primary")
        assert status == 200 and headers["x-tollgate-model"] == "primary"


async def test_fallback_on_status_skips_retries_of_the_failing_model(mock: Proc) -> None:
    await mock_reset(mock.url)
    models = {"primary": _one(fallbacks=["backup"], fallback_on_status=[429]), "backup": _one("healthy")}
    resilience = {"retries": {"max": 3, **FAST_RETRIES}}
    async with gateway(config_doc(mock.url, models, resilience)) as (url, _state), aiohttp.ClientSession() as s:
        status, headers, _ = await chat(s, url, "primary", {"x-mock-status": "429", "x-mock-retry-after": "0"})
        assert status == 200 and headers["x-tollgate-model"] == "backup"
        [calls] = (await upstream_calls_by_request(mock.url)).values()
        assert [c["body"]["model"] for c in calls] == ["primary", "backup"]


async def test_fallback_chain_is_followed_transitively(mock: Proc) -> None:
    models = {"a": _one(fallbacks=["b"]), "b": _one("dead", fallbacks=["c"]), "c": _one("healthy")}
    async with (
        gateway(config_doc(mock.url, models, {"retries": {"max": 2}})) as (url, _state),
        aiohttp.ClientSession() as s,
    ):
        status, headers, _ = await chat(s, url, "a", FAIL)
        assert status == 200 and headers["x-tollgate-model"] == "c"


async def test_everything_down_answers_503_in_under_10ms(mock: Proc) -> None:
    clock = ManualClock()
    models = {"a": _one(fallbacks=["b"]), "b": _one("dead")}
    resilience = {"retries": {"max": 1}, "breaker": {"consecutive_failures": 1, "cool_down": "60s"}}
    async with gateway(config_doc(mock.url, models, resilience), clock) as (url, state), aiohttp.ClientSession() as s:
        await chat(s, url, "a", FAIL)  # a fails (breaker opens), b refuses connections (its breaker opens)
        assert all(d.breaker.state == OPEN for d in state.deployments.states.values())
        timings = []
        for _ in range(7):
            began = time.perf_counter()
            status, headers, body = await chat(s, url, "a")
            timings.append(time.perf_counter() - began)
            assert status == 503 and headers["Retry-After"] == "60"
            assert b"circuit open" in body
        assert statistics.median(timings) < 0.010


# -- stream integrity -----------------------------------------------------------


def _events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e]


async def _stream(
    s: aiohttp.ClientSession, url: str, model: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    return await chat(s, url, model, headers, stream=True, max_tokens=12)


STREAM_MODELS = {
    "primary": {"deployments": [{"upstream": "impatient"}], "fallbacks": ["backup"]},
    "backup": _one("healthy"),
}


def _stream_doc(mock_url: str) -> dict[str, object]:
    impatient = {"base_url": f"{mock_url}/v1", "timeouts": {"first_byte": "1s", "idle": "300ms"}}
    return config_doc(mock_url, STREAM_MODELS, {"retries": {"max": 2, **FAST_RETRIES}}, impatient=impatient)


@pytest.mark.parametrize(
    "fault", [{"x-mock-cut-after": "0"}, {"x-mock-stall-after": "0"}, {"x-mock-malformed-after": "0"}]
)
async def test_stream_failing_before_its_first_event_falls_back_and_the_client_sees_one_clean_stream(
    mock: Proc, fault: dict[str, str]
) -> None:
    async with gateway(_stream_doc(mock.url)) as (url, state), aiohttp.ClientSession() as s:
        status, headers, raw = await _stream(s, url, "primary", fault)
        assert status == 200 and headers["x-tollgate-model"] == "backup"
        events = _events(raw)
        assert events[-1] == b"data: [DONE]"
        assert all(orjson.loads(e[6:])["model"] == "backup" for e in events[:-1])
        assert state.counters.fallbacks == {"primary->backup": 1}


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"x-mock-cut-after": "3"}, (b"upstream_stream_truncated", b"upstream_stream_error")),
        ({"x-mock-stall-after": "3"}, (b"upstream_idle_timeout",)),
        ({"x-mock-malformed-after": "3"}, (b"upstream_malformed_event",)),
    ],
)
async def test_stream_failing_after_its_first_event_ends_with_an_sse_error_event(
    mock: Proc, fault: dict[str, str], code: tuple[bytes, ...]
) -> None:
    async with gateway(_stream_doc(mock.url)) as (url, state), aiohttp.ClientSession() as s:
        status, headers, raw = await _stream(s, url, "primary", fault)
        assert status == 200 and headers["x-tollgate-model"] == "primary"  # no fallback once bytes went out
        events = _events(raw)
        assert b"[DONE]" not in raw
        assert len(events) == 4  # three whole events, then the error: never half an event
        last = orjson.loads(events[-1][6:])
        assert last["error"]["type"] == "server_error" and last["error"]["code"].encode() in code
        assert all("choices" in orjson.loads(e[6:]) for e in events[:-1])
        [letter] = state.dead_letter_records()
        assert letter["status"] == 200 and letter["code"].encode() in code


async def test_clients_leaving_mid_stream_are_not_counted_against_the_upstream(mock: Proc) -> None:
    resilience = {"breaker": {"consecutive_failures": 2}}
    async with gateway(config_doc(mock.url, {"m": _one()}, resilience)) as (url, state):
        for _ in range(5):
            async with aiohttp.ClientSession() as s:
                body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}], "max_tokens": 50}
                resp = await s.post(f"{url}/v1/chat/completions", json=body, headers={"x-mock-tokens-per-second": "50"})
                await resp.content.readany()
                resp.close()
        await asyncio.sleep(0.3)  # let the gateway notice each departure
        [dstate] = state.deployments.states.values()
        assert dstate.breaker.state == CLOSED and dstate.failures == 0
        async with aiohttp.ClientSession() as s:
            assert (await chat(s, url, "m"))[0] == 200
