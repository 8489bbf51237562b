"""OpenAI's error vocabulary and retry headers, as the official SDK (max_retries > 0) reads them: how many requests it sends.

One gateway process in front of the mock; each scenario is a namespace picked by the X-Scenario header.
Every request the SDK sends is counted on the client side (an httpx event hook), and the mock says what
reached it.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from .support.processes import Proc, gateway_config, gateway_process

KEY = "tg_openai_errors_test_key_0123456789abcdef"
MSG = [{"role": "user", "content": "hello there"}]
SCENARIOS = ("burst", "never-fits", "spent")

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(scope="module")
def gateway(mock: Proc) -> Iterator[Proc]:
    rules = {
        # 5 a second, spread out (GCRA): the next request fits a fifth of a second later, Retry-After says 1 s.
        "burst": {
            "type": "request_limit",
            "limit": 5,
            "per": "second",
            "algorithm": "gcra",
            "scope": ["key"],
            "attach": {"namespaces": ["burst"]},
        },
        # max_tokens 100 can never fit in 10 tokens a minute.
        "never-fits": {
            "type": "token_limit",
            "limit": 10,
            "per": "minute",
            "scope": ["key"],
            "attach": {"namespaces": ["never-fits"]},
        },
        # a tenth of a cent a day; a request is estimated at more than that.
        "spent": {
            "type": "budget",
            "amount": 0.001,
            "per": "day",
            "scope": ["key"],
            "attach": {"namespaces": ["spent"]},
        },
    }
    config = gateway_config(
        f"{mock.url}/v1",
        identity={"chain": ["api_key"]},
        plans={"open": {"monthly_requests": 10_000_000, "concurrency": 10_000}},
        tenants={
            "acme": {"plan": "open", "keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}
        },
        namespaces={
            s: {"matchers": [{"type": "header", "field": "X-Scenario", "op": "equals", "value": s}]} for s in SCENARIOS
        },
        rules=rules,
        pricing={"currency": "USD", "models": {"gpt-4o-mini": {"input_per_1k": 1.0, "output_per_1k": 2.0}}},
        upstreams={
            "mock": {"base_url": f"{mock.url}/v1", "api_key": "sk-upstream-secret"},
            # The mock answers 401 to every call through this upstream, as a provider does to a revoked key.
            "revoked": {
                "base_url": f"{mock.url}/v1",
                "api_key": "sk-revoked-0123456789",
                "headers": {"x-mock-status": "401"},
            },
        },
        models={
            "gpt-4o-mini": {"deployments": [{"upstream": "mock"}]},
            "locked": {"deployments": [{"upstream": "revoked"}]},
        },
    )
    with gateway_process(config) as proc:
        yield proc


class Sent:
    """The requests an SDK client sent and the answers it got: (monotonic time, status, headers)."""

    def __init__(self) -> None:
        self.requests: list[float] = []
        self.answers: list[tuple[int, dict[str, str]]] = []

    def client(self, gateway: Proc, scenario: str | None = None, max_retries: int = 2) -> openai.OpenAI:
        hooks: dict[str, list[Any]] = {
            "request": [lambda request: self.requests.append(time.monotonic())],
            "response": [lambda response: self.answers.append((response.status_code, dict(response.headers)))],
        }
        return openai.OpenAI(
            base_url=f"{gateway.url}/v1",
            api_key=KEY,
            max_retries=max_retries,
            default_headers={"X-Scenario": scenario} if scenario else None,
            http_client=openai.DefaultHttpxClient(event_hooks=hooks),
        )


def test_429_carries_retry_after_ms_and_the_sdk_waits_that_long_not_the_rounded_up_seconds(gateway: Proc) -> None:
    sent = Sent()
    sdk = sent.client(gateway, "burst")
    for _ in range(20):  # use up the burst: until the gateway refuses once and the SDK retries
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
        if any(status == 429 for status, _ in sent.answers):
            break
    refused = next(i for i, (status, _) in enumerate(sent.answers) if status == 429)
    _status, headers = sent.answers[refused]
    wait_ms = int(headers["retry-after-ms"])
    assert 0 < wait_ms < 1000 and headers["retry-after"] == "1"
    assert sent.answers[refused + 1][0] == 200  # the SDK's retry fitted
    waited = sent.requests[refused + 1] - sent.requests[refused]
    # It slept retry-after-ms, not the second that Retry-After rounds it up to (nor its own 0.5 s backoff).
    assert wait_ms / 1000 * 0.9 <= waited < 0.95, (wait_ms, waited)


def test_429_that_can_never_fit_says_x_should_retry_false_and_the_sdk_sends_it_once(gateway: Proc) -> None:
    sent = Sent()
    with pytest.raises(openai.RateLimitError) as info:
        sent.client(gateway, "never-fits", max_retries=3).chat.completions.create(
            model="gpt-4o-mini", messages=MSG, max_tokens=100
        )
    assert len(sent.requests) == 1
    headers = info.value.response.headers
    assert headers["x-should-retry"] == "false" and "retry-after" not in headers
    error = info.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")


def test_insufficient_quota_says_x_should_retry_false_and_the_sdk_sends_it_once(gateway: Proc) -> None:
    sent = Sent()
    with pytest.raises(openai.RateLimitError) as info:
        sent.client(gateway, "spent", max_retries=3).chat.completions.create(
            model="gpt-4o-mini", messages=MSG, max_tokens=100
        )
    assert len(sent.requests) == 1
    assert info.value.response.headers["x-should-retry"] == "false"
    error = info.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")


def test_a_bad_client_key_is_openais_invalid_request_error_with_code_invalid_api_key(gateway: Proc) -> None:
    sdk = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="tg_not_a_key_of_anyone_0123456789", max_retries=2)
    with pytest.raises(openai.AuthenticationError) as info:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    error = info.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")


def test_upstream_refusing_the_gateways_key_is_a_502_in_the_gateways_words_sent_once(gateway: Proc, mock: Proc) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{mock.url}/_mock/requests", method="DELETE")).close()
    sent = Sent()
    with pytest.raises(openai.InternalServerError) as info:
        sent.client(gateway, max_retries=3).chat.completions.create(model="locked", messages=MSG)
    assert info.value.status_code == 502 and len(sent.requests) == 1
    assert info.value.response.headers["x-should-retry"] == "false"
    error = info.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "upstream_auth_error")
    assert "injected by the mock" not in error["message"] and "sk-" not in error["message"]
    with urllib.request.urlopen(f"{mock.url}/_mock/requests") as r:
        data = json.load(r)
    seen = data["requests"] if isinstance(data, dict) else data
    assert len(seen) == 1  # the gateway did not retry the refused credential either
    log = gateway.log()
    assert (
        "ERROR" in log
        and "refused the gateway's credentials with 401" in log
        and "injected by the mock upstream" in log
    )
    assert "sk-revoked-0123456789" not in log
