"""The upstream connection pool: one client per upstream (keep-alive connections, the headers the gateway adds).

What a tenant sends reaches the upstream only through the upstream's
``forward_headers`` allow-list (tollgate/config/upstreams.py), minus the names
its ``Connection`` header lists; the gateway adds its own headers (credential,
organisation, ``X-Forwarded-For``, ``x-request-id``). They are built once per
upstream: an Azure upstream's credential is its ``api-key`` header (its config
says so, tollgate/config/upstreams.py), never ``Authorization``; an Anthropic
upstream's is ``x-api-key``, with its ``anthropic-version``. Each client
carries the bridges the forward stage sends each client dialect through
(tollgate/upstream/anthropic.py): ``dialect`` for OpenAI's (None when the
upstream speaks it), ``messages_bridge`` for Anthropic's. A reload keeps
the client of every upstream whose config did not change. With tracing on,
the clients write the gateway's trace context on every request (``inject``:
a ``TracedHttp``), in place of a ``traceparent`` a client's allow-listed
headers carried.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote

from multidict import CIMultiDictProxy

from tollgate.clock import Clock
from tollgate.config.model import Upstream
from tollgate.config.upstreams import CONNECTION_RELAY_HEADER, never_forwarded
from tollgate.edge.answers import REQUEST_ID_HEADER
from tollgate.upstream.anthropic import AnthropicDialect, AnthropicNative, Bridge, ChatForMessages
from tollgate.upstream.client import TracedHttp, UpstreamHttp
from tollgate.upstream.deadlines import Deadlines
from tollgate.upstream.redaction import secrets_of

__all__ = ["UpstreamClient", "UpstreamPool", "forwarded_headers", "probe_path", "upstream_head", "upstream_headers"]

# Connection values that name no other header (the common case: nothing to drop).
_PLAIN_CONNECTION = frozenset({"keep-alive", "close"})
# What a client header name is to an upstream (UpstreamClient.verdicts): it passes the allow-list (_PASSES), it is
# Connection or the relayed Connection of a proxy in front (_NAMES_HOPS), both, or neither (0).
_PASSES: Final = 1
_NAMES_HOPS: Final = 2
_VERDICTS_KEPT: Final = 256  # client header names whose verdict an upstream keeps (clients send a few dozen names)

# Rewrites an upstream request's headers when tracing is on: the gateway's trace context in them.
Inject = Callable[[list[tuple[str, str]]], list[tuple[str, str]]]


def probe_path(config: Upstream) -> str:
    """The provider's list of models under the upstream's base URL: what a health probe asks by default."""
    if config.provider == "anthropic":
        return "/v1/models"
    if config.provider == "azure":
        if config.api_version is None:
            return "/openai/v1/models"
        return f"/openai/models?api-version={quote(config.api_version, safe='')}"
    return "/models"


class UpstreamClient:
    """An upstream's pooled keep-alive connections, the headers the gateway adds to every call, and which client headers pass."""

    __slots__ = (
        "config",
        "http",
        "fixed_headers",
        "fixed_lines",
        "fixed_names",
        "forward_names",
        "forward_prefixes",
        "verdicts",
        "secrets",
        "deadlines",
        "dialect",
        "messages_bridge",
        "probe_path",
        "inject",
    )

    def __init__(self, config: Upstream, deadlines: Deadlines | None = None, inject: Inject | None = None) -> None:
        self.config = config
        self.http: UpstreamHttp | None = None
        self.deadlines = deadlines or Deadlines()
        self.inject = inject
        # The body's type first: an upload's own (see upstream_headers) takes its place.
        fixed: list[tuple[str, str]] = [("Content-Type", "application/json")]
        if not any(name.lower() == "accept-encoding" for name in config.headers):
            # identity: the answer is parsed (usage) and relayed; a compressed one would only be inflated here.
            fixed.append(("Accept-Encoding", "identity"))
        if config.api_key and config.auth_header != "none":
            if config.auth_header == "authorization":
                fixed.append(("Authorization", f"Bearer {config.api_key}"))
            else:
                fixed.append((config.auth_header, config.api_key))
        if config.anthropic_version is not None:
            fixed.append(("anthropic-version", config.anthropic_version))
        fixed.extend(config.headers.items())
        # How OpenAI-dialect requests reach this upstream: None when it speaks OpenAI's dialect (openai, azure).
        self.dialect: Bridge | None = None
        # How Anthropic Messages requests reach it: as they came, or as chat completions.
        self.messages_bridge: Bridge
        if config.provider == "anthropic":
            self.dialect = AnthropicDialect(config.drop_unsupported)
            self.messages_bridge = AnthropicNative()
        else:
            self.messages_bridge = ChatForMessages(config.drop_unsupported)
        self.fixed_headers = tuple(fixed)
        self.fixed_lines = "".join(f"{name}: {value}\r\n" for name, value in fixed)  # as UpstreamHttp writes them
        self.fixed_names = frozenset(name.lower() for name, _ in fixed)
        # The allow-list, checked against never_forwarded() once here for names, per header for prefixes.
        allowed = [name for name in config.forward_headers if not name.endswith("*")]
        self.forward_names = frozenset(n for n in allowed if not never_forwarded(n) and n not in self.fixed_names)
        self.forward_prefixes = tuple(name[:-1] for name in config.forward_headers if name.endswith("*"))
        # Client header name, as the client wrote it -> its verdict (see _verdict): the same few names on every
        # request, judged once rather than lower-cased and looked up each time.
        self.verdicts: dict[str, int] = {}
        self.secrets = secrets_of(config.api_key, config.headers.items())
        # Where a health probe asks, unless the config names a path: the provider's list of models.
        self.probe_path = probe_path(config)

    async def start(self) -> None:
        pool = self.config.pool
        options: dict[str, Any] = {
            "max_connections": pool.max_connections,
            "keepalive": pool.keepalive,
            "connect_timeout": self.config.timeouts.connect,
            "resolve_every": pool.resolve_every,
        }
        if self.inject is None:
            self.http = UpstreamHttp(self.config.base_url, **options)
        else:
            self.http = TracedHttp(self.config.base_url, inject=self.inject, **options)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


class UpstreamPool:
    """The live upstream clients; a reload keeps the sessions whose upstream config did not change."""

    def __init__(self, clock: Clock | None = None, inject: Inject | None = None) -> None:
        """``inject``: the trace context written on every upstream request, when tracing is on."""
        self.inject = inject
        self.clients: dict[str, UpstreamClient] = {}
        self._retired: list[UpstreamClient] = []
        # One sweep for every upstream call's timeouts (see tollgate/upstream/deadlines.py), on the clock's loop time.
        self.deadlines = Deadlines(now=clock.loop_time if clock is not None else None)

    async def apply(self, upstreams: Mapping[str, Upstream]) -> None:
        fresh: dict[str, UpstreamClient] = {}
        for name, cfg in upstreams.items():
            old = self.clients.get(name)
            if old is not None and old.config == cfg:
                fresh[name] = old
                continue
            client = UpstreamClient(cfg, self.deadlines, self.inject)
            await client.start()
            fresh[name] = client
        # Sessions that left the config may still carry in-flight requests:
        # keep them until shutdown rather than cutting those requests.
        self._retired.extend(c for name, c in self.clients.items() if fresh.get(name) is not c)
        self.clients = fresh

    async def close(self) -> None:
        for client in [*self.clients.values(), *self._retired]:
            await client.close()
        self.clients = {}
        self._retired = []
        self.deadlines.close()


def upstream_headers(
    client: UpstreamClient,
    headers: CIMultiDictProxy[str],
    client_ip: str,
    request_id: str,
    content_type: str | None = None,
) -> list[tuple[str, str]]:
    """The client headers the upstream's allow-list lets through (minus those named in ``Connection``), plus ours.

    ``client_ip`` is the address the gateway settled on (trusted proxies only, tollgate/identity/chain.py);
    ``content_type`` the body's when it is not JSON (an upload's ``multipart/form-data`` with its boundary).
    """
    out = forwarded_headers(client, headers)
    if content_type is None:
        out.extend(client.fixed_headers)
    else:
        out.append(("Content-Type", content_type))
        out.extend(client.fixed_headers[1:])  # all but the JSON Content-Type, first of them
    out.append(("X-Forwarded-For", client_ip))  # a client's own claim stays here
    out.append((REQUEST_ID_HEADER, request_id))
    return out


def upstream_head(
    client: UpstreamClient, headers: CIMultiDictProxy[str], client_ip: str, request_id: str
) -> tuple[list[tuple[str, str]], str]:
    """What :func:`upstream_headers` makes for a JSON body, as ``UpstreamHttp.request`` takes it without a list
    of its own for the gateway's headers: the client's headers let through, and ours as header lines."""
    tail = f"{client.fixed_lines}X-Forwarded-For: {client_ip}\r\n{REQUEST_ID_HEADER}: {request_id}\r\n"
    return forwarded_headers(client, headers), tail


def forwarded_headers(client: UpstreamClient, headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    """The client headers the upstream's allow-list lets through, minus those named in ``Connection``."""
    verdicts = client.verdicts
    out: list[tuple[str, str]] = []
    hops = False  # a Connection header (or the relayed one) is there: what it names is dropped below
    for name, value in headers.items():
        verdict = verdicts.get(name)
        if verdict is None:
            verdict = _verdict(client, name)
        if verdict & _PASSES:
            out.append((name, value))
        if verdict & _NAMES_HOPS:
            hops = True
    if out and hops:
        connection = headers.getall("Connection", None)
        relayed = headers.getall(CONNECTION_RELAY_HEADER, None) if CONNECTION_RELAY_HEADER in headers else None
        if relayed is not None or (
            connection is not None and (len(connection) > 1 or connection[0].lower() not in _PLAIN_CONNECTION)
        ):
            named = _connection_named(connection or (), relayed or ())
            out = [(name, value) for name, value in out if name.lower() not in named]
    return out


def _verdict(client: UpstreamClient, name: str) -> int:
    """Whether a client header ``name`` passes the upstream's allow-list, and whether it is one that names
    hop-by-hop headers; kept in ``client.verdicts`` (the first :data:`_VERDICTS_KEPT` names)."""
    lower = name.lower()
    verdict = 0
    prefixes = client.forward_prefixes
    if lower in client.forward_names or (
        prefixes and lower.startswith(prefixes) and not never_forwarded(lower) and lower not in client.fixed_names
    ):
        verdict = _PASSES
    if lower == "connection" or lower == CONNECTION_RELAY_HEADER:
        verdict |= _NAMES_HOPS
    if len(client.verdicts) < _VERDICTS_KEPT:
        client.verdicts[name] = verdict
    return verdict


def _connection_named(connection: Sequence[str], relayed: Sequence[str]) -> frozenset[str]:
    """Header names a client listed in ``Connection``: hop-by-hop, for this hop only. nginx relays its client's."""
    return frozenset(token.strip().lower() for value in (*connection, *relayed) for token in value.split(","))
