"""The mock upstream: OpenAI-shaped answers, SSE streaming, every fault knob, request recording and stats."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tollgate.mock.upstream import MockSettings, add_arguments, make_mock_app, settings_from_args, start_mock

REPO = Path(__file__).resolve().parents[1]
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello there, mock!"}]}


@pytest.fixture
def mock(aiohttp_client: MakeClient) -> Callable[..., Awaitable[Client]]:
    async def start(**settings: Any) -> Client:
        return await aiohttp_client(make_mock_app(MockSettings(**settings)))

    return start


async def sse_events(resp: aiohttp.ClientResponse) -> list[bytes]:
    """The ``data:`` payloads of a whole SSE body, in order."""
    body = await resp.read()
    assert body.endswith(b"\n\n")
    return [event.removeprefix(b"data: ") for event in body.split(b"\n\n") if event]


async def iter_events(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            yield event.removeprefix(b"data: ")


# ---------------------------------------------------------------- shapes


async def test_chat_completion_is_openai_shaped_and_echoes_the_requested_model(mock: Any) -> None:
    client = await mock()
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "my-model"})
    assert resp.status == 200
    assert resp.content_type == "application/json"
    data = await resp.json()
    assert data["id"].startswith("chatcmpl-")
    assert data["object"] == "chat.completion"
    assert isinstance(data["created"], int) and abs(data["created"] - time.time()) < 5
    assert data["model"] == "my-model"
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split()) == 16 == data["usage"]["completion_tokens"]
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


WEATHER: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


async def test_a_required_tool_choice_is_answered_with_one_call_of_the_tool_whole_and_streamed(mock: Any) -> None:
    client = await mock()
    body = {**CHAT, "tools": [WEATHER], "tool_choice": "required"}
    data = await (await client.post("/v1/chat/completions", json=body)).json()
    (choice,) = data["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"mock"}'}
    named = {**CHAT, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    streamed = {**named, "stream": True, "stream_options": {"include_usage": True}}
    events = await sse_events(await client.post("/v1/chat/completions", json=streamed))
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0]["tool_calls"][0]["function"]["name"] == "get_weather"
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls"))
    assert orjson.loads(arguments) == {"city": "mock"} and len([d for d in deltas if d.get("tool_calls")]) > 2
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls" and chunks[-1]["usage"]["completion_tokens"]
    bad = await client.post("/v1/chat/completions", json={**CHAT, "tool_choice": "required"})
    assert bad.status == 400 and (await bad.json())["error"]["param"] == "tool_choice"


async def test_chat_ids_differ_between_requests(mock: Any) -> None:
    client = await mock()
    ids = {(await (await client.post("/v1/chat/completions", json=CHAT)).json())["id"] for _ in range(3)}
    assert len(ids) == 3


async def test_prompt_tokens_grow_with_message_text_at_about_four_chars_per_token(mock: Any) -> None:
    client = await mock()

    async def prompt_tokens(messages: list[dict[str, Any]]) -> int:
        resp = await client.post("/v1/chat/completions", json={"model": "m", "messages": messages})
        return int((await resp.json())["usage"]["prompt_tokens"])

    one_short = await prompt_tokens([{"role": "user", "content": "hi"}])
    one_long = await prompt_tokens([{"role": "user", "content": "x" * 400}])
    two_short = await prompt_tokens([{"role": "system", "content": "hi"}, {"role": "user", "content": "hi"}])
    parts = await prompt_tokens([{"role": "user", "content": [{"type": "text", "text": "x" * 400}]}])
    assert one_long - one_short == 100 - 1
    assert two_short - one_short >= 2  # at least one token per message plus an overhead
    assert parts == one_long


async def test_max_tokens_sets_completion_length_and_finish_reason_length(mock: Any) -> None:
    client = await mock(max_tokens_cap=50)
    data = await (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5})).json()
    assert data["usage"]["completion_tokens"] == 5
    assert data["choices"][0]["message"]["content"] == "the quick brown fox jumps"
    assert data["choices"][0]["finish_reason"] == "length"
    data = await (await client.post("/v1/chat/completions", json={**CHAT, "max_completion_tokens": 7})).json()
    assert data["usage"]["completion_tokens"] == 7
    capped = await (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 10_000})).json()
    assert capped["usage"]["completion_tokens"] == 50


async def test_completions_endpoint_is_openai_shaped(mock: Any) -> None:
    client = await mock()
    resp = await client.post(
        "/v1/completions", json={"model": "gpt-3.5-turbo-instruct", "prompt": "Say this", "max_tokens": 3}
    )
    data = await resp.json()
    assert data["id"].startswith("cmpl-") and data["object"] == "text_completion"
    assert data["model"] == "gpt-3.5-turbo-instruct"
    assert data["choices"] == [{"text": "the quick brown", "index": 0, "logprobs": None, "finish_reason": "length"}]
    assert data["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_embeddings_return_one_vector_per_input_in_float_and_base64(mock: Any) -> None:
    client = await mock(embedding_dim=8)
    body = {"model": "text-embedding-3-small", "input": ["abcd", "abcdefgh"]}
    data = await (await client.post("/v1/embeddings", json=body)).json()
    assert data["object"] == "list" and data["model"] == "text-embedding-3-small"
    assert [(d["object"], d["index"], len(d["embedding"])) for d in data["data"]] == [
        ("embedding", 0, 8),
        ("embedding", 1, 8),
    ]
    assert data["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    b64 = await (await client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})).json()
    decoded = struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(data["data"][0]["embedding"], abs=1e-6)
    short = await (await client.post("/v1/embeddings", json={**body, "dimensions": 3})).json()
    assert len(short["data"][1]["embedding"]) == 3


async def test_models_are_listed_and_an_unknown_model_is_404(mock: Any) -> None:
    client = await mock(models=("a", "b"))
    data = await (await client.get("/v1/models")).json()
    assert data["object"] == "list"
    assert [(m["id"], m["object"]) for m in data["data"]] == [("a", "model"), ("b", "model")]
    assert (await (await client.get("/v1/models/a")).json())["id"] == "a"
    missing = await client.get("/v1/models/zzz")
    assert missing.status == 404
    assert (await missing.json())["error"]["code"] == "model_not_found"


async def test_bad_json_or_missing_fields_are_openai_shaped_400s(mock: Any) -> None:
    client = await mock()
    cases = [
        ("/v1/chat/completions", b"{not json"),
        ("/v1/chat/completions", orjson.dumps({"messages": []})),
        ("/v1/chat/completions", orjson.dumps({"model": "m"})),
        ("/v1/completions", orjson.dumps({"model": "m"})),
        ("/v1/embeddings", orjson.dumps({"model": "m"})),
    ]
    for path, raw in cases:
        resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400, (path, raw)
        error = (await resp.json())["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"


# ---------------------------------------------------------------- streaming


async def test_chat_stream_is_openai_sse_with_role_deltas_finish_usage_chunk_and_done(mock: Any) -> None:
    client = await mock()
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}, "max_tokens": 4}
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    events = await sse_events(resp)
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1 and {c["model"] for c in chunks} == {"gpt-4o-mini"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert content == "the quick brown fox"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_stream_without_include_usage_has_no_usage_chunk(mock: Any) -> None:
    client = await mock()
    events = await sse_events(await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 2}))
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert events[-1] == b"[DONE]"
    assert len(chunks) == 1 + 2 + 1
    assert all("usage" not in c and c["choices"] for c in chunks)


async def test_completions_stream_sends_text_deltas_and_usage(mock: Any) -> None:
    client = await mock()
    body = {"model": "m", "prompt": "hi", "stream": True, "max_tokens": 3, "stream_options": {"include_usage": True}}
    events = await sse_events(await client.post("/v1/completions", json=body))
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "the quick brown"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}


async def test_tokens_per_chunk_groups_tokens_into_fewer_deltas(mock: Any) -> None:
    client = await mock(tokens_per_chunk=3)
    events = await sse_events(await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 7}))
    deltas = [orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2]]
    assert deltas == ["the quick brown", " fox jumps over", " a"]


async def test_first_stream_chunk_reaches_the_client_before_the_mock_sends_the_last(mock: Any) -> None:
    client = await mock(tokens_per_second=50)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 10})
    events = iter_events(resp)
    first = await anext(events)
    assert b'"role":"assistant"' in first
    stats = await (await client.get("/_mock/stats")).json()
    assert stats["streams_started"] == 1 and stats["streams_completed"] == 0
    rest = [e async for e in events]
    assert rest[-1] == b"[DONE]"
    assert (await (await client.get("/_mock/stats")).json())["streams_completed"] == 1


# ---------------------------------------------------------------- fault knobs


@pytest.mark.parametrize("via", ["settings", "header"])
async def test_latency_delays_the_first_byte(mock: Any, via: str) -> None:
    client = await mock(latency_ms=200) if via == "settings" else await mock()
    headers = {"x-mock-latency-ms": "200"} if via == "header" else {}
    started = time.monotonic()
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert resp.status == 200
    assert time.monotonic() - started >= 0.2


async def test_tokens_per_second_paces_the_stream(mock: Any) -> None:
    client = await mock()
    started = time.monotonic()
    resp = await client.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True, "max_tokens": 10},
        headers={"x-mock-tokens-per-second": "40"},
    )
    await resp.read()
    assert 0.25 - 0.02 <= time.monotonic() - started < 2.0  # 10 tokens at 40/s


async def test_forced_429_is_an_openai_rate_limit_error_with_retry_after(mock: Any) -> None:
    client = await mock(retry_after=7)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-mock-status": "429"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "7"
    error = (await resp.json())["error"]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded" and error["param"] is None
    assert (await (await client.get("/_mock/stats")).json())["errors_injected"] == 1


async def test_forced_status_from_settings_applies_to_every_post_endpoint(mock: Any) -> None:
    client = await mock(status=503)
    for path, body in [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": "m", "prompt": "x"}),
        ("/v1/embeddings", {"model": "m", "input": "x"}),
    ]:
        resp = await client.post(path, json=body)
        assert resp.status == 503
        assert (await resp.json())["error"]["type"] == "server_error"
        assert "Retry-After" not in resp.headers
    assert (await client.get("/v1/models")).status == 200


async def test_error_rate_with_a_seed_fails_the_same_requests_every_run(mock: Any) -> None:
    async def statuses() -> list[int]:
        client = await mock(error_rate=0.5, error_status=502, seed=42)
        return [(await client.post("/v1/chat/completions", json=CHAT)).status for _ in range(40)]

    first, second = await statuses(), await statuses()
    assert first == second
    assert set(first) == {200, 502}
    assert 8 <= first.count(502) <= 32


async def test_error_rate_header_overrides_the_instance_rate(mock: Any) -> None:
    client = await mock(error_rate=1.0)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 500
    assert (await client.post("/v1/chat/completions", json=CHAT, headers={"x-mock-error-rate": "0"})).status == 200


async def test_cut_after_closes_the_stream_abruptly_without_done(mock: Any) -> None:
    client = await mock()
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers={"x-mock-cut-after": "3"})
    received = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async for event in iter_events(resp):
            received.append(event)
    assert len(received) == 3 and b"[DONE]" not in received
    stats = await (await client.get("/_mock/stats")).json()
    assert stats["streams_cut"] == 1 and stats["streams_completed"] == 0


async def test_cut_after_on_a_non_stream_request_closes_without_an_answer(mock: Any) -> None:
    client = await mock(cut_after=0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.post("/v1/chat/completions", json=CHAT)


async def test_stall_keeps_the_connection_open_and_records_when_the_client_leaves(mock: Any) -> None:
    client = await mock()
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers={"x-mock-stall-after": "2"})
    events = iter_events(resp)
    assert len([await anext(events), await anext(events)]) == 2
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(events), 0.3)
    stats = await (await client.get("/_mock/stats")).json()
    assert stats["streams_stalled"] == 1 and stats["streams_aborted"] == 0
    closed_at = time.time()
    resp.close()
    for _ in range(100):
        stats = await (await client.get("/_mock/stats")).json()
        if stats["streams_aborted"]:
            break
        await asyncio.sleep(0.01)
    assert stats["streams_aborted"] == 1
    assert closed_at <= stats["last_client_disconnect_at"] <= time.time()
    assert stats["client_disconnects"][-1]["chunks_sent"] == 2


async def test_client_leaving_a_paced_stream_is_noticed_promptly(mock: Any) -> None:
    client = await mock(tokens_per_second=2)
    resp = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await anext(iter_events(resp))
    closed_at = time.time()
    resp.close()
    for _ in range(100):
        stats = await (await client.get("/_mock/stats")).json()
        if stats["streams_aborted"]:
            break
        await asyncio.sleep(0.01)
    assert stats["streams_aborted"] == 1 and stats["streams_completed"] == 0
    assert stats["last_client_disconnect_at"] - closed_at < 0.3  # well before the next token was due (0.5 s)


async def test_stall_on_a_non_stream_request_never_answers(mock: Any) -> None:
    client = await mock(stall_after=0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.post("/v1/chat/completions", json=CHAT), 0.3)


async def test_malformed_after_sends_one_non_json_event_then_continues(mock: Any) -> None:
    client = await mock()
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 3}, headers={"x-mock-malformed-after": "2"}
    )
    events = await sse_events(resp)
    assert events[-1] == b"[DONE]"
    bad = []
    for i, event in enumerate(events[:-1]):
        try:
            orjson.loads(event)
        except orjson.JSONDecodeError:
            bad.append(i)
    assert bad == [2]
    assert len(events) == 1 + 1 + 3 + 1 + 1  # role, malformed, 3 deltas, finish, [DONE]


async def test_completion_tokens_knob_overrides_max_tokens(mock: Any) -> None:
    client = await mock(completion_tokens=3)
    data = await (await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100})).json()
    assert data["usage"]["completion_tokens"] == 3
    resp = await client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 100}, headers={"x-mock-completion-tokens": "9"}
    )
    assert (await resp.json())["usage"]["completion_tokens"] == 9


@pytest.mark.parametrize(
    "header", [("x-mock-latency-ms", "soon"), ("x-mock-error-rate", "2"), ("x-mock-nonsense", "1")]
)
async def test_bad_or_unknown_mock_header_is_a_400(mock: Any, header: tuple[str, str]) -> None:
    client = await mock()
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=[header])
    assert resp.status == 400
    assert "x-mock" in (await resp.json())["error"]["message"]


def test_settings_reject_out_of_range_knobs() -> None:
    for bad in ({"error_rate": 1.5}, {"status": 42}, {"latency_ms": -1}, {"cut_after": -1}, {"tokens_per_chunk": 0}):
        with pytest.raises(ValueError):
            MockSettings(**bad)


# ---------------------------------------------------------------- recording and stats


async def test_requests_are_recorded_with_headers_and_parsed_body_and_can_be_cleared(mock: Any) -> None:
    client = await mock()
    await client.post("/v1/chat/completions?x=1", json=CHAT, headers={"X-Tenant": "acme"})
    (recorded,) = (await (await client.get("/_mock/requests")).json())["requests"]
    assert recorded["method"] == "POST" and recorded["path"] == "/v1/chat/completions" and recorded["query"] == "x=1"
    assert ["X-Tenant", "acme"] in recorded["headers"]
    assert recorded["body"] == CHAT
    assert (await client.delete("/_mock/requests")).status == 204
    assert (await (await client.get("/_mock/requests")).json())["requests"] == []


async def test_recording_keeps_only_the_most_recent_requests(mock: Any) -> None:
    client = await mock(record_limit=3)
    for i in range(5):
        await client.post("/v1/chat/completions", json={**CHAT, "user": str(i)})
    recorded = (await (await client.get("/_mock/requests")).json())["requests"]
    assert [r["body"]["user"] for r in recorded] == ["2", "3", "4"]


async def test_recording_can_be_switched_off(mock: Any) -> None:
    client = await mock(record=False)
    await client.post("/v1/chat/completions", json=CHAT)
    data = await (await client.get("/_mock/requests")).json()
    assert data == {"recording": False, "requests": []}


async def test_stats_count_requests_and_stream_outcomes_and_reset(mock: Any) -> None:
    client = await mock()
    await client.post("/v1/chat/completions", json=CHAT)
    await (await client.post("/v1/chat/completions", json={**CHAT, "stream": True})).read()
    stats = await (await client.get("/_mock/stats")).json()
    assert (stats["requests"], stats["streams_started"], stats["streams_completed"], stats["streams_aborted"]) == (
        2,
        1,
        1,
        0,
    )
    await client.delete("/_mock/stats")
    assert (await (await client.get("/_mock/stats")).json())["requests"] == 0


# ---------------------------------------------------------------- real servers and clients


async def test_openai_sdk_parses_every_endpoint_of_a_started_mock() -> None:
    from openai import AsyncOpenAI

    runner, port = await start_mock("127.0.0.1", 0, MockSettings(embedding_dim=16))
    try:
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0) as sdk:
            chat = await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert chat.choices[0].message.content == "the quick brown fox" and chat.usage is not None
            stream = await sdk.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
            pieces, usage = [], None
            async for chunk in stream:
                pieces.extend(c.delta.content or "" for c in chunk.choices)
                usage = chunk.usage or usage
            assert "".join(pieces) == "the quick brown fox"
            assert usage is not None and usage.completion_tokens == 4
            emb = await sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])  # SDK asks for base64
            assert [len(d.embedding) for d in emb.data] == [16, 16]
            text = await sdk.completions.create(model="m", prompt="p", max_tokens=2)
            assert text.choices[0].text == "the quick"
            assert "gpt-4o" in [m.id async for m in sdk.models.list()]
    finally:
        await runner.cleanup()


def test_cli_flags_map_onto_settings() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from_args(parser.parse_args([])) == MockSettings()
    ns = parser.parse_args(
        [
            "--latency-ms",
            "5",
            "--error-rate",
            "0.25",
            "--seed",
            "3",
            "--cut-after",
            "2",
            "--no-record",
            "--models",
            "a, b",
        ]
    )
    assert settings_from_args(ns) == MockSettings(
        latency_ms=5, error_rate=0.25, seed=3, cut_after=2, record=False, models=("a", "b")
    )


@pytest.mark.process
def test_mock_runs_as_its_own_process_and_stops_cleanly_on_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollgate", "mock-upstream", "--port", "0", "--status", "418"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("mock upstream listening on http://127.0.0.1:"), line
        url = line.split()[-1]

        async def call() -> int:
            async with aiohttp.ClientSession() as session, session.post(url + "/chat/completions", json=CHAT) as resp:
                return resp.status

        assert asyncio.run(call()) == 418
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
