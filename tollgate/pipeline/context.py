"""The request context: what each pipeline stage hands to the next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tollgate.edge.messages import Request
    from tollgate.identity import Principal
    from tollgate.policy.admission import Admission
    from tollgate.runtime.state import Runtime
    from tollgate.upstream.sse import StreamMonitor

__all__ = ["ENDPOINTS", "Endpoint", "RequestContext", "Usage"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One proxied OpenAI route: its public path and the suffix appended to an upstream's base URL."""

    path: str
    upstream_suffix: str
    kind: str  # "chat" | "completion" | "embedding"
    streams: bool


ENDPOINTS: dict[str, Endpoint] = {
    e.path: e
    for e in (
        Endpoint("/v1/chat/completions", "/chat/completions", "chat", True),
        Endpoint("/v1/completions", "/completions", "completion", True),
        Endpoint("/v1/embeddings", "/embeddings", "embedding", False),
    )
}


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # True when the numbers come from the upstream; False when we estimated them.
    reported: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class RequestContext:
    """Mutable per-request state. Each stage fills its own fields and reads only earlier stages' fields."""

    __slots__ = (
        "request",
        "runtime",
        "request_id",
        "endpoint",
        "started",
        "client_ip",
        # guard
        "body_bytes",
        "body",
        "model",
        "stream",
        # identify: the authenticated principal, and the end user inside its tenant (identity/end_user.py)
        "principal",
        "end_user",
        # match, admit
        "namespace",
        "admission",
        # admit: set from the tenant's plan by a later stage; higher = more important (shedding, queues)
        "priority",
        # route
        "deployments",
        # forward: attempts made, the model first asked for when a fallback served, per-stream SSE monitor
        "attempts",
        "fallback_from",
        "stream_monitor",
        # forward
        "model_served",
        "upstream_name",
        "status",
        "first_byte_at",
        "finished_at",
        "bytes_out",
        "usage",
        "error",
        "client_disconnected",
        # a stream whose terminator reached the client: its client leaving afterwards is no disconnect
        "stream_complete",
    )

    def __init__(
        self,
        request: Request,
        runtime: Runtime,
        request_id: str,
        endpoint: Endpoint | None,
        started: float,
        client_ip: str,
    ) -> None:
        self.request = request
        self.runtime = runtime
        self.request_id = request_id
        self.endpoint = endpoint
        self.started = started
        self.client_ip = client_ip
        self.body_bytes: bytes = b""
        self.body: dict[str, Any] | None = None
        self.model: str | None = None
        self.stream = False
        self.principal: Principal | None = None
        self.end_user: str | None = None
        self.namespace = "default"
        self.admission: Admission | None = None
        self.priority = 0
        self.deployments: tuple[Any, ...] = ()
        self.attempts = 0
        self.fallback_from: str | None = None
        self.stream_monitor: StreamMonitor | None = None
        self.model_served: str | None = None
        self.upstream_name: str | None = None
        self.status = 0
        self.first_byte_at: float | None = None
        self.finished_at: float | None = None
        self.bytes_out = 0
        self.usage: Usage | None = None
        self.error: str | None = None
        self.client_disconnected = False
        self.stream_complete = False
