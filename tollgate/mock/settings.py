"""The mock upstream's knobs: instance-wide settings, their CLI flags, and per-request ``x-mock-*`` overrides."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["HEADER_PREFIX", "MockSettings", "add_arguments", "knobs_for", "settings_from_args"]

HEADER_PREFIX = "x-mock-"


@dataclass(frozen=True, slots=True)
class MockSettings:
    """Instance-wide behaviour of the mock; the fault knobs can be overridden per request by ``x-mock-*`` headers."""

    latency_ms: float = 0.0
    tokens_per_second: float = 0.0
    status: int = 0
    error_rate: float = 0.0
    error_status: int = 500
    retry_after: int = 1
    cut_after: int | None = None
    stall_after: int | None = None
    malformed_after: int | None = None
    # Anthropic's Messages streams only: after N events send an ``event: error`` of ``error_status``'s type and end.
    error_after: int | None = None
    completion_tokens: int | None = None
    # Shapes some OpenAI-compatible proxies send: the usage chunk with ``choices: [{"index": 0, "delta": {}}]``
    # instead of ``choices: []``, and the body ended a while after ``data: [DONE]``.
    usage_chunk_delta: bool = False
    linger_after_done_ms: float = 0.0
    seed: int | None = None
    default_tokens: int = 16
    max_tokens_cap: int = 4096
    tokens_per_chunk: int = 1
    embedding_dim: int = 1536
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")
    record: bool = True
    record_limit: int = 1000
    # The key Azure's routes (/openai/...) expect in the api-key header; None: any key, or none, passes.
    azure_api_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problems = []
        if self.latency_ms < 0 or self.linger_after_done_ms < 0:
            problems.append("latency_ms and linger_after_done_ms must be >= 0")
        if self.tokens_per_second < 0:
            problems.append("tokens_per_second must be >= 0")
        if self.status and not 400 <= self.status <= 599:
            problems.append("status must be 0 (off) or an error status 400..599")
        if not 0.0 <= self.error_rate <= 1.0:
            problems.append("error_rate must be within 0..1")
        if not 400 <= self.error_status <= 599:
            problems.append("error_status must be 400..599")
        for name in ("retry_after", "cut_after", "stall_after", "malformed_after", "error_after", "completion_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                problems.append(f"{name} must be >= 0")
        if self.default_tokens < 0 or self.max_tokens_cap < 1 or self.tokens_per_chunk < 1:
            problems.append("default_tokens must be >= 0, max_tokens_cap and tokens_per_chunk >= 1")
        if self.azure_api_key is not None and not self.azure_api_key:
            problems.append("azure_api_key must be None (any key passes) or a non-empty key")
        if self.embedding_dim < 1 or self.record_limit < 1:
            problems.append("embedding_dim and record_limit must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))


# Per-request overrides: header name (lowercase bytes, as in raw_headers) -> (setting, parser).
_KNOB_FIELDS: Mapping[str, Callable[[str], Any]] = MappingProxyType(
    {
        "latency_ms": float,
        "tokens_per_second": float,
        "status": int,
        "error_rate": float,
        "error_status": int,
        "retry_after": int,
        "cut_after": int,
        "stall_after": int,
        "malformed_after": int,
        "error_after": int,
        "completion_tokens": int,
        "usage_chunk_delta": lambda text: text.lower() in ("1", "true", "yes", "on"),
        "linger_after_done_ms": float,
    }
)
_HEADER_KNOBS: Mapping[bytes, str] = MappingProxyType(
    {(HEADER_PREFIX + name.replace("_", "-")).encode(): name for name in _KNOB_FIELDS}
)
_PREFIX_BYTES = HEADER_PREFIX.encode()


def knobs_for(raw_headers: Iterable[tuple[bytes, bytes]], settings: MockSettings) -> MockSettings:
    """The instance settings with this request's ``x-mock-*`` overrides applied (ValueError if one is bad)."""
    overrides: dict[str, Any] | None = None
    for name, value in raw_headers:
        if name[:7].lower() == _PREFIX_BYTES:
            knob = _HEADER_KNOBS.get(name.lower())
            if knob is None:
                raise ValueError(f"unknown mock header {name.decode(errors='replace')!r}")
            if overrides is None:
                overrides = {}
            text = value.decode(errors="replace").strip()
            overrides[knob] = (
                None if text.lower() in ("", "none", "off") and knob.endswith("_after") else _KNOB_FIELDS[knob](text)
            )
    if overrides is None:
        return settings
    return dataclasses.replace(settings, **overrides)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``MockSettings`` fields as ``--flags`` (host and port are the caller's)."""
    d = MockSettings()
    g = parser.add_argument_group(
        "mock upstream behaviour (each fault knob also settable per request by an x-mock-* header)"
    )
    g.add_argument("--latency-ms", type=float, default=d.latency_ms, help="delay before the first byte")
    g.add_argument("--tokens-per-second", type=float, default=d.tokens_per_second, help="stream pacing; 0 = unpaced")
    g.add_argument("--status", type=int, default=d.status, help="answer every request with this status (0 = off)")
    g.add_argument("--error-rate", type=float, default=d.error_rate, help="fraction 0..1 of requests that fail")
    g.add_argument("--error-status", type=int, default=d.error_status, help="status of --error-rate failures")
    g.add_argument("--retry-after", type=int, default=d.retry_after, help="Retry-After seconds sent with 429")
    g.add_argument("--cut-after", type=int, default=d.cut_after, help="close streams abruptly after N events")
    g.add_argument("--stall-after", type=int, default=d.stall_after, help="stall streams after N events")
    g.add_argument(
        "--malformed-after", type=int, default=d.malformed_after, help="send a non-JSON SSE event after N events"
    )
    g.add_argument(
        "--error-after",
        type=int,
        default=d.error_after,
        help="Anthropic streams: send an error event after N events, then end",
    )
    g.add_argument("--completion-tokens", type=int, default=d.completion_tokens, help="generate exactly N tokens")
    g.add_argument("--usage-chunk-delta", action="store_true", help='usage chunk with choices [{"index":0,"delta":{}}]')
    g.add_argument(
        "--linger-after-done-ms",
        type=float,
        default=d.linger_after_done_ms,
        help="end stream bodies this long after [DONE]",
    )
    g.add_argument("--seed", type=int, default=d.seed, help="seed of the --error-rate RNG")
    g.add_argument("--default-tokens", type=int, default=d.default_tokens, help="tokens generated without max_tokens")
    g.add_argument("--max-tokens-cap", type=int, default=d.max_tokens_cap, help="upper bound on generated tokens")
    g.add_argument("--tokens-per-chunk", type=int, default=d.tokens_per_chunk, help="tokens per stream content delta")
    g.add_argument("--embedding-dim", type=int, default=d.embedding_dim, help="embedding vector length")
    g.add_argument("--models", default=",".join(d.models), help="comma-separated names listed by /v1/models")
    g.add_argument("--no-record", dest="record", action="store_false", help="do not record requests (benchmarks)")
    g.add_argument("--record-limit", type=int, default=d.record_limit, help="recorded requests kept")
    g.add_argument(
        "--azure-api-key",
        default=d.azure_api_key,
        help="key the Azure routes (/openai/...) expect in the api-key header (default: any key passes)",
    )


def settings_from_args(ns: argparse.Namespace) -> MockSettings:
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(MockSettings) if hasattr(ns, f.name)}
    if isinstance(values.get("models"), str):
        values["models"] = tuple(m.strip() for m in values["models"].split(",") if m.strip())
    return MockSettings(**values)
