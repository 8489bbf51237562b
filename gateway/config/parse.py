"""Turn a YAML document into a validated :class:`Config`, naming the field path of every problem."""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

from .model import (
    AdminListener,
    Config,
    Deployment,
    Guard,
    Listener,
    Listeners,
    Model,
    Pool,
    Server,
    Timeouts,
    Upstream,
    frozen_map,
)
from .identity import parse_identity_sections
from .reader import Node, Problems
from .resilience import check_model_graph, parse_deployment_limits, parse_model_routing, parse_resilience
from .accounting import parse_accounting
from .rules import parse_rules
from .store import parse_store

__all__ = ["parse_config"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")
AUTH_HEADERS = ("authorization", "api-key", "x-api-key", "none")
_DEFAULT_GUARD = Guard()
_DEFAULT_TIMEOUTS = Timeouts()
_DEFAULT_POOL = Pool()


def parse_config(doc: Any, problems: Problems, *, source: str = "<memory>") -> Config:
    root = Node(doc, "", problems)
    root.int("version", 1, min=1, max=1)
    listeners = _listeners(root.child("listeners"))
    guard = _guard(root.child("guard"))
    store = parse_store(root.child("store"))
    server = _server(root.child("server"))
    upstreams = {name: _upstream(name, node) for name, node in root.named("upstreams", name_pattern=NAME)}
    if not upstreams:
        root.error("upstreams", "at least one upstream is required")
    models = {name: _model(name, node, upstreams) for name, node in root.named("models", name_pattern=MODEL_NAME)}
    if not models:
        root.error("models", "at least one model is required")
    check_model_graph(models, problems)
    resilience = parse_resilience(root.child("resilience"))
    rules = parse_rules(root, problems)
    ident = parse_identity_sections(root, models, listeners)
    accounting = parse_accounting(root, models)
    root.finish()
    return Config(
        listeners=listeners,
        guard=guard,
        upstreams=frozen_map(upstreams),
        models=frozen_map(models),
        store=store,
        rules=rules,
        resilience=resilience,
        identity=ident.identity,
        plans=ident.plans,
        tenants=ident.tenants,
        api_keys=ident.api_keys,
        registry=ident.registry,
        accounting=accounting,
        server=server,
        source=source,
    )


_DEFAULT_SERVER = Server()


def _server(node: Node) -> Server:
    server = Server(
        shutdown_grace=node.duration("shutdown_grace", _DEFAULT_SERVER.shutdown_grace),
        head_timeout=node.duration("head_timeout", _DEFAULT_SERVER.head_timeout),
        max_connections=node.int("max_connections", _DEFAULT_SERVER.max_connections, min=1),
    )
    node.finish()
    return server


def _listener_address(node: Node, default_port: int) -> tuple[str, int]:
    host = node.str("host", "127.0.0.1")
    port = node.int("port", default_port, min=0, max=65535)
    return host, port


def _listeners(node: Node) -> Listeners:
    pub = node.child("public")
    host, port = _listener_address(pub, 8080)
    public = Listener(
        host=host,
        port=port,
        trusted=pub.bool("trusted", False),
        trusted_proxies=pub.str_list("trusted_proxies", ()),
    )
    pub.finish()
    adm = node.child("admin")
    host, port = _listener_address(adm, 8081)
    token = adm.str("token", None)
    token_sha256 = adm.str("token_sha256", None, pattern=re.compile(r"[0-9a-f]{64}"))
    if token is not None and token_sha256 is not None:
        adm.error("token", "give token or token_sha256, not both")
    if token is not None:
        if len(token) < 16:
            adm.error("token", "must be at least 16 characters")
        token_sha256 = hashlib.sha256(token.encode()).hexdigest()
    admin = AdminListener(host=host, port=port, enabled=adm.bool("enabled", True), token_sha256=token_sha256)
    adm.finish()
    if admin.enabled and (public.host, public.port) == (admin.host, admin.port) and public.port != 0:
        node.error("admin.port", "the admin listener must not share the public listener's address")
    node.finish()
    return Listeners(public=public, admin=admin)


def _guard(node: Node) -> Guard:
    g = Guard(
        max_body_bytes=node.size("max_body_bytes", _DEFAULT_GUARD.max_body_bytes),
        max_header_bytes=node.size("max_header_bytes", _DEFAULT_GUARD.max_header_bytes),
    )
    node.finish()
    return g


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_BREAKS_HEADER = re.compile(r"[\r\n\x00]")


def _upstream(name: str, node: Node) -> Upstream:
    base_url = node.str("base_url")
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            node.error("base_url", "must be an absolute http:// or https:// URL")
        elif parts.query or parts.fragment:
            node.error("base_url", "must not carry a query or fragment")
        base_url = base_url.rstrip("/")
    auth_header = node.str("auth_header", "authorization", choices=AUTH_HEADERS)
    api_key = node.str("api_key", None, nonempty=False) or None
    headers = node.str_map("headers")
    for h, value in headers.items():
        if h.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            node.error(f"headers.{h}", "is set by the gateway and cannot be configured")
        elif not _HEADER_NAME.fullmatch(h):
            node.error(f"headers.{h}", "is not a valid header name")
        elif _BREAKS_HEADER.search(value):
            node.error(f"headers.{h}", "must not contain CR, LF or NUL (it would break the request sent upstream)")
    if api_key is not None and _BREAKS_HEADER.search(api_key):
        # A secret read from a file often ends with a newline: refuse it rather than send a broken request.
        node.error("api_key", "must not contain CR, LF or NUL (check for a trailing newline in the secret)")
    t = node.child("timeouts")
    timeouts = Timeouts(
        connect=t.duration("connect", _DEFAULT_TIMEOUTS.connect),
        first_byte=t.duration("first_byte", _DEFAULT_TIMEOUTS.first_byte),
        idle=t.duration("idle", _DEFAULT_TIMEOUTS.idle),
        total=t.duration("total", _DEFAULT_TIMEOUTS.total),
    )
    if timeouts.total < timeouts.first_byte:
        t.error("total", "must be at least first_byte")
    t.finish()
    p = node.child("pool")
    pool = Pool(
        max_connections=p.int("max_connections", _DEFAULT_POOL.max_connections, min=1, max=100_000),
        keepalive=p.duration("keepalive", _DEFAULT_POOL.keepalive),
    )
    p.finish()
    node.finish()
    return Upstream(
        name=name,
        base_url=base_url or "",
        api_key=api_key,
        auth_header=auth_header,
        headers=frozen_map(headers),
        timeouts=timeouts,
        pool=pool,
    )


def _model(name: str, node: Node, upstreams: dict[str, Upstream]) -> Model:
    deployments: list[Deployment] = []
    for _i, item, path in node.items("deployments"):
        d = Node(item, path, node.problems)
        upstream = d.str("upstream")
        if upstream is not None and upstream not in upstreams:
            known = ", ".join(sorted(upstreams)) or "none"
            d.error("upstream", f"unknown upstream {upstream!r} (known: {known})")
        deployments.append(
            Deployment(
                upstream=upstream or "",
                model=d.str("model", name, pattern=MODEL_NAME),
                weight=d.int("weight", 1, min=0, max=1_000_000),
                limits=parse_deployment_limits(d),
            )
        )
        if any((x.upstream, x.model) == (upstream, deployments[-1].model) for x in deployments[:-1]):
            d.error("", "duplicates an earlier deployment of this model (same upstream and model)")
        d.finish()
    if not deployments:
        node.error("deployments", "at least one deployment is required")
    model = Model(
        name=name,
        deployments=tuple(deployments),
        owned_by=node.str("owned_by", "tollgate"),
        created=node.int("created", 0, min=0),
        routing=parse_model_routing(node),
    )
    node.finish()
    return model
