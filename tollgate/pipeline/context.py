"""The request context: what each pipeline stage hands to the next."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tollgate.edge.dialects import ANTHROPIC, OPENAI, RESPONSES, Dialect

if TYPE_CHECKING:
    from tollgate.config.model import Deployment
    from tollgate.edge.messages import Request
    from tollgate.identity import Principal
    from tollgate.policy.admission import Admission
    from tollgate.policy.response_cache import CacheHit, Tape
    from tollgate.upstream.sse import StreamMonitor
    from tollgate.upstream.usage import Usage

__all__ = ["DEFAULT_MODERATION_MODEL", "ENDPOINTS", "Endpoint", "RequestContext"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One proxied route: its public path, the suffix appended to an OpenAI-dialect upstream's base URL, its client's dialect.

    An Anthropic Messages request goes to an OpenAI-dialect upstream as a chat completion (hence its suffix);
    ``count_tokens`` is answered by an Anthropic upstream, or by the gateway's own estimate.
    A ``multipart`` route takes a ``multipart/form-data`` upload (forwarded as it came) instead of JSON;
    ``default_model`` is the model a request without one is routed as (its body left as it is).
    """

    path: str
    upstream_suffix: str
    # "chat" | "completion" | "embedding" | "responses" | "messages" | "count_tokens" | "image" | "speech"
    # | "transcription" | "moderation"
    kind: str
    streams: bool
    dialect: Dialect = OPENAI
    multipart: bool = False
    default_model: str | None = None


# OpenAI's model for a moderation request that names none (its API's documented default).
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"


ENDPOINTS: dict[str, Endpoint] = {
    e.path: e
    for e in (
        Endpoint("/v1/chat/completions", "/chat/completions", "chat", True),
        Endpoint("/v1/completions", "/completions", "completion", True),
        Endpoint("/v1/embeddings", "/embeddings", "embedding", False),
        Endpoint("/v1/responses", "/responses", "responses", True, RESPONSES),
        Endpoint("/v1/messages", "/chat/completions", "messages", True, ANTHROPIC),
        Endpoint("/v1/messages/count_tokens", "/chat/completions", "count_tokens", False, ANTHROPIC),
        Endpoint("/v1/images/generations", "/images/generations", "image", False),
        Endpoint("/v1/audio/speech", "/audio/speech", "speech", False),
        Endpoint("/v1/audio/transcriptions", "/audio/transcriptions", "transcription", False, multipart=True),
        Endpoint("/v1/moderations", "/moderations", "moderation", False, default_model=DEFAULT_MODERATION_MODEL),
    )
}


class RequestContext:
    """Mutable per-request state. Each stage fills its own fields and reads only earlier stages' fields.

    The config version a request runs under is not here: the handler hands each stage its dependencies
    from the one version it read when the request arrived.
    """

    __slots__ = (
        "request",
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
        # match: the namespace, and the priority from the tenant's plan; higher = more important (shedding, queues)
        "namespace",
        "priority",
        # admit: what the limits decided, and a stream's monitor (usage, budgets)
        "admission",
        "stream_monitor",
        # route and forward: attempts made, the model first asked for when a fallback served, the upstream
        # a request must go to (the one storing the Responses API conversation it continues)
        "attempts",
        "pinned_upstream",
        "fallback_from",
        # forward: the model (and the deployment of it) that served
        "model_served",
        "deployment",
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
        # response cache: the stream's bytes recorded on a miss, and what a hit replayed (tollgate/pipeline/cache.py)
        "cache_tape",
        "cache_hit",
    )

    def __init__(
        self,
        request: Request,
        request_id: str,
        endpoint: Endpoint | None,
        started: float,
        client_ip: str,
    ) -> None:
        self.request = request
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
        self.attempts = 0
        self.pinned_upstream: str | None = None
        self.fallback_from: str | None = None
        self.stream_monitor: StreamMonitor | None = None
        self.model_served: str | None = None
        self.deployment: Deployment | None = None
        self.upstream_name: str | None = None
        self.status = 0
        self.first_byte_at: float | None = None
        self.finished_at: float | None = None
        self.bytes_out = 0
        self.usage: Usage | None = None
        self.error: str | None = None
        self.client_disconnected = False
        self.stream_complete = False
        self.cache_tape: Tape | None = None
        self.cache_hit: CacheHit | None = None
