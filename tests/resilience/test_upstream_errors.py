"""What an upstream's error answer becomes: a refused gateway credential is never the tenant's to read; other bodies lose their credentials.

An in-process gateway in front of an upstream that quotes every credential it knows in its error bodies,
as providers do ("Incorrect API key provided: sk-...").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from .helpers import chat, config_doc, gateway

UPSTREAM_KEY = "sk-upstream-echo-0123456789abcdef"
OTHER_SECRET = "org-secret-token-0123456789"
FAST = {"retries": {"max": 2, "backoff_base": "1ms", "backoff_cap": "5ms"}}


def _completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


# Model output that merely looks like a key: the tenant's, never redacted.
OUTPUT = "Set OPENAI_API_KEY=sk-proj-Example0123456789 in your shell."


def _quoting(request: web.Request) -> str:
    """An error message quoting every credential the request carried, and some shaped like keys."""
    sent = request.headers.get("Authorization", "")
    return (
        f"Incorrect API key provided: {sent.removeprefix('Bearer ')}. You sent {sent} and X-Org-Token "
        f"{request.headers.get('X-Org-Token', '')}; keys like sk-proj-AbCdEf1234567890 or sk-abc*****wxyz or "
        "AIzaSyA1234567890abcdefghijklmnopqrs do not belong here."
    )


async def _answer(request: web.Request) -> web.StreamResponse:
    """200, or the status in x-answer-status with a body quoting the credentials the request carried; a stream
    asked for is answered with a content event, then error events quoting them, in OpenAI's and Anthropic's shapes."""
    status = int(request.headers.get("x-answer-status", "200"))
    if (await request.json()).get("stream"):
        message = _quoting(request)
        content = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        content["choices"] = [{"index": 0, "delta": {"content": OUTPUT}, "finish_reason": None}]
        events = [
            b"data: " + orjson.dumps(content),
            b"data: " + orjson.dumps({"error": {"message": message, "type": "server_error"}}),
            b"event: error\ndata: "
            + orjson.dumps({"type": "error", "error": {"type": "api_error", "message": message}}),
        ]
        return web.Response(body=b"\n\n".join(events) + b"\n\n", content_type="text/event-stream")
    if status == 200:
        return web.json_response(_completion())
    error = {"message": _quoting(request), "type": "invalid_request_error", "code": "invalid_api_key", "param": None}
    return web.json_response({"error": error}, status=status)


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _doc(echo_url: str) -> dict[str, Any]:
    echo = {
        "base_url": f"{echo_url}/v1",
        "api_key": UPSTREAM_KEY,
        "headers": {"X-Org-Token": OTHER_SECRET},
        "forward_headers": ["x-answer-status"],
    }
    revoked = {**echo, "headers": {"X-Org-Token": OTHER_SECRET, "x-answer-status": "401"}, "forward_headers": []}
    models = {
        "m": {"deployments": [{"upstream": "echo"}]},
        "primary": {"deployments": [{"upstream": "revoked"}], "fallbacks": ["backup"]},
        "backup": {"deployments": [{"upstream": "echo"}]},
    }
    return config_doc(echo_url, models, FAST, echo=echo, revoked=revoked)


@pytest.mark.parametrize("status", [400, 404, 429, 500])
async def test_a_relayed_error_body_keeps_its_status_and_words_but_no_credential(echo_url: str, status: int) -> None:
    async with gateway(_doc(echo_url)) as (url, _), aiohttp.ClientSession() as s:
        got, _, raw = await chat(s, url, "m", {"x-answer-status": str(status)})
    assert got == status
    message = orjson.loads(raw)["error"]["message"]  # still JSON
    assert message.startswith(
        "Incorrect API key provided: [redacted]. You sent Bearer [redacted] and X-Org-Token [redacted]"
    )
    for leaked in (UPSTREAM_KEY, OTHER_SECRET, "sk-proj-", "sk-abc", "AIza", "0123456789"):
        assert leaked not in message, leaked


@pytest.mark.parametrize("status", [401, 403])
async def test_an_upstream_refusing_the_gateways_key_is_a_502_counted_and_logged_in_the_providers_words(
    echo_url: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tollgate.attempts")
    async with gateway(_doc(echo_url)) as (url, state), aiohttp.ClientSession() as s:
        answers = [await chat(s, url, "m", {"x-answer-status": str(status)}) for _ in range(3)]
        refused = state.accounting.metrics.sample_value(
            "tollgate_upstream_auth_failures_total", {"upstream": "echo", "status": str(status)}
        )
    for got, headers, raw in answers:
        error = orjson.loads(raw)["error"]
        assert (got, error["type"], error["code"]) == (502, "server_error", "upstream_auth_error")
        assert "Incorrect API key" not in error["message"] and "[redacted]" not in error["message"]
        assert headers["x-should-retry"] == "false"
    assert refused == 3
    # One error line for the three (at most one per upstream every 10 s), in the provider's words, without our key.
    lines = [r for r in caplog.records if "refused the gateway's credentials" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR
    assert "Incorrect API key provided" in lines[0].getMessage() and UPSTREAM_KEY not in lines[0].getMessage()


async def test_a_deployment_whose_key_is_refused_falls_back_to_a_model_that_serves(echo_url: str) -> None:
    async with gateway(_doc(echo_url)) as (url, state), aiohttp.ClientSession() as s:
        got, headers, _ = await chat(s, url, "primary")
        assert (
            state.accounting.metrics.sample_value(
                "tollgate_upstream_auth_failures_total", {"upstream": "revoked", "status": "401"}
            )
            == 1
        )
    assert (got, headers["x-tollgate-model"]) == (200, "backup")


async def test_a_streams_error_events_lose_their_credentials_and_its_model_output_is_relayed_as_written(
    echo_url: str,
) -> None:
    async with gateway(_doc(echo_url)) as (url, _), aiohttp.ClientSession() as s:
        got, headers, raw = await chat(s, url, "m", stream=True)
    assert got == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [e for e in raw.split(b"\n\n") if e]
    content, openai_error, anthropic_error = events[0], events[1], events[2]
    assert orjson.loads(content.removeprefix(b"data: "))["choices"][0]["delta"]["content"] == OUTPUT
    assert openai_error.startswith(b"data: ") and anthropic_error.startswith(b"event: error\ndata: ")
    for event, message in (
        (openai_error, orjson.loads(openai_error.removeprefix(b"data: "))["error"]["message"]),
        (anthropic_error, orjson.loads(anthropic_error.split(b"\ndata: ")[1])["error"]["message"]),
    ):
        assert message.startswith(
            "Incorrect API key provided: [redacted]. You sent Bearer [redacted] and X-Org-Token [redacted]"
        )
        for leaked in (UPSTREAM_KEY, OTHER_SECRET, "sk-proj-AbCdEf", "sk-abc", "AIza", "0123456789"):
            assert leaked.encode() not in event, leaked
