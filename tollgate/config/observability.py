"""Config sections of the gateway's own telemetry: ``tracing:`` (OpenTelemetry) and ``logging:`` (application logs).

Both are read when a process starts: a reload that changes them is logged and takes effect at the next restart.
Tracing needs the ``tracing`` extra (``pip install 'tollgate[tracing]'``): with ``enabled: true`` and the
OpenTelemetry SDK or the exporter of the chosen protocol missing, the config is refused, naming the package.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, Strict

from tollgate.config.validation import Found, check, section
from tollgate.config.values import Bool, Duration, FrozenMap, NonEmptyStr, Share, Str, frozen_map

__all__ = [
    "OTLP_DEFAULT_ENDPOINTS",
    "TRACING_PACKAGES",
    "LoggingConfig",
    "OtlpConfig",
    "TracingConfig",
    "missing_tracing_package",
]

# The collector's default address of each OTLP protocol (OpenTelemetry's own defaults).
OTLP_DEFAULT_ENDPOINTS = {"http/protobuf": "http://127.0.0.1:4318/v1/traces", "grpc": "http://127.0.0.1:4317"}
# The module each part of tracing needs, and the package that brings it.
TRACING_PACKAGES = {
    "sdk": ("opentelemetry.sdk.trace", "opentelemetry-sdk"),
    "http/protobuf": (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry-exporter-otlp-proto-http",
    ),
    "grpc": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "opentelemetry-exporter-otlp-proto-grpc"),
}
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_BREAKS_HEADER = re.compile(r"[\r\n\x00]")


def _header_value(value: object) -> object:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def missing_tracing_package(part: str) -> str | None:
    """The package to install for ``part`` of tracing ("sdk" or a protocol), or None when it is installed."""
    module, package = TRACING_PACKAGES[part]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        found = False
    return None if found else package


@section
@dataclass(frozen=True, slots=True)
class OtlpConfig:
    """Where finished spans go: an OpenTelemetry collector (or any OTLP receiver), in batches off the request path."""

    endpoint: Str | None = None
    """http/protobuf: the traces URL (a bare http://host:4318 gets /v1/traces appended); grpc: http://host:4317
    (https:// for TLS). Absent: the protocol's local default, http://127.0.0.1:4318/v1/traces or
    http://127.0.0.1:4317."""
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    headers: FrozenMap[Annotated[Str, BeforeValidator(_header_value)]] = field(default_factory=frozen_map)
    """Sent with every export (a collector's API key: use ${ENV_VAR})."""
    timeout: Duration = 10.0
    """One export's time limit."""

    @check
    def endpoint_and_headers_are_usable(self) -> Found:
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                yield "endpoint", "must be an absolute http:// or https:// URL"
            elif self.protocol == "grpc" and parts.path not in ("", "/"):
                yield "endpoint", "a grpc endpoint is scheme, host and port only (no path)"
        for name, value in self.headers.items():
            if not _HEADER_NAME.fullmatch(name):
                yield f"headers.{name}", "is not a valid header name"
            elif _BREAKS_HEADER.search(value):
                yield f"headers.{name}", "must not contain line breaks or NUL"

    @property
    def url(self) -> str:
        """The endpoint spans are exported to."""
        if self.endpoint is None:
            return OTLP_DEFAULT_ENDPOINTS[self.protocol]
        if self.protocol == "http/protobuf" and urlsplit(self.endpoint).path in ("", "/"):
            return self.endpoint.rstrip("/") + "/v1/traces"
        return self.endpoint


@section
@dataclass(frozen=True, slots=True)
class TracingConfig:
    """OpenTelemetry traces: one server span per request (GenAI semantic conventions), a child span for admission
    and one per upstream attempt; the client's W3C traceparent continued, the gateway's sent upstream. Off: no
    span, no cost, and a client's traceparent is treated like any other header (forward_headers)."""

    enabled: Bool = False
    service_name: NonEmptyStr = "tollgate"
    """The service.name resource attribute of every span."""
    sample_ratio: Share = 1.0
    """The share of new traces recorded (by trace id); a request whose client's traceparent says sampled or not
    follows its parent's decision."""
    otlp: OtlpConfig = field(default_factory=OtlpConfig)
    max_queue: Annotated[int, Strict(), Field(ge=1, le=10_000_000)] = 2048
    """Finished spans waiting for export; beyond, new ones are dropped (never the request)."""
    max_batch: Annotated[int, Strict(), Field(ge=1, le=100_000)] = 512
    """Spans in one export at most."""
    schedule_delay: Duration = 5.0
    """How long a span may wait for the next export."""
    resource: FrozenMap[Annotated[Str, BeforeValidator(_header_value)]] = field(default_factory=frozen_map)
    """More resource attributes of every span (deployment.environment.name: prod, service.namespace: ...)."""

    @check
    def installed_when_enabled(self) -> Found:
        if not self.enabled:
            return
        missing = missing_tracing_package("sdk")
        if missing is not None:
            yield "enabled", f"tracing needs the OpenTelemetry SDK ({missing}): pip install 'tollgate[tracing]'"
            return
        missing = missing_tracing_package(self.otlp.protocol)
        if missing is not None:
            yield (
                "otlp.protocol",
                f"the {self.otlp.protocol} exporter is not installed ({missing}): pip install 'tollgate[tracing]'",
            )

    @check
    def batch_fits_the_queue(self) -> Found:
        if self.max_batch > self.max_queue:
            yield "max_batch", "must not exceed max_queue"


@section
@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """The gateway's application logs on standard error (the access log is apart: access_log:)."""

    format: Literal["text", "json"] = "text"
    """json: one JSON object a line (time, level, logger, message, exception, and request_id and tenant on every
    line logged while a request is served; worker under --workers). The command line's --log-format (or
    $TOLLGATE_LOG_FORMAT) wins over this."""
    level: Literal["debug", "info", "warning", "error"] = "info"
    """The command line's --log-level wins over this."""
