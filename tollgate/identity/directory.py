"""The directory: who may call, indexed for identification (keys by hash, tenants by id and subdomain).

Built from the config file's tenants and keys overlaid with the registry's
runtime records (``t:<tenant>``, ``k:<key id>``, ``r:<config key id>``), and
updated tenant by tenant when a record changes, so a revocation among
100,000 tenants costs a few dict operations, not a rebuild.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tollgate.config.identity import ApiKey, Limits, Tenant, parse_key, parse_tenant
from tollgate.config.model import Config
from tollgate.config.reader import Node, Problems
from tollgate.identity.tenant_records import key_from_record, tenant_from_record

__all__ = ["ANONYMOUS", "Directory", "KeyEntry", "Principal", "Refusal", "TenantEntry"]

log = logging.getLogger("tollgate.identity")


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is attributed to: the tenant, the key or user, and the plan's limits after tenant overrides."""

    tenant: str
    plan: str
    limits: Limits
    # None: every configured model.
    allowed_models: frozenset[str] | None
    key_id: str | None = None
    user: str | None = None
    via: str = "api_key"

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


# Every request when the config has no ``identity:`` and no ``tenants:`` section.
ANONYMOUS = Principal(tenant="anonymous", plan="anonymous", limits=Limits(), allowed_models=None, via="anonymous")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a tenant or key may not be used right now: ``status`` is 401 or 403 semantics, chosen by the caller's class."""

    forbidden: bool
    message: str
    code: str


@dataclass(frozen=True, slots=True)
class TenantEntry:
    tenant: Tenant
    source: str  # "config" | "api" | "config+api"
    # The principal of a caller identified by a claim or a JWT (no key); None when refused.
    principal: Principal | None
    refusal: Refusal | None


@dataclass(frozen=True, slots=True)
class KeyEntry:
    digest: bytes
    key: ApiKey
    source: str  # "config" | "api"
    principal: Principal | None
    refusal: Refusal | None
    expires: float | None


_REVOKED = Refusal(False, "this API key has been revoked", "invalid_api_key")


class Directory:
    """Indexes over the merged tenants and keys. Mutated only synchronously (between awaits), so reads are consistent."""

    def __init__(self, config: Config, records: Mapping[str, Any] | None = None) -> None:
        self.plans = config.plans
        self.config_tenants = config.tenants
        self.config_keys = config.api_keys
        self.hash_kind = "hmac-sha256" if config.identity.key_secret is not None else "sha256"
        self.tenants: dict[str, TenantEntry] = {}
        self.keys: dict[bytes, KeyEntry] = {}
        self.key_ids: dict[str, KeyEntry] = {}
        self.subdomains: dict[str, str] = {}
        # Bumped on every change; a cached JWT principal older than this is rebuilt.
        self.generation = 0
        self._api_tenants: dict[str, Tenant] = {}
        self._api_keys: dict[str, ApiKey] = {}
        self._revoked: dict[str, float] = {}
        # Key ids by tenant: a tuple each (most tenants hold one key; a set would cost four times the memory).
        self._keys_of: dict[str, tuple[str, ...]] = {}
        keys_of = self._keys_of
        for key in self.config_keys.values():
            held = keys_of.get(key.tenant)
            keys_of[key.tenant] = (key.id,) if held is None else (*held, key.id)
        # Shared by every principal of the same plan and models (100,000 tenants on a few plans).
        self._model_sets: dict[tuple[str, ...], frozenset[str]] = {}
        self._build()
        self.apply(records or {})

    # -- reading --------------------------------------------------------
    def tenant_ids(self) -> Iterable[str]:
        return self.tenants.keys()

    def keys_of(self, tenant_id: str) -> list[KeyEntry]:
        return [self.key_ids[k] for k in sorted(self._keys_of.get(tenant_id, ())) if k in self.key_ids]

    def is_config_tenant(self, tenant_id: str) -> bool:
        return tenant_id in self.config_tenants

    def is_api_key(self, key_id: str) -> bool:
        return key_id in self._api_keys

    # -- changes --------------------------------------------------------
    def apply(self, changes: Mapping[str, Any], *, also: Iterable[str] = ()) -> None:
        """Apply registry records (``None`` = deleted) and refresh every tenant they touch (and ``also`` these)."""
        touched: set[str] = set(also)
        for name, doc in changes.items():
            kind, _, ident = name.partition(":")
            if kind == "t":
                touched.add(ident)
                if doc is None:
                    self._api_tenants.pop(ident, None)
                else:
                    tenant = self._parse_tenant(ident, doc)
                    if tenant is not None:
                        self._api_tenants[ident] = tenant
            elif kind == "k":
                old = self._api_keys.pop(ident, None)
                if old is not None:
                    touched.add(old.tenant)
                    self._drop_key_entry(ident)
                    self._unlink_key(old.tenant, ident)
                if doc is not None:
                    key = self._parse_key(ident, doc)
                    if key is not None:
                        self._api_keys[ident] = key
                        held = self._keys_of.get(key.tenant, ())
                        if ident not in held:
                            self._keys_of[key.tenant] = (*held, ident)
                        touched.add(key.tenant)
            elif kind == "r":
                if doc is None:
                    self._revoked.pop(ident, None)
                else:
                    self._revoked[ident] = float(doc.get("revoked_at", 0) if isinstance(doc, dict) else 0)
                cfg_key = self.config_keys.get(ident)
                if cfg_key is not None:
                    touched.add(cfg_key.tenant)
            else:
                log.warning("registry record %r ignored: unknown kind", name)
        for tid in touched:
            self._refresh(tid)
        self.generation += 1

    def _drop_key_entry(self, key_id: str) -> None:
        entry = self.key_ids.pop(key_id, None)
        if entry is not None and self.keys.get(entry.digest) is entry:
            del self.keys[entry.digest]

    def _unlink_key(self, tenant_id: str, key_id: str) -> None:
        ids = self._keys_of.get(tenant_id)
        if ids is not None and key_id not in self.config_keys and key_id in ids:
            self._keys_of[tenant_id] = tuple(k for k in ids if k != key_id)

    def _parse_tenant(self, ident: str, doc: Any) -> Tenant | None:
        fast = tenant_from_record(ident, doc)
        if fast is not None:
            return fast
        problems = Problems()
        node = Node(doc, f"t:{ident}", problems)
        node.raw("id")
        tenant = parse_tenant(ident, node)
        node.finish()
        if problems:
            log.error("registry record t:%s ignored: %s", ident, "; ".join(problems.lines))
            return None
        return tenant

    def _parse_key(self, ident: str, doc: Any) -> ApiKey | None:
        fast = key_from_record(ident, doc)
        if fast is not None:
            return fast
        problems = Problems()
        node = Node(doc, f"k:{ident}", problems)
        tenant = node.str("tenant")
        key = parse_key(node, tenant or "", secret=None, default_id=ident)
        node.finish()
        if problems or key.id != ident:
            log.error("registry record k:%s ignored: %s", ident, "; ".join(problems.lines) or "id mismatch")
            return None
        return key

    def _refresh(self, tid: str) -> None:
        """Drop and rebuild every index entry of one tenant."""
        old = self.tenants.pop(tid, None)
        if old is not None and old.tenant.subdomain is not None and self.subdomains.get(old.tenant.subdomain) == tid:
            del self.subdomains[old.tenant.subdomain]
        for kid in self._keys_of.get(tid, ()):
            self._drop_key_entry(kid)
        api = self._api_tenants.get(tid)
        cfg = self.config_tenants.get(tid)
        tenant = api or cfg
        if tenant is None:
            return
        source = "config+api" if api is not None and cfg is not None else "api" if api is not None else "config"
        entry = self._tenant_entry(tenant, source)
        self.tenants[tid] = entry
        if tenant.subdomain is not None:
            self.subdomains.setdefault(tenant.subdomain, tid)
        for kid in self._keys_of.get(tid, ()):
            key = self._api_keys.get(kid) or self.config_keys.get(kid)
            if key is None or key.tenant != tid:
                continue
            key_entry = self._key_entry(key, entry, "api" if kid in self._api_keys else "config")
            if key_entry is None:
                continue
            self.key_ids[kid] = key_entry
            self.keys[key_entry.digest] = key_entry

    def _build(self) -> None:
        """The entries of the config's tenants and keys, in one pass (what :meth:`_refresh` of each would make)."""
        tenants, subdomains, keys, key_ids = self.tenants, self.subdomains, self.keys, self.key_ids
        entry_of = self._tenant_entry
        for tid, tenant in self.config_tenants.items():
            tenants[tid] = entry_of(tenant, "config")
            if tenant.subdomain is not None:
                subdomains.setdefault(tenant.subdomain, tid)
        key_entry_of = self._key_entry
        for kid, key in self.config_keys.items():
            entry = tenants.get(key.tenant)
            if entry is None:
                continue
            key_entry = key_entry_of(key, entry, "config")
            if key_entry is not None:
                key_ids[kid] = key_entry
                keys[key_entry.digest] = key_entry

    def _tenant_entry(self, tenant: Tenant, source: str) -> TenantEntry:
        plan = self.plans.get(tenant.plan)
        refusal: Refusal | None = None
        if plan is None:
            refusal = Refusal(
                True, f"tenant {tenant.id!r} is on plan {tenant.plan!r}, which is not configured", "plan_not_configured"
            )
            return TenantEntry(tenant, source, None, refusal)
        limits = replace(plan.limits, **tenant.limits) if tenant.limits else plan.limits
        allowed = tenant.allowed_models if tenant.allowed_models is not None else plan.allowed_models
        principal = Principal(tenant.id, plan.name, limits, self._model_set(allowed), via="claim")
        if tenant.status == "suspended":
            refusal = Refusal(
                True, f"tenant {tenant.id!r} is suspended; contact the gateway operator", "tenant_suspended"
            )
        return TenantEntry(tenant, source, principal, refusal)

    def _model_set(self, models: tuple[str, ...] | None) -> frozenset[str] | None:
        if models is None:
            return None
        shared = self._model_sets.get(models)
        if shared is None:
            shared = self._model_sets[models] = frozenset(models)
        return shared

    def _key_entry(self, key: ApiKey, tenant: TenantEntry, source: str) -> KeyEntry | None:
        kind = key.hash_kind
        if kind != self.hash_kind:
            log.error(
                "API key %s of tenant %s is stored as %s but the gateway hashes keys with %s "
                "(identity.key_secret changed?): it cannot be used",
                key.id,
                key.tenant,
                kind,
                self.hash_kind,
            )
            return None
        digest = key.digest
        revoked = key.revoked or key.id in self._revoked
        refusal = _REVOKED if revoked else tenant.refusal
        principal = None
        of_tenant = tenant.principal
        if of_tenant is not None:
            allowed = of_tenant.allowed_models
            if key.models is not None:
                allowed = self._model_set(key.models) if allowed is None else allowed & frozenset(key.models)
            principal = Principal(of_tenant.tenant, of_tenant.plan, of_tenant.limits, allowed, key.id, None, "api_key")
        revoked_key = replace(key, revoked=True) if revoked and not key.revoked else key
        return KeyEntry(digest, revoked_key, source, principal, refusal, key.expires)
