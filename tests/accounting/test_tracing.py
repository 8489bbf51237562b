"""OpenTelemetry tracing: the span tree of a request (server span, admission, one span per upstream attempt), the
client's traceparent continued and the gateway's sent upstream, sampling, export over OTLP, and the config.

The gateway runs in-process (real HTTP on loopback) so that the SDK's in-memory exporter sees its spans; the mock
upstream records the headers it received.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from tollgate.accounting.logs import JsonFormatter
from tollgate.accounting.tracing import Tracing
from tollgate.config import config_from_dict, observability
from tollgate.config.observability import TracingConfig
from tollgate.errors import ConfigError
from tollgate.runtime.state import GatewayState

from ..resilience.helpers import gateway as resilience_gateway
from ..support.processes import MOCK_FORWARD_HEADERS
from ..support.upstream_log import header_values, recorded

KEY = "tg_trace-acme-key-0123456789abcdefghijklmnop"
MSG = [{"role": "user", "content": "hi"}]
# A client's trace: trace id, its span, sampled.
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
CLIENT_TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
# Upstreams let the client's trace headers through, so that the test sees they are replaced, not merely dropped.
FORWARDED = [*MOCK_FORWARD_HEADERS, "traceparent", "tracestate"]


def doc(mock_url: str, tracing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model "primary" on an upstream answering 503 to everything, falling back to "backup" on a healthy one."""
    out: dict[str, Any] = {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "upstreams": {
            "failing": {
                "base_url": f"{mock_url}/v1",
                "headers": {"x-mock-status": "503"},
                "forward_headers": FORWARDED,
            },
            "mock": {"base_url": f"{mock_url}/v1", "forward_headers": FORWARDED},
        },
        "models": {
            "primary": {"deployments": [{"upstream": "failing", "model": "primary-v1"}], "fallbacks": ["backup"]},
            "backup": {"deployments": [{"upstream": "mock", "model": "backup-v2"}]},
        },
        "identity": {"chain": ["api_key"]},
        "tenants": {"acme": {"plan": "enterprise", "keys": [{"id": "acme-main", "sha256": _sha(KEY)}]}},
        "access_log": {"enabled": False},
    }
    if tracing is not None:
        out["tracing"] = tracing
    return out


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def gateway(config: dict[str, Any], exporter: InMemorySpanExporter | None) -> Any:
    """A gateway in this loop whose spans go to ``exporter`` (tests/resilience/helpers.py)."""
    return resilience_gateway(config, span_exporter=exporter)


async def chat(url: str, model: str, headers: dict[str, str] | None = None, **body: Any) -> tuple[int, str, bytes]:
    sent = {"Authorization": f"Bearer {KEY}", **(headers or {})}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/chat/completions", json={"model": model, "messages": MSG, **body}, headers=sent) as r,
    ):
        return r.status, r.headers["x-request-id"], await r.read()


def finished(state: GatewayState, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert state.tracing is not None
    assert state.tracing.flush()
    return list(exporter.get_finished_spans())


def hex_span(span_id: int) -> str:
    return f"{span_id:016x}"


def hex_trace(trace_id: int) -> str:
    return f"{trace_id:032x}"


def traceparent_of(value: str) -> tuple[str, str, bool]:
    """A W3C traceparent's trace id, parent span id and sampled flag (other flags, such as random, aside)."""
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00"
    return trace_id, span_id, bool(int(flags, 16) & 1)


async def test_a_fallback_request_is_a_server_span_with_admission_and_one_span_per_attempt(mock_url: str) -> None:
    exporter = InMemorySpanExporter()
    async with gateway(doc(mock_url, {"enabled": True}), exporter) as (url, state):
        status, request_id, _ = await chat(url, "primary", {"traceparent": CLIENT_TRACEPARENT, "tracestate": "k=v"})
        assert status == 200
        spans = finished(state, exporter)
    by_kind: dict[SpanKind, list[ReadableSpan]] = {}
    for span in spans:
        by_kind.setdefault(span.kind, []).append(span)
    [server] = by_kind[SpanKind.SERVER]
    [admission] = by_kind[SpanKind.INTERNAL]
    failed, served = sorted(by_kind[SpanKind.CLIENT], key=lambda s: s.start_time or 0)
    assert len(spans) == 4

    # The server span: named after the operation and the model asked for, the client's span its parent.
    assert server.name == "chat primary"
    assert server.parent is not None and hex_span(server.parent.span_id) == CLIENT_SPAN
    assert hex_trace(server.context.trace_id) == CLIENT_TRACE
    attrs = dict(server.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "primary"
    assert attrs["gen_ai.response.model"] == "backup"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["http.response.status_code"] == 200
    assert attrs["tollgate.tenant"] == "acme"
    assert attrs["tollgate.request_id"] == request_id
    assert attrs["tollgate.fallback_from"] == "primary"
    assert attrs["tollgate.attempts"] == 2
    assert "error.type" not in attrs

    # Its children: admission, then the failed attempt on primary and the one that served on the fallback.
    for child in (admission, failed, served):
        assert child.parent is not None and child.parent.span_id == server.context.span_id
        assert child.context.trace_id == server.context.trace_id
    assert admission.name == "admit" and (admission.attributes or {})["tollgate.admission"] == "admitted"
    first = dict(failed.attributes or {})
    assert failed.name == "chat primary-v1"
    assert first["gen_ai.request.model"] == "primary-v1" and first["tollgate.model"] == "primary"
    assert first["tollgate.upstream"] == "failing" and first["tollgate.attempt"] == 1
    assert first["error.type"] == "upstream_status" and first["http.response.status_code"] == 503
    assert not failed.status.is_ok
    second = dict(served.attributes or {})
    assert served.name == "chat backup-v2"
    assert second["gen_ai.request.model"] == "backup-v2" and second["tollgate.model"] == "backup"
    assert second["tollgate.upstream"] == "mock" and second["tollgate.attempt"] == 2
    assert second["http.response.status_code"] == 200 and "error.type" not in second
    assert second["gen_ai.provider.name"] == "openai" and second["server.address"] == "127.0.0.1"

    # Each upstream request carried the gateway's span of that attempt, in place of the client's traceparent.
    calls = [r for r in await recorded(mock_url) if request_id in header_values(r, "x-request-id")]
    assert len(calls) == 2
    for call, attempt in zip(calls, (failed, served)):
        [traceparent] = header_values(call, "traceparent")
        assert traceparent_of(traceparent) == (CLIENT_TRACE, hex_span(attempt.context.span_id), True)
        assert header_values(call, "tracestate") == ["k=v"]


async def test_a_request_without_traceparent_starts_a_trace_of_its_own(mock_url: str) -> None:
    exporter = InMemorySpanExporter()
    async with gateway(doc(mock_url, {"enabled": True}), exporter) as (url, state):
        status, request_id, _ = await chat(url, "backup")
        assert status == 200
        spans = finished(state, exporter)
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.parent is None
    assert {s.context.trace_id for s in spans} == {server.context.trace_id}
    [call] = [r for r in await recorded(mock_url) if request_id in header_values(r, "x-request-id")]
    [attempt] = [s for s in spans if s.kind == SpanKind.CLIENT]
    [traceparent] = header_values(call, "traceparent")
    assert traceparent_of(traceparent) == (
        hex_trace(server.context.trace_id),
        hex_span(attempt.context.span_id),
        True,
    )


async def test_a_refused_request_has_its_error_type_and_no_attempt(mock_url: str) -> None:
    exporter = InMemorySpanExporter()
    async with gateway(doc(mock_url, {"enabled": True}), exporter) as (url, state):
        status, _, _ = await chat(url, "no-such-model")
        assert status == 404
        spans = finished(state, exporter)
    assert not [s for s in spans if s.kind == SpanKind.CLIENT]  # no upstream was asked
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    attrs = dict(server.attributes or {})
    assert attrs["http.response.status_code"] == 404 and attrs["error.type"] == "model_not_found"
    assert attrs["tollgate.tenant"] == "acme"


async def test_a_request_refused_by_a_limit_has_a_refused_admission_span(mock_url: str) -> None:
    exporter = InMemorySpanExporter()
    config = doc(mock_url, {"enabled": True})
    config["rules"] = {
        "one": {"type": "request_limit", "limit": 1, "per": "minute", "scope": ["tenant"], "attach": {"global": True}}
    }
    async with gateway(config, exporter) as (url, state):
        assert (await chat(url, "backup"))[0] == 200
        assert finished(state, exporter)
        exporter.clear()
        status, _, _ = await chat(url, "backup")
        assert status == 429
        spans = finished(state, exporter)
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    [admission] = [s for s in spans if s.kind == SpanKind.INTERNAL]
    assert not [s for s in spans if s.kind == SpanKind.CLIENT]
    refused = dict(admission.attributes or {})
    assert refused["tollgate.admission"] == "refused"
    attrs = dict(server.attributes or {})
    assert attrs["http.response.status_code"] == 429 and attrs["error.type"] == refused["error.type"]
    assert server.status.is_unset  # a refusal is the client's error, not the gateway's


async def test_a_streamed_answer_s_span_ends_with_the_stream_and_carries_its_tokens(mock_url: str) -> None:
    exporter = InMemorySpanExporter()
    async with gateway(doc(mock_url, {"enabled": True}), exporter) as (url, state):
        status, _, body = await chat(url, "backup", stream=True, stream_options={"include_usage": True})
        assert status == 200 and body.rstrip().endswith(b"data: [DONE]")
        spans = finished(state, exporter)
    [server] = [s for s in spans if s.kind == SpanKind.SERVER]
    [attempt] = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert (server.attributes or {})["gen_ai.usage.output_tokens"] > 0
    assert (attempt.attributes or {})["gen_ai.usage.output_tokens"] > 0
    assert server.end_time is not None and attempt.end_time is not None and server.end_time >= attempt.end_time


async def test_sample_ratio_zero_records_no_span_and_still_propagates_an_unsampled_context(mock_url: str) -> None:
    exporter = InMemorySpanExporter()
    async with gateway(doc(mock_url, {"enabled": True, "sample_ratio": 0.0}), exporter) as (url, state):
        status, request_id, _ = await chat(url, "backup")
        assert status == 200
        assert finished(state, exporter) == []
    [call] = [r for r in await recorded(mock_url) if request_id in header_values(r, "x-request-id")]
    [traceparent] = header_values(call, "traceparent")
    assert traceparent_of(traceparent)[2] is False  # the upstream learns the trace exists and is not sampled


async def test_tracing_off_leaves_the_client_traceparent_to_forward_headers(mock_url: str) -> None:
    async with gateway(doc(mock_url), None) as (url, state):
        assert state.tracing is None and state.runtime.stages.tracing is None
        status, request_id, _ = await chat(url, "backup", {"traceparent": CLIENT_TRACEPARENT})
        assert status == 200
    [call] = [r for r in await recorded(mock_url) if request_id in header_values(r, "x-request-id")]
    assert header_values(call, "traceparent") == [CLIENT_TRACEPARENT]  # allow-listed: relayed as it came


async def test_spans_are_exported_over_otlp_http_with_the_configured_headers(
    mock_url: str, aiohttp_server: Any
) -> None:
    received: list[tuple[dict[str, str], bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    collector = await aiohttp_server(app)
    tracing = {
        "enabled": True,
        "service_name": "gateway-under-test",
        "otlp": {"endpoint": f"http://127.0.0.1:{collector.port}", "headers": {"x-collector-key": "secret"}},
        "schedule_delay": "100ms",
    }
    async with gateway(doc(mock_url, tracing), None) as (url, _state):
        status, _, _ = await chat(url, "backup")
        assert status == 200
    # Closing the gateway exported what was queued.
    assert received
    headers, body = received[0]
    assert headers["x-collector-key"] == "secret" and headers["Content-Type"] == "application/x-protobuf"
    export = ExportTraceServiceRequest()
    export.ParseFromString(body)
    names = {span.name for rs in export.resource_spans for ss in rs.scope_spans for span in ss.spans}
    assert {"chat backup", "admit", "chat backup-v2"} <= names
    resource = {a.key: a.value.string_value for a in export.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "gateway-under-test"


def test_the_otlp_endpoint_defaults_per_protocol_and_takes_a_bare_collector_address() -> None:
    otlp = observability.OtlpConfig
    assert otlp().url == "http://127.0.0.1:4318/v1/traces"
    assert otlp(protocol="grpc").url == "http://127.0.0.1:4317"
    assert otlp(endpoint="http://collector:4318").url == "http://collector:4318/v1/traces"
    assert otlp(endpoint="https://collector/otlp/v1/traces").url == "https://collector/otlp/v1/traces"


def _problems(tracing: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(doc("http://127.0.0.1:9", tracing))
    return caught.value.problems


def test_the_tracing_section_is_validated_naming_each_field() -> None:
    problems = _problems(
        {
            "enabled": True,
            "sample_ratio": 1.5,
            "otlp": {"endpoint": "ftp://collector", "headers": {"bad name": "x", "x-key": "a\nb"}},
            "max_queue": 10,
            "max_batch": 20,
        }
    )
    assert any(p.startswith("tracing.sample_ratio:") for p in problems), problems
    assert any(p.startswith("tracing.otlp.endpoint: must be an absolute http:// or https:// URL") for p in problems)
    assert any(p.startswith("tracing.otlp.headers.bad name: is not a valid header name") for p in problems)
    assert any(p.startswith("tracing.otlp.headers.x-key: must not contain line breaks") for p in problems)
    assert any(p.startswith("tracing.max_batch: must not exceed max_queue") for p in problems)
    grpc_path = _problems({"otlp": {"protocol": "grpc", "endpoint": "http://collector:4317/v1/traces"}})
    assert grpc_path == ["tracing.otlp.endpoint: a grpc endpoint is scheme, host and port only (no path)"]


def test_enabled_tracing_without_the_extra_is_refused_at_start_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(observability.TRACING_PACKAGES, "sdk", ("tollgate_no_such_module.trace", "opentelemetry-sdk"))
    problems = _problems({"enabled": True})
    assert problems == [
        "tracing.enabled: tracing needs the OpenTelemetry SDK (opentelemetry-sdk): pip install 'tollgate[tracing]'"
    ]
    assert config_from_dict(doc("http://127.0.0.1:9", {"enabled": False})).tracing.enabled is False  # off: no need
    monkeypatch.undo()
    monkeypatch.setitem(observability.TRACING_PACKAGES, "grpc", ("tollgate_no_such_module", "the-grpc-exporter"))
    problems = _problems({"enabled": True, "otlp": {"protocol": "grpc"}})
    assert problems == [
        "tracing.otlp.protocol: the grpc exporter is not installed (the-grpc-exporter): pip install 'tollgate[tracing]'"
    ]


def test_a_json_log_line_names_the_current_span_while_tracing() -> None:
    tracing = Tracing(TracingConfig(enabled=True), InMemorySpanExporter())
    formatter = JsonFormatter()
    record = logging.LogRecord("tollgate.x", logging.WARNING, __file__, 1, "inside", (), None)
    assert "trace_id" not in orjson.loads(formatter.format(record))  # no span current
    with tracing.tracer.start_as_current_span("request") as span:
        line = orjson.loads(formatter.format(record))
    ids = span.get_span_context()
    assert line["trace_id"] == hex_trace(ids.trace_id) and line["span_id"] == hex_span(ids.span_id)
    tracing.provider.shutdown()
