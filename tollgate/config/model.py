"""The validated, immutable configuration: frozen dataclasses, one per section, read by the rest of the gateway.

Where the file writes a section exactly as the gateway reads it (``guard:``,
``server:``, an upstream's ``timeouts:``), the dataclass here is also the
model the file is validated against (:func:`~tollgate.config.validation.section`);
where the file's shape differs, a ``...Doc`` model declares the file's shape
and a build step makes these (see :mod:`tollgate.config.document`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import Field, Strict

from tollgate.config.accounting import AccountingConfig
from tollgate.config.admin import AdminAccess
from tollgate.config.cache import ResponseCacheConfig
from tollgate.config.database import DatabaseConfig
from tollgate.config.identity import DEFAULT_PLANS, ApiKey, IdentityConfig, Plan, RegistryConfig, Tenant
from tollgate.config.observability import LoggingConfig, TracingConfig
from tollgate.config.resilience import DeploymentLimits, ModelRouting, Resilience
from tollgate.config.rules import RulesConfig
from tollgate.config.scaling import ScalingConfig
from tollgate.config.store import StoreConfig
from tollgate.config.validation import Found, check, section
from tollgate.config.values import Bool, Duration, NonEmptyStr, OptionalDuration, Size, StrList, frozen_map

__all__ = [
    "DEFAULT_FORWARD_HEADERS",
    "AdminListener",
    "Config",
    "Deployment",
    "Guard",
    "Listener",
    "Listeners",
    "Model",
    "Pool",
    "Server",
    "StoreConfig",
    "Timeouts",
    "Upstream",
    "frozen_map",
]


# Client headers an upstream gets when its config names none: content negotiation and the client's software,
# nothing that changes who pays or how the provider treats the call (provider feature headers are opt-in).
DEFAULT_FORWARD_HEADERS = ("accept", "accept-language", "user-agent")
Port = Annotated[int, Strict(), Field(ge=0, le=65535)]


@section
@dataclass(frozen=True, slots=True)
class Listener:
    """Where clients connect (OpenAI-compatible API under /v1)."""

    host: NonEmptyStr = "127.0.0.1"
    port: Port = 8080
    trusted: Bool = False
    """True only when an authenticating proxy sits in front and is the only way in: then identity claims a
    client could write (header, subdomain, query) are accepted on their own."""
    trusted_proxies: StrList = ()
    """Proxies whose X-Forwarded-For is believed (IP addresses or CIDR networks; nginx in front, for example)."""

    @check
    def trusted_proxies_are_networks(self) -> Found:
        for i, cidr in enumerate(self.trusted_proxies):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                yield f"trusted_proxies[{i}]", f"{cidr!r} is not an IP address or CIDR network"


@dataclass(frozen=True, slots=True)
class AdminListener:
    host: str = "127.0.0.1"
    port: int = 8081
    enabled: bool = True
    # sha256 hex of the admin bearer token (``token`` in the file is hashed at load).
    token_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Listeners:
    public: Listener = Listener()
    admin: AdminListener = AdminListener()


@section
@dataclass(frozen=True, slots=True)
class Guard:
    """Checked before anything else, before the body is read."""

    max_body_bytes: Size = 1024 * 1024
    """Larger bodies get 413 without being read."""
    max_header_bytes: Size = 32 * 1024
    """Larger header blocks get 431."""
    max_upload_bytes: Size = 25 * 1024 * 1024
    """The body limit of file uploads (``multipart/form-data``: audio transcriptions) in place of
    ``max_body_bytes``; larger uploads get 413 without being read. OpenAI's own limit is 25 MiB."""


@section
@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: Duration = 5.0
    """TCP/TLS connect."""
    first_byte: Duration = 60.0
    """Until the response headers (non-streamed answers: the whole generation)."""
    idle: Duration = 30.0
    """Longest silence between two stream chunks."""
    total: Duration = 600.0
    """The whole exchange."""

    @check
    def total_covers_first_byte(self) -> Found:
        if self.total < self.first_byte:
            yield "total", "must be at least first_byte"


@section
@dataclass(frozen=True, slots=True)
class Pool:
    max_connections: Annotated[int, Strict(), Field(ge=1, le=100_000)] = 256
    """Connections open to this upstream at most; further requests wait for a free one."""
    keepalive: Duration = 30.0
    """An idle connection is closed after this long (keep it below the upstream's own idle timeout)."""
    resolve_every: OptionalDuration = None
    """Re-resolve base_url's host this often and spread new connections over every address it names (a Kubernetes
    headless Service: each replica of a scaled deployment gets traffic; connections to an address gone are closed).
    Absent: one connection per resolution, the system resolver's first address."""


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    base_url: str
    api_key: str | None = None
    # Where the credential goes: "authorization" (Bearer), "api-key" (always, for Azure), "x-api-key", or "none".
    auth_header: str = "authorization"
    # The API it speaks: "openai", "azure" or "anthropic" (tollgate/config/upstreams.py); Azure's api-version,
    # None for its v1 API.
    provider: str = "openai"
    api_version: str | None = None
    # anthropic only: the anthropic-version header, and whether untranslatable chat parameters are dropped.
    anthropic_version: str | None = None
    drop_unsupported: bool = False
    headers: Mapping[str, str] = field(default_factory=frozen_map)
    # Client headers sent on, lower-case: names, or prefixes ending in "*" (tollgate/config/upstreams.py).
    forward_headers: tuple[str, ...] = DEFAULT_FORWARD_HEADERS
    timeouts: Timeouts = Timeouts()
    pool: Pool = Pool()


@dataclass(frozen=True, slots=True)
class Deployment:
    upstream: str
    # Model name sent upstream; defaults to the public model name.
    model: str
    weight: int = 1
    limits: DeploymentLimits = field(default_factory=DeploymentLimits)
    # The request path of each OpenAI API path ("/chat/completions"...) where it is not that path itself under the
    # upstream's base URL (Azure: tollgate/config/upstreams.py azure_paths); None on an OpenAI-compatible upstream.
    paths: Mapping[str, str] | None = None
    # The max_tokens sent when the client gives none, where the upstream requires one (anthropic); else None.
    max_tokens: int | None = None
    # The upstream's provider (openai, azure, anthropic): who served, in the access log and the usage records.
    provider: str = "openai"


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    deployments: tuple[Deployment, ...]
    owned_by: str = "tollgate"
    created: int = 0
    routing: ModelRouting = field(default_factory=ModelRouting)


@section
@dataclass(frozen=True, slots=True)
class Server:
    """How a gateway process runs; read at start, so a change needs a restart."""

    shutdown_grace: Duration = 30.0
    """On SIGTERM: stop accepting, then let in-flight requests and streams run this long before cutting them."""
    head_timeout: Duration = 10.0
    """A request head must arrive within this long of its first byte (or of the connection's opening): else 408."""
    max_connections: Annotated[int, Strict(), Field(ge=1)] = 10_000
    """Open connections on the public listener, per process; past it new connections get 503 and are closed."""


@dataclass(frozen=True, slots=True)
class Config:
    listeners: Listeners
    guard: Guard
    upstreams: Mapping[str, Upstream]
    models: Mapping[str, Model]
    store: StoreConfig
    rules: RulesConfig = field(default_factory=RulesConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    plans: Mapping[str, Plan] = field(default_factory=lambda: DEFAULT_PLANS)
    tenants: Mapping[str, Tenant] = field(default_factory=frozen_map)
    api_keys: Mapping[str, ApiKey] = field(default_factory=frozen_map)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    resilience: Resilience = field(default_factory=Resilience)
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    server: Server = Server()
    tracing: TracingConfig = field(default_factory=TracingConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cache: ResponseCacheConfig = field(default_factory=ResponseCacheConfig)
    source: str = "<memory>"
    # The absolute folder relative state paths are read under (config file's data_dir, $TOLLGATE_DATA_DIR, or the
    # file's folder); None: relative paths stay relative to the working folder.
    data_dir: str | None = None
    # Who may use the admin API (listeners.admin.token is the principal "admin" here).
    admin: AdminAccess = field(default_factory=AdminAccess)

    @property
    def state_dir(self) -> Path | None:
        """The folder relative state paths are read under (see ``data_dir``), or None."""
        return None if self.data_dir is None else Path(self.data_dir)

    def state_path(self, path: str) -> Path:
        """A state file's ``path`` as the gateway opens it: as written when absolute, else under ``data_dir``."""
        p = Path(path)
        return p if p.is_absolute() or self.data_dir is None else Path(self.data_dir) / p
