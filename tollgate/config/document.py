"""The config file as one model (:class:`ConfigDoc`): its sections, the checks across them, and the build of a Config."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, Strict

from tollgate.config.accounting import AccountingSections, build_accounting, priced_model_problems
from tollgate.config.admin import AdminDoc, build_admin
from tollgate.config.cache import ResponseCacheConfig
from tollgate.config.catalog import MODEL_NAME, ModelDoc, build_model, provider_field_problems
from tollgate.config.chain import IdentityDoc, RegistryDoc, build_identity, build_registry
from tollgate.config.database import DatabaseConfig
from tollgate.config.flow_lines import FlowSection
from tollgate.config.identity import (
    DEFAULT_PLANS,
    HEX64,
    ApiKey,
    PlanDoc,
    PlanName,
    Tenant,
    TenantDoc,
    TenantId,
    build_key,
    build_plan,
    build_tenant,
    key_secret_problems,
    tenant_ref_problems,
)
from tollgate.config.model import AdminListener, Config, Guard, Listener, Listeners, Port, Server
from tollgate.config.observability import LoggingConfig, TracingConfig
from tollgate.config.resilience import Resilience, fallback_graph_problems
from tollgate.config.rules import NAME, RulesSections, build_rules
from tollgate.config.scaling import ScalingConfig, pool_ref_problems
from tollgate.config.store import StoreDoc, build_store
from tollgate.config.tenant_rows import KeyRows, TenantRows
from tollgate.config.tenant_table import read_tenants
from tollgate.config.upstreams import UpstreamDoc, build_upstream
from tollgate.config.validation import Doc, Found, Problems, check, validate
from tollgate.config.values import Bool, NonEmptyStr, Str, frozen_map, matching

__all__ = ["AdminListenerDoc", "ConfigDoc", "ListenersDoc", "build_config", "parse_config"]


class AdminListenerDoc(Doc):
    """The operator API (tenants, keys, reload, metrics): keep it on loopback or a private interface; it is never
    served on the public listener."""

    enabled: Bool = True
    host: NonEmptyStr = "127.0.0.1"
    port: Port = 8081
    token: Str | None = None
    """Bearer token of the admin API, at least 16 characters; only its SHA-256 is kept in memory."""
    token_sha256: Annotated[str, Strict(), matching(HEX64.pattern)] | None = None
    """Instead of token: its SHA-256, 64 hex characters."""

    @check
    def one_token(self) -> Found:
        if self.token is not None and self.token_sha256 is not None:
            yield "token", "give token or token_sha256, not both"
        if self.token is not None and len(self.token) < 16:
            yield "token", "must be at least 16 characters"


class ListenersDoc(Doc):
    public: Listener = Listener()
    admin: AdminListenerDoc = AdminListenerDoc()

    @check
    def admin_has_its_own_address(self) -> Found:
        public, admin = self.public, self.admin
        if admin.enabled and (public.host, public.port) == (admin.host, admin.port) and public.port != 0:
            yield "admin.port", "the admin listener must not share the public listener's address"


class ConfigDoc(RulesSections, AccountingSections):
    """A Tollgate config file. Unknown keys are errors; values may use ${ENV_VAR} or ${ENV_VAR:-default}."""

    version: Annotated[int, Strict(), Field(ge=1, le=1)] = 1
    data_dir: NonEmptyStr | None = None
    """The folder of the gateway's own files: a relative SQLite database, spill file, registry, usage or audit file
    or access log path is read under it. Relative to this file's folder; default: $TOLLGATE_DATA_DIR when set,
    else this file's folder. Mount it writable (the container image's is /var/lib/tollgate)."""
    listeners: ListenersDoc = ListenersDoc()
    admin: AdminDoc = AdminDoc()
    """Who may use the admin API: principals with tokens and roles, sign-on through OpenID Connect."""
    guard: Guard = Guard()
    store: StoreDoc = Field(default_factory=StoreDoc)
    """Where limiter state lives; without Redis everything runs in-process (one gateway process only)."""
    server: Server = Server()
    upstreams: Mapping[Annotated[str, matching(NAME)], UpstreamDoc] = {}
    """Model providers, by a name of your choice. The client never chooses the URL: it names a model."""
    models: Mapping[Annotated[str, matching(MODEL_NAME)], ModelDoc] = {}
    """Public model names, each mapped to deployments, a balancing strategy and fallbacks."""
    resilience: Resilience = Resilience()
    identity: IdentityDoc = IdentityDoc()
    """Who is calling. Without identity and tenants every request is the anonymous principal."""
    plans: Mapping[PlanName, PlanDoc] = {}
    """Plans: personal, small_business, enterprise, government and education are built in; entries here replace
    one by name or add new plans."""
    tenants: Mapping[TenantId, TenantDoc] = {}
    """Tenants and their API keys, by tenant id (API changes in the registry win over this file)."""
    registry: RegistryDoc = RegistryDoc()
    database: DatabaseConfig = DatabaseConfig()
    """The database of record (SQLite or PostgreSQL); with a url and no registry: store, the registry lives there."""
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    """Deployment pools sized by the traffic the gateway sees (the autoscaling advisor)."""
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    """OpenTelemetry traces of the requests (the tracing extra); off by default."""
    logging: LoggingConfig = LoggingConfig()
    cache: ResponseCacheConfig = ResponseCacheConfig()
    """The exact-match response cache (off by default)."""

    @check
    def has_upstreams_and_models(self) -> Found:
        if not self.upstreams:
            yield "upstreams", "at least one upstream is required"
        if not self.models:
            yield "models", "at least one model is required"

    @check
    def deployments_name_upstreams(self) -> Found:
        known = ", ".join(sorted(self.upstreams)) or "none"
        for name, model in self.models.items():
            for i, d in enumerate(model.deployments):
                if d.upstream and d.upstream not in self.upstreams:
                    yield (
                        f"models.{name}.deployments[{i}].upstream",
                        f"unknown upstream {d.upstream!r} (known: {known})",
                    )

    @check
    def deployments_fit_their_provider(self) -> Found:
        for where, reason in provider_field_problems(self.models, self.upstreams):
            yield f"models.{where}", reason

    @check
    def fallbacks_name_models_without_cycles(self) -> Found:
        for where, reason in fallback_graph_problems(self.models):
            yield f"models.{where}", reason

    @check
    def plans_name_models(self) -> Found:
        for name, plan in self.plans.items():
            for i, m in enumerate(plan.allowed_models or ()):
                if m not in self.models:
                    yield f"plans.{name}.allowed_models[{i}]", f"unknown model {m!r}"

    @check
    def tenants_name_plans_models_and_distinct_keys(self) -> Found:
        plans = {**DEFAULT_PLANS, **self.plans}
        secret = self.key_secret()
        subdomains: dict[str, str] = {}
        key_paths: dict[str, str] = {}
        hashes: dict[str, str] = {}
        for tenant_id, tenant in self.tenants.items():
            at = f"tenants.{tenant_id}"
            for where, reason in tenant_ref_problems(
                tenant_id, tenant, plans=plans, models=self.models, subdomain_owner=subdomains
            ):
                yield f"{at}.{where}", reason
            if tenant.subdomain is not None:
                subdomains.setdefault(tenant.subdomain, tenant_id)
            for i, key in enumerate(tenant.keys):
                path = f"{at}.keys[{i}]"
                for where, reason in key_secret_problems(key, secret):
                    yield f"{path}.{where}", reason
                key_id = key.id or f"{tenant_id}-{i}"
                key_hash = key.key_hash_with(secret)
                if key_id in key_paths:
                    yield f"{path}.id", f"key id {key_id!r} is already used at {key_paths[key_id]}"
                    continue
                if key_hash and key_hash in hashes:
                    yield path, f"the same key is declared at {hashes[key_hash]}"
                    continue
                for j, m in enumerate(key.models or ()):
                    if m not in self.models:
                        yield f"{path}.models[{j}]", f"unknown model {m!r}"
                key_paths[key_id] = path
                hashes[key_hash] = path

    @check
    def scaling_pools_name_models_and_plans(self) -> Found:
        yield from pool_ref_problems(self.scaling.pools, self.models, {**DEFAULT_PLANS, **self.plans})

    @check
    def admin_principals_beside_the_listener_token(self) -> Found:
        listener = self.listeners.admin
        token = listener.token_sha256 or (
            hashlib.sha256(listener.token.encode()).hexdigest() if listener.token is not None else None
        )
        if token is None:
            return
        for i, p in enumerate(self.admin.principals):
            if p.name == "admin":
                yield f"admin.principals[{i}].name", "admin is the principal of listeners.admin.token: choose another"
            if (p.token is not None or p.token_sha256 is not None) and p.digest().hex() == token:
                yield f"admin.principals[{i}].token", "the same token as listeners.admin.token"

    @check
    def prices_name_models(self) -> Found:
        yield from priced_model_problems(self.pricing, self.models)

    def key_secret(self) -> bytes | None:
        return self.identity.key_secret.encode() if self.identity.key_secret else None


def _listeners(doc: ListenersDoc) -> Listeners:
    admin = doc.admin
    token_sha256 = admin.token_sha256
    if admin.token is not None:
        token_sha256 = hashlib.sha256(admin.token.encode()).hexdigest()
    return Listeners(
        public=doc.public,
        admin=AdminListener(host=admin.host, port=admin.port, enabled=admin.enabled, token_sha256=token_sha256),
    )


def _tenants(doc: ConfigDoc) -> tuple[dict[str, Tenant], dict[str, ApiKey]]:
    secret = doc.key_secret()
    tenants: dict[str, Tenant] = {}
    keys: dict[str, ApiKey] = {}
    for tenant_id, tenant in doc.tenants.items():
        tenants[tenant_id] = build_tenant(tenant_id, tenant)
        for i, key_doc in enumerate(tenant.keys):
            key = build_key(key_doc, tenant_id, secret=secret, default_id=f"{tenant_id}-{i}")
            keys[key.id] = key
    return tenants, keys


def data_dir_of(named: str | None, source: str, default: str | None) -> str | None:
    """The absolute folder relative state paths are read under: ``named`` (the file's ``data_dir``), else
    ``default`` ($TOLLGATE_DATA_DIR), each relative to the config file's folder; else that folder; None for a
    config that came from no file and names none (relative paths then stay relative to the working folder)."""
    base = None if source.startswith("<") else Path(source).resolve().parent
    chosen = named or default
    if chosen is None:
        return None if base is None else str(base)
    path = Path(chosen).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return str(path.absolute())


def build_config(
    doc: ConfigDoc,
    *,
    source: str = "<memory>",
    data_dir: str | None = None,
    table: tuple[TenantRows, KeyRows] | None = None,
) -> Config:
    """The Config the gateway reads, from a document that validated without a problem (``data_dir``: the folder
    to use when the document names none; ``table``: the tenants and keys, when they were read apart)."""
    tenants: Mapping[str, Tenant]
    keys: Mapping[str, ApiKey]
    if table is not None:
        tenants, keys = table  # read-only mappings already, kept as they are
    else:
        read, made = _tenants(doc)
        tenants, keys = frozen_map(read), frozen_map(made)
    plans: dict[str, Any] = dict(DEFAULT_PLANS)
    plans.update({name: build_plan(name, plan) for name, plan in doc.plans.items()})
    given = doc.model_fields_set
    upstreams = frozen_map({name: build_upstream(name, u) for name, u in doc.upstreams.items()})
    listeners = _listeners(doc.listeners)
    return Config(
        listeners=listeners,
        admin=build_admin(doc.admin, listeners.admin.token_sha256),
        guard=doc.guard,
        upstreams=upstreams,
        models=frozen_map({name: build_model(name, m, upstreams) for name, m in doc.models.items()}),
        store=build_store(doc.store),
        rules=build_rules(doc),
        identity=build_identity(doc.identity, enabled="identity" in given or "tenants" in given),
        plans=frozen_map(plans),
        tenants=tenants,
        api_keys=keys,
        registry=build_registry(doc.registry),
        database=doc.database,
        scaling=doc.scaling,
        resilience=doc.resilience,
        accounting=build_accounting(doc),
        cache=doc.cache,
        server=doc.server,
        tracing=doc.tracing,
        logging=doc.logging,
        source=source,
        data_dir=data_dir_of(doc.data_dir, source, data_dir),
    )


def parse_config(
    data: Any, problems: Problems, *, source: str = "<memory>", data_dir: str | None = None
) -> Config | None:
    """Validate a parsed document (``${VAR}`` already substituted): the Config, or None after problems."""
    fast = _with_tenant_table(data, source=source, data_dir=data_dir)
    if fast is not None:
        return fast
    if isinstance(data, dict) and isinstance(data.get("tenants"), FlowSection):  # the models read it whole
        data = {**data, "tenants": data["tenants"].load()}
    before = len(problems.lines)
    doc = validate(ConfigDoc, data, "", problems)
    if problems or doc is None:
        _in_file_order(problems, before, data)
        return None
    return build_config(doc, source=source, data_dir=data_dir)


def _with_tenant_table(data: Any, *, source: str, data_dir: str | None) -> Config | None:
    """The Config of a document whose tenants are all in the plain shape (read by :func:`read_tenants`, without
    a model per tenant) and that validates without a problem; None for any other, which the models then read."""
    if not isinstance(data, dict):
        return None
    tenants = data.get("tenants")
    lazy = isinstance(tenants, FlowSection)
    if not lazy and (type(tenants) is not dict or not tenants):
        return None
    problems = Problems()
    doc = validate(ConfigDoc, {**data, "tenants": {}}, "", problems)
    if problems or doc is None:
        return None
    table = read_tenants(tenants, secret=doc.key_secret(), plans={**DEFAULT_PLANS, **doc.plans}, models=doc.models)
    if table is None or not table[0]:  # none: an empty section is the models' to read, as a written {} is
        return None
    return build_config(doc, source=source, data_dir=data_dir, table=table)


def _in_file_order(problems: Problems, start: int, data: Any) -> None:
    """The problems found since ``start`` grouped by section, in the order the file writes its sections."""
    order = {str(key): i for i, key in enumerate(data)} if isinstance(data, dict) else {}

    def section(line: str) -> int:
        head = line.partition(":")[0].partition(".")[0].partition("[")[0]
        return order.get(head, len(order))

    problems.lines[start:] = sorted(problems.lines[start:], key=section)
