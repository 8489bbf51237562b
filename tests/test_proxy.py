"""The proxy core end to end: the official openai SDK → gateway process → mock upstream process."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
import yaml

from tollgate.config.model import Upstream
from tollgate.upstream.pool import UpstreamClient

from .support.processes import Proc, free_port, gateway_config, gateway_process

MSG = [{"role": "user", "content": "hi"}]

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _config(mock_url: str) -> dict[str, Any]:
    dead_port = free_port()  # nothing listens there
    return gateway_config(
        f"{mock_url}/v1",
        guard={"max_body_bytes": "64KiB", "max_header_bytes": "8KiB"},
        upstreams={
            "mock": {"base_url": f"{mock_url}/v1", "api_key": "sk-upstream-secret"},
            "impatient": {
                "base_url": f"{mock_url}/v1",
                "api_key": "sk-upstream-secret",
                "timeouts": {"first_byte": "500ms", "idle": "500ms", "total": "5s"},
            },
            "dead": {"base_url": f"http://127.0.0.1:{dead_port}/v1", "timeouts": {"connect": "1s"}},
        },
        models={
            "gpt-4o-mini": {"deployments": [{"upstream": "mock"}]},
            "renamed": {"deployments": [{"upstream": "mock", "model": "upstream-name"}]},
            "impatient-model": {"deployments": [{"upstream": "impatient"}]},
            "dead-model": {"deployments": [{"upstream": "dead"}]},
            "text-embedding-3-small": {"deployments": [{"upstream": "mock"}]},
        },
    )


@pytest.fixture(scope="module")
def gateway(mock: Proc) -> Iterator[Proc]:
    with gateway_process(_config(mock.url)) as proc:
        yield proc


@pytest.fixture
def sdk(gateway: Proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key-never-forwarded", max_retries=0)


async def mock_requests(mock: Proc) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{mock.url}/_mock/requests") as r:
        data = await r.json()
    return data["requests"] if isinstance(data, dict) else data


async def clear_mock(mock: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        await (await s.delete(f"{mock.url}/_mock/requests")).read()
        await (await s.delete(f"{mock.url}/_mock/stats")).read()


async def mock_stats(mock: Proc) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{mock.url}/_mock/stats") as r:
        return dict(await r.json())


# -- the official SDK -------------------------------------------------------


def test_sdk_non_stream_completion_comes_back_with_usage(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}])
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_sdk_stream_chunks_arrive_incrementally(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        extra_headers={"x-mock-tokens-per-second": "20", "x-mock-completion-tokens": "20"},
    )
    arrivals: list[float] = []
    text = []
    for chunk in stream:
        arrivals.append(time.monotonic())
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    # 20 tokens at 20/s take ~1 s upstream: the first chunk must reach us long before the last one.
    assert arrivals[-1] - arrivals[0] > 0.6
    assert len(text) >= 10


def test_sdk_sees_upstream_500_as_its_server_error_type(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        sdk.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_headers={"x-mock-status": "500"}
        )
    assert info.value.status_code == 500


def test_sdk_embeddings_and_model_rename(sdk: openai.OpenAI, mock: Proc) -> None:
    emb = sdk.embeddings.create(model="text-embedding-3-small", input="hello")
    assert len(emb.data[0].embedding) > 0
    reply = sdk.chat.completions.create(model="renamed", messages=[{"role": "user", "content": "x"}])
    assert reply.model == "upstream-name"  # the deployment's upstream model name was sent upstream


def test_sdk_lists_models_from_config(sdk: openai.OpenAI) -> None:
    ids = {m.id for m in sdk.models.list()}
    assert {"gpt-4o-mini", "renamed", "text-embedding-3-small"} <= ids
    assert sdk.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


# -- header hygiene ------------------------------------------------------------


async def test_upstream_gets_only_the_allowed_client_headers_and_the_gateways_own(gateway: Proc, mock: Proc) -> None:
    await clear_mock(mock)
    headers = {
        # never forwarded, whatever an allow-list says
        "Authorization": "Bearer client-secret-1",
        "api-key": "client-secret-2",
        "x-api-key": "client-secret-3",
        "Cookie": "session=client-secret-4",
        "Proxy-Authorization": "Basic client-secret-5",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Host": "evil.example",
        "Forwarded": "for=203.0.113.9",
        "X-Real-IP": "203.0.113.9",
        "OpenAI-Organization": "org-of-the-client",
        "OpenAI-Project": "proj-of-the-client",
        "OpenAI-Beta": "assistants=v2",
        "X-Tollgate-Priority": "9",
        # not on the allow-list
        "X-Trace": "not-allowed",
        # on it: the defaults and the test configs' x-mock-*
        "Accept-Language": "fr",
        "User-Agent": "test-agent/1",
        "x-mock-latency-ms": "0",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gateway.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG}, headers=headers
        ) as r,
    ):
        assert r.status == 200
        returned_id = r.headers["x-request-id"]
    [seen] = await mock_requests(mock)
    pairs = [(k.lower(), v) for k, v in seen["headers"]]
    assert sorted(k for k, _ in pairs) == sorted(
        [
            "host",
            "content-length",  # the upstream client's
            "accept",
            "accept-language",
            "user-agent",
            "x-mock-latency-ms",  # the client's, allowed
            "content-type",
            "accept-encoding",
            "authorization",
            "x-forwarded-for",
            "x-request-id",  # the gateway's
        ]
    )
    assert ("accept-language", "fr") in pairs and ("user-agent", "test-agent/1") in pairs
    assert [v for k, v in pairs if k == "authorization"] == ["Bearer sk-upstream-secret"]
    # The client's own claim stays behind: the upstream learns the address the gateway settled on.
    assert ("x-forwarded-for", "127.0.0.1") in pairs
    assert ("x-request-id", returned_id) in pairs


async def test_a_header_named_in_connection_never_reaches_the_upstream_even_when_allowed(
    gateway: Proc, mock: Proc
) -> None:
    await clear_mock(mock)
    headers = {
        "Connection": "keep-alive, Accept-Language, x-mock-status",
        "Accept-Language": "fr",
        "x-mock-status": "500",
    }
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{gateway.url}/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MSG}, headers=headers
        ) as r,
    ):
        assert r.status == 200  # the fault the hop-by-hop header asked for never reached the mock
    [seen] = await mock_requests(mock)
    names = [k.lower() for k, _ in seen["headers"]]
    assert "accept-language" not in names and "x-mock-status" not in names


async def test_well_formed_request_id_is_kept_and_a_bad_one_replaced(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        body = {"model": "gpt-4o-mini", "messages": MSG}
        async with s.post(f"{gateway.url}/v1/chat/completions", json=body, headers={"x-request-id": "abc-123"}) as r:
            assert r.headers["x-request-id"] == "abc-123"
        async with s.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers={"x-request-id": "bad id <script>"}
        ) as r:
            assert r.headers["x-request-id"].startswith("req_")


# -- client disconnects --------------------------------------------------------


@pytest.mark.parametrize("fault", [{"x-mock-tokens-per-second": "5"}, {"x-mock-stall-after": "2"}])
async def test_client_disconnect_mid_stream_closes_the_upstream_within_a_second(
    gateway: Proc, mock: Proc, fault: dict[str, str]
) -> None:
    await clear_mock(mock)
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}], "max_tokens": 200}
    session = aiohttp.ClientSession()
    resp = await session.post(f"{gateway.url}/v1/chat/completions", json=body, headers=fault)
    assert resp.status == 200
    await resp.content.readany()
    left_at = time.time()
    resp.close()
    await session.close()
    deadline = time.monotonic() + 3
    noticed = None
    while time.monotonic() < deadline:
        noticed = (await mock_stats(mock)).get("last_client_disconnect_at")
        if noticed:
            break
        await asyncio.sleep(0.05)
    assert noticed is not None, "the mock never saw the gateway drop the upstream stream"
    assert noticed - left_at < 1.0


# -- bad input ---------------------------------------------------------------------


def _oversized_chunks() -> Any:
    async def gen() -> Any:
        for _ in range(100):
            yield b"x" * 1024

    return gen()


BAD_INPUTS = [
    ("malformed json", "POST", "/v1/chat/completions", {"data": b"{not json"}, 400, "invalid_json"),
    ("empty body", "POST", "/v1/chat/completions", {"data": b""}, 400, "invalid_json"),
    ("json array", "POST", "/v1/chat/completions", {"data": b"[1,2]"}, 400, "invalid_json"),
    ("missing model", "POST", "/v1/chat/completions", {"json": {"messages": MSG}}, 400, "missing_model"),
    ("model not a string", "POST", "/v1/chat/completions", {"json": {"model": 3}}, 400, "invalid_model"),
    (
        "stream not a bool",
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "gpt-4o-mini", "stream": "yes"}},
        400,
        "invalid_type",
    ),
    ("unknown model", "POST", "/v1/chat/completions", {"json": {"model": "gpt-9"}}, 404, "model_not_found"),
    ("unknown path", "POST", "/v1/nothing", {"json": {"model": "gpt-4o-mini"}}, 404, "unknown_url"),
    ("wrong method", "GET", "/v1/chat/completions", {}, 405, "method_not_allowed"),
    ("body over limit", "POST", "/v1/chat/completions", {"data": b"x" * 70_000}, 413, "request_too_large"),
    ("chunked body over limit", "POST", "/v1/chat/completions", {"data": "chunked"}, 413, "request_too_large"),
    (
        "headers over limit",
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "gpt-4o-mini"}, "headers": {"x-big": "y" * 9000}},
        431,
        "headers_too_large",
    ),
]


@pytest.mark.parametrize(
    ("case", "method", "path", "kwargs", "status", "code"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
async def test_bad_input_gets_its_status_and_openai_error_and_no_upstream_call(
    gateway: Proc, mock: Proc, case: str, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    await clear_mock(mock)
    if kwargs.get("data") == "chunked":
        kwargs = {"data": _oversized_chunks()}
    async with aiohttp.ClientSession() as s, s.request(method, f"{gateway.url}{path}", **kwargs) as r:
        assert r.status == status
        assert r.content_type == "application/json"
        body = await r.json()
        assert set(body["error"]) == {"message", "type", "code", "param"}
        assert body["error"]["code"] == code
        assert "Traceback" not in body["error"]["message"]
        assert r.headers["x-request-id"]
    assert await mock_requests(mock) == []


# -- upstream trouble --------------------------------------------------------------


async def post(gateway: Proc, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, await r.read()


async def test_unreachable_upstream_gives_502(gateway: Proc) -> None:
    status, body = await post(gateway, {"model": "dead-model", "messages": MSG})
    assert status == 502
    assert b"upstream_connect_error" in body


async def test_upstream_slower_than_first_byte_timeout_gives_504(gateway: Proc) -> None:
    started = time.monotonic()
    status, body = await post(gateway, {"model": "impatient-model", "messages": MSG}, {"x-mock-latency-ms": "3000"})
    assert status == 504
    assert b"upstream_timeout" in body
    assert time.monotonic() - started < 2.0


async def test_stream_stalling_past_idle_timeout_ends_with_an_sse_error_event(gateway: Proc) -> None:
    body = {"model": "impatient-model", "stream": True, "messages": MSG}
    status, raw = await post(gateway, body, {"x-mock-stall-after": "2"})
    assert status == 200
    assert raw.count(b"data: ") >= 3
    assert b'"code":"upstream_idle_timeout"' in raw


async def test_stream_cut_by_upstream_ends_with_an_sse_error_event(gateway: Proc) -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "messages": MSG}
    status, raw = await post(gateway, body, {"x-mock-cut-after": "3"})
    assert status == 200
    assert b"[DONE]" not in raw
    assert b'"type":"server_error"' in raw


def test_sdk_raises_on_the_sse_error_event_of_a_cut_stream(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=MSG, stream=True, extra_headers={"x-mock-cut-after": "3"}
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


# -- health and reload --------------------------------------------------------------


async def test_healthz_and_readyz_answer(mock: Proc) -> None:
    """On a gateway of its own: the module's shared one is degraded once a test before this one (the order depends on
    how the tests are spread over workers) has opened its upstream's breaker."""
    with gateway_process(_config(mock.url)) as gateway:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{gateway.url}/healthz") as r:
                assert r.status == 200
            async with s.get(f"{gateway.url}/readyz") as r:
                assert r.status == 200
                assert (await r.json())["status"] == "ready"


async def test_sighup_applies_a_valid_config_and_refuses_a_broken_one(mock: Proc) -> None:
    with gateway_process(_config(mock.url)) as gw:
        assert gw.config_path is not None
        doc = yaml.safe_load(gw.config_path.read_text())
        doc["models"]["added-later"] = {"deployments": [{"upstream": "mock"}]}
        gw.config_path.write_text(yaml.safe_dump(doc))
        gw.signal(signal.SIGHUP)
        for _ in range(50):
            status, _ = await post(gw, {"model": "added-later", "messages": MSG})
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200
        doc["models"]["broken"] = {"deployments": [{"upstream": "nowhere"}]}
        gw.config_path.write_text(yaml.safe_dump(doc))
        gw.signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        status, _ = await post(gw, {"model": "added-later", "messages": MSG})
        assert status == 200  # the previous version stays in force
        assert "reload refused" in gw.log()
        assert "models.broken.deployments[0].upstream" in gw.log()


@pytest.mark.process
def test_bad_config_fails_at_start_naming_the_field(tmp_path: Any) -> None:
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("upstreams: {u: {base_url: nope}}\nmodels: {m: {deployments: [{upstream: u}]}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "tollgate", "serve", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "upstreams.u.base_url: must be an absolute http:// or https:// URL" in result.stderr


def test_gateway_answers_on_its_port(gateway: Proc) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=1):
        pass


def test_the_upstream_is_asked_for_an_uncompressed_answer_unless_its_config_says_otherwise() -> None:
    default = UpstreamClient(Upstream(name="u", base_url="http://127.0.0.1:9/v1"))
    assert [v for k, v in default.fixed_headers if k.lower() == "accept-encoding"] == ["identity"]
    configured = UpstreamClient(
        Upstream(name="u", base_url="http://127.0.0.1:9/v1", headers={"Accept-Encoding": "gzip"})
    )
    assert [v for k, v in configured.fixed_headers if k.lower() == "accept-encoding"] == ["gzip"]
