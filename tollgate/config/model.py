"""The validated, immutable configuration: plain frozen dataclasses, one per section."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from tollgate.config.accounting import AccountingConfig
from tollgate.config.identity import DEFAULT_PLANS, ApiKey, IdentityConfig, Plan, RegistryConfig, Tenant
from tollgate.config.resilience import DeploymentLimits, ModelRouting, Resilience
from tollgate.config.rules import RulesConfig
from tollgate.config.store import StoreConfig

__all__ = [
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
]


# Client headers an upstream gets when its config names none: content negotiation and the client's software,
# nothing that changes who pays or how the provider treats the call (provider feature headers are opt-in).
DEFAULT_FORWARD_HEADERS = ("accept", "accept-language", "user-agent")


def frozen_map(d: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(d or {}))


@dataclass(frozen=True, slots=True)
class Listener:
    host: str = "127.0.0.1"
    port: int = 8080
    # A trusted listener sits behind an authenticating proxy: identity claims
    # that a client could forge (header, subdomain, query) are accepted alone.
    trusted: bool = False
    # Proxies whose X-Forwarded-For is believed (CIDR strings).
    trusted_proxies: tuple[str, ...] = ()


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


@dataclass(frozen=True, slots=True)
class Guard:
    max_body_bytes: int = 1024 * 1024
    max_header_bytes: int = 32 * 1024


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    first_byte: float = 60.0
    idle: float = 30.0
    total: float = 600.0


@dataclass(frozen=True, slots=True)
class Pool:
    max_connections: int = 256
    keepalive: float = 30.0


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    base_url: str
    api_key: str | None = None
    # Where the credential goes: "authorization" (Bearer), "api-key" (Azure), "x-api-key", or "none".
    auth_header: str = "authorization"
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
    limits: DeploymentLimits = DeploymentLimits()


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    deployments: tuple[Deployment, ...]
    owned_by: str = "tollgate"
    created: int = 0
    routing: ModelRouting = ModelRouting()


@dataclass(frozen=True, slots=True)
class Server:
    """How a gateway process runs; read at start, so a change needs a restart."""

    # On SIGTERM: stop accepting, then let in-flight requests and streams run this long before cutting them.
    shutdown_grace: float = 30.0
    # A request head must arrive within this long of its first byte (or of the connection's opening): else 408.
    head_timeout: float = 10.0
    # Open connections on the public listener, per process; past it new connections get 503 and are closed.
    max_connections: int = 10_000


@dataclass(frozen=True, slots=True)
class Config:
    listeners: Listeners
    guard: Guard
    upstreams: Mapping[str, Upstream]
    models: Mapping[str, Model]
    store: StoreConfig
    rules: RulesConfig = RulesConfig()
    identity: IdentityConfig = IdentityConfig()
    plans: Mapping[str, Plan] = field(default_factory=lambda: DEFAULT_PLANS)
    tenants: Mapping[str, Tenant] = field(default_factory=frozen_map)
    api_keys: Mapping[str, ApiKey] = field(default_factory=frozen_map)
    registry: RegistryConfig = RegistryConfig()
    resilience: Resilience = Resilience()
    accounting: AccountingConfig = AccountingConfig()
    server: Server = Server()
    source: str = "<memory>"
