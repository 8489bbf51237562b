"""Turn a YAML document into a validated :class:`Config`, naming the field path of every problem."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from tollgate.config.accounting import parse_accounting
from tollgate.config.identity import parse_identity_sections
from tollgate.config.model import (
    AdminListener,
    Config,
    Deployment,
    Guard,
    Listener,
    Listeners,
    Model,
    Server,
    Upstream,
    frozen_map,
)
from tollgate.config.reader import Node, Problems
from tollgate.config.resilience import check_model_graph, parse_deployment_limits, parse_model_routing, parse_resilience
from tollgate.config.rules import parse_rules
from tollgate.config.store import parse_store
from tollgate.config.upstreams import parse_upstream

__all__ = ["parse_config"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")
_DEFAULT_GUARD = Guard()


def parse_config(doc: Any, problems: Problems, *, source: str = "<memory>") -> Config:
    root = Node(doc, "", problems)
    root.int("version", 1, min=1, max=1)
    listeners = _listeners(root.child("listeners"))
    guard = _guard(root.child("guard"))
    store = parse_store(root.child("store"))
    server = _server(root.child("server"))
    upstreams = {name: parse_upstream(name, node) for name, node in root.named("upstreams", name_pattern=NAME)}
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
