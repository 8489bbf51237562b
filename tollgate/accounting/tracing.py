"""OpenTelemetry tracing of the gateway: the process's tracer (sampler, batched OTLP export) and W3C trace context.

Built only when the config's ``tracing.enabled`` is true: the OpenTelemetry SDK is the optional ``tracing``
extra, imported by this module and by no other of the gateway's (the config refuses ``enabled: true`` when it
is missing, tollgate/config/observability.py). The pipeline opens the spans (tollgate/pipeline/traces.py);
this module owns what outlives a request:

* the sampler: parent-based, so a client's ``traceparent`` decides for its own trace, and the configured
  ``sample_ratio`` of new traces (by trace id) otherwise;
* export off the request path: the SDK's ``BatchSpanProcessor`` queues a finished span (bounded:
  ``max_queue``, beyond it spans are dropped, never the request) and a thread of its own sends batches;
* W3C trace context (``traceparent``, ``tracestate``): read from a client's headers as the parent of the
  request's span, and written on each upstream request in place of whatever the client sent, naming the
  gateway's own span of that attempt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tollgate.config.observability import OtlpConfig, TracingConfig

__all__ = ["TRACE_HEADERS", "Tracing", "otlp_exporter"]

# The W3C trace context headers: a client's never go upstream as they came while tracing is on.
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


def otlp_exporter(config: OtlpConfig) -> SpanExporter:
    """The OTLP exporter of ``config.protocol`` (its package is checked by the config, at load)."""
    headers = dict(config.headers)
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter: SpanExporter = GrpcExporter(
            endpoint=config.url, insecure=config.url.startswith("http://"), headers=headers, timeout=config.timeout
        )
        return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=config.url, headers=headers, timeout=config.timeout)


class Tracing:
    """The process's tracer provider, its tracer and the W3C propagator; :meth:`close` exports what is queued."""

    __slots__ = ("config", "provider", "tracer", "_propagator")

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        """``exporter`` replaces the OTLP exporter of the config (the SDK's in-memory one, in tests)."""
        self.config = config
        resource = Resource.create({**config.resource, "service.name": config.service_name})
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)), resource=resource, shutdown_on_exit=False
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(
                exporter if exporter is not None else otlp_exporter(config.otlp),
                max_queue_size=config.max_queue,
                schedule_delay_millis=config.schedule_delay * 1000,
                max_export_batch_size=config.max_batch,
                export_timeout_millis=config.otlp.timeout * 1000,
            )
        )
        self.tracer: trace.Tracer = self.provider.get_tracer("tollgate")
        self._propagator = TraceContextTextMapPropagator()

    def parent(self, headers: Mapping[str, str]) -> Context | None:
        """The trace context a client's ``traceparent`` (and ``tracestate``) names; None when it sent none."""
        if "traceparent" not in headers:
            return None
        return self._propagator.extract(headers)

    def inject(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``headers`` of an upstream request with the current span's context in place of any a client sent."""
        out = [(name, value) for name, value in headers if name.lower() not in TRACE_HEADERS]
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier)
        out.extend(carrier.items())
        return out

    def flush(self, timeout: float = 5.0) -> bool:
        """Export every finished span now (blocking; for tests and shutdown). False when the time ran out."""
        return self.provider.force_flush(int(timeout * 1000))

    async def close(self) -> None:
        """Export what is queued (within the exporter's timeout) and stop the export thread."""
        await asyncio.to_thread(self.provider.shutdown)
