"""The directory: who may call, indexed for identification (keys by hash, tenants by id and subdomain).

Built from the config file's tenants and keys overlaid with the registry's
runtime records (``t:<tenant>``, ``k:<key id>``, ``r:<config key id>``), and
updated tenant by tenant when a record changes, so a revocation among
100,000 tenants costs a few dict operations, not a rebuild.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar, overload

from tollgate.config.identity import ApiKey, Limits, Plan, Tenant, parse_key, parse_tenant
from tollgate.config.model import Config
from tollgate.config.reader import Node, Problems
from tollgate.config.tenant_rows import KeyRows, TenantRows
from tollgate.identity.tenant_records import key_from_record, tenant_from_record

__all__ = ["ANONYMOUS", "Directory", "KeyEntry", "Principal", "Refusal", "TenantEntries", "TenantEntry"]

log = logging.getLogger("tollgate.identity")

_T = TypeVar("_T")


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


# What a tenant's principals share: the plan's name, the limits after the tenant's overrides and the models it may
# use. One tuple for every tenant of a plan without overrides of its own (100,000 tenants on a few plans).
Terms = tuple[str, Limits, frozenset[str] | None]


class TenantEntry:
    """A tenant as the directory serves it: its record, where it comes from, and why it is refused, if it is.

    ``principal`` (the caller identified by a claim or a JWT, no key; None when the plan is not configured) is made
    on first use and kept: most tenants of a large file are only ever identified by their keys.
    """

    __slots__ = ("_principal", "_terms", "refusal", "source", "tenant")

    def __init__(self, tenant: Tenant, source: str, terms: Terms | None, refusal: Refusal | None) -> None:
        self.tenant = tenant
        self.source = source  # "config" | "api" | "config+api"
        self.refusal = refusal
        self._terms = terms
        self._principal: Principal | None = None

    @property
    def terms(self) -> Terms | None:
        """The plan, limits and models of the tenant's principals; None when its plan is not configured."""
        return self._terms

    @property
    def principal(self) -> Principal | None:
        principal = self._principal
        if principal is None and self._terms is not None:
            plan, limits, models = self._terms
            principal = self._principal = Principal(self.tenant.id, plan, limits, models, via="claim")
        return principal

    def __repr__(self) -> str:
        return f"TenantEntry(tenant={self.tenant!r}, source={self.source!r}, refusal={self.refusal!r})"


class KeyEntry:
    """A key as the directory serves it: what identification reads (digest, refusal, expiry, principal) and the key.

    ``key`` is the key's record; for a key kept in its tenant's row (``Config.api_keys`` of a large file) it is made
    from the entry when first read: identification never reads it.
    """

    __slots__ = ("_key", "digest", "expires", "principal", "refusal", "source")

    def __init__(
        self,
        digest: bytes,
        key: ApiKey | str,
        source: str,
        principal: Principal | None,
        refusal: Refusal | None,
        expires: float | None,
    ) -> None:
        self.digest = digest
        self._key = key  # the record, or for a row's key the kind of its digest
        self.source = source  # "config" | "api"
        self.principal = principal
        self.refusal = refusal
        self.expires = expires

    @property
    def key(self) -> ApiKey:
        key = self._key
        if type(key) is str:
            principal = self.principal
            assert principal is not None and principal.key_id is not None
            key = self._key = ApiKey(id=principal.key_id, tenant=principal.tenant, digest=self.digest, hash_kind=key)
        return key  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"KeyEntry(key={self.key!r}, source={self.source!r}, refusal={self.refusal!r})"


class TenantEntries(Mapping[str, TenantEntry]):
    """The directory's tenants by id: the config file's and the registry's.

    The entry of a config tenant that no record changed is made when it is first read, then kept (identification by
    a key never reads it); every other entry is made when its tenant changes.
    """

    __slots__ = ("_config", "_made", "_make")

    def __init__(self, config: Mapping[str, Tenant], make: Callable[[Tenant, str], TenantEntry]) -> None:
        self._config = config
        self._made: dict[str, TenantEntry] = {}
        self._make = make

    @overload
    def get(self, tenant_id: str, /) -> TenantEntry | None: ...

    @overload
    def get(self, tenant_id: str, /, default: TenantEntry | _T) -> TenantEntry | _T: ...

    def get(self, tenant_id: str, /, default: Any = None) -> Any:
        entry = self._made.get(tenant_id)
        if entry is None:
            tenant = self._config.get(tenant_id)
            if tenant is None:
                return default
            entry = self._made[tenant_id] = self._make(tenant, "config")
        return entry

    def __getitem__(self, tenant_id: str) -> TenantEntry:
        entry = self.get(tenant_id)
        if entry is None:
            raise KeyError(tenant_id)
        return entry

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._made or tenant_id in self._config

    def __iter__(self) -> Iterator[str]:
        yield from self._config
        yield from (tid for tid in list(self._made) if tid not in self._config)

    def __len__(self) -> int:
        return len(self._config) + sum(1 for tid in self._made if tid not in self._config)

    def put(self, tenant_id: str, entry: TenantEntry) -> None:
        self._made[tenant_id] = entry

    def drop(self, tenant_id: str) -> None:
        """Forget the entry made for the tenant (a config tenant's is made again from the config when read)."""
        self._made.pop(tenant_id, None)


_REVOKED = Refusal(False, "this API key has been revoked", "invalid_api_key")


class _Standings:
    """Makes tenant entries and shares what they have in common (terms per plan, model sets) across a directory.

    It holds no reference to the directory: the directory's tenant mapping calls it, and a directory that is
    dropped (a reload) is then freed at once, without waiting for the cyclic collector.
    """

    __slots__ = ("_model_sets", "_terms", "plans")

    def __init__(self, plans: Mapping[str, Plan]) -> None:
        self.plans = plans
        # Shared by every principal of the same plan and models (100,000 tenants on a few plans).
        self._model_sets: dict[tuple[str, ...], frozenset[str]] = {}
        self._terms: dict[tuple[str, tuple[str, ...] | None], Terms] = {}

    def tenant_entry(self, tenant: Tenant, source: str) -> TenantEntry:
        plan = self.plans.get(tenant.plan)
        refusal: Refusal | None = None
        if plan is None:
            refusal = Refusal(
                True, f"tenant {tenant.id!r} is on plan {tenant.plan!r}, which is not configured", "plan_not_configured"
            )
            return TenantEntry(tenant, source, None, refusal)
        if tenant.status == "suspended":
            refusal = Refusal(
                True, f"tenant {tenant.id!r} is suspended; contact the gateway operator", "tenant_suspended"
            )
        allowed = tenant.allowed_models if tenant.allowed_models is not None else plan.allowed_models
        if tenant.limits:
            terms: Terms = (plan.name, replace(plan.limits, **tenant.limits), self.model_set(allowed))
        else:
            terms = self.plan_terms(plan, allowed)
        return TenantEntry(tenant, source, terms, refusal)

    def plan_terms(self, plan: Plan, allowed: tuple[str, ...] | None) -> Terms:
        """The terms of a tenant on ``plan`` without limits of its own: one tuple for all of them."""
        shared = self._terms.get((plan.name, allowed))
        if shared is None:
            shared = self._terms[(plan.name, allowed)] = (plan.name, plan.limits, self.model_set(allowed))
        return shared

    def model_set(self, models: tuple[str, ...] | None) -> frozenset[str] | None:
        if models is None:
            return None
        shared = self._model_sets.get(models)
        if shared is None:
            shared = self._model_sets[models] = frozenset(models)
        return shared


class Directory:
    """Indexes over the merged tenants and keys. Mutated only synchronously (between awaits), so reads are consistent."""

    def __init__(self, config: Config, records: Mapping[str, Any] | None = None) -> None:
        self.plans = config.plans
        self.config_tenants = config.tenants
        self.config_keys = config.api_keys
        self.hash_kind = "hmac-sha256" if config.identity.key_secret is not None else "sha256"
        # The config's tenants kept as rows, when they are: their keys are found from the rows.
        self._rows = self.config_tenants if isinstance(self.config_tenants, TenantRows) else None
        self._standings = _Standings(config.plans)
        self.tenants = TenantEntries(self.config_tenants, self._standings.tenant_entry)
        self.keys: dict[bytes, KeyEntry] = {}
        self.key_ids: dict[str, KeyEntry] = {}
        self.subdomains: dict[str, str] = {}
        # Bumped on every change; a cached JWT principal older than this is rebuilt.
        self.generation = 0
        self._api_tenants: dict[str, Tenant] = {}
        self._api_keys: dict[str, ApiKey] = {}
        self._revoked: dict[str, float] = {}
        # Key ids by tenant (the id itself for a tenant of one key, else a tuple of ids), but for the key in a row.
        self._keys_of: dict[str, str | tuple[str, ...]] = {}
        keys_of = self._keys_of
        config_keys = self.config_keys
        for key in config_keys.records() if isinstance(config_keys, KeyRows) else config_keys.values():
            held = keys_of.get(key.tenant)
            keys_of[key.tenant] = key.id if held is None else (*_ids(held), key.id)
        enabled = gc.isenabled()
        gc.disable()
        try:
            self._build()
        finally:
            if enabled:
                gc.enable()
        self.apply(records or {})

    # -- reading --------------------------------------------------------
    def tenant_ids(self) -> Iterable[str]:
        return self.tenants.keys()

    def keys_of(self, tenant_id: str) -> list[KeyEntry]:
        return [self.key_ids[k] for k in sorted(self._ids_of(tenant_id)) if k in self.key_ids]

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
                        if ident not in self._ids_of(key.tenant):
                            held = _ids(self._keys_of.get(key.tenant, ()))
                            self._keys_of[key.tenant] = (*held, ident) if held else ident
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

    def _ids_of(self, tenant_id: str) -> tuple[str, ...]:
        """The ids of the tenant's keys: the one in its row, if it is kept as one, and those linked to it."""
        held = _ids(self._keys_of.get(tenant_id, ()))
        row = self._rows.row(tenant_id) if self._rows is not None else None
        return held if row is None else (row[1], *held)

    def _unlink_key(self, tenant_id: str, key_id: str) -> None:
        held = self._keys_of.get(tenant_id)
        if held is None or key_id in self.config_keys:
            return
        ids = _ids(held)
        if key_id in ids:
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
        old = self.tenants.get(tid)
        self.tenants.drop(tid)
        if old is not None and old.tenant.subdomain is not None and self.subdomains.get(old.tenant.subdomain) == tid:
            del self.subdomains[old.tenant.subdomain]
        held = self._ids_of(tid)
        for kid in held:
            self._drop_key_entry(kid)
        api = self._api_tenants.get(tid)
        cfg = self.config_tenants.get(tid)
        tenant = api or cfg
        if tenant is None:
            return
        source = "config+api" if api is not None and cfg is not None else "api" if api is not None else "config"
        entry = self._standings.tenant_entry(tenant, source)
        self.tenants.put(tid, entry)
        if tenant.subdomain is not None:
            self.subdomains.setdefault(tenant.subdomain, tid)
        for kid in held:
            key = self._api_keys.get(kid) or self.config_keys.get(kid)
            if key is None or key.tenant != tid:
                continue
            key_entry = self._key_entry(key, entry, "api" if kid in self._api_keys else "config")
            if key_entry is None:
                continue
            self.key_ids[kid] = key_entry
            self.keys[key_entry.digest] = key_entry

    def _build(self) -> None:
        """The entries of the config's keys, in one pass (what :meth:`_refresh` of each tenant would make); a tenant's
        own entry is made when it is first read."""
        subdomains, keys, key_ids = self.subdomains, self.keys, self.key_ids
        rows, config_keys = self._rows, self.config_keys
        records: list[ApiKey] = []  # keys the records' way makes entries of
        if rows is None or not isinstance(config_keys, KeyRows):
            for tid, tenant in self.config_tenants.items():
                if tenant.subdomain is not None:
                    subdomains.setdefault(tenant.subdomain, tid)
            records.extend(config_keys.values())
        else:
            row_entry_of = self._row_key_entry if rows.hash_kind == self.hash_kind else None
            for tid, stored in rows.stored():
                if isinstance(stored, Tenant):
                    if stored.subdomain is not None:
                        subdomains.setdefault(stored.subdomain, tid)
                    continue
                plan, kid, digest = stored
                row_entry = row_entry_of(tid, plan, kid, digest) if row_entry_of is not None else None
                if row_entry is None:  # not the plain case after all: the records' way
                    records.append(config_keys[kid])
                    continue
                key_ids[kid] = row_entry
                keys[digest] = row_entry
            records.extend(config_keys.records())
        tenants, key_entry_of = self.tenants, self._key_entry
        for key in records:
            entry = tenants.get(key.tenant)
            if entry is None:
                continue
            key_entry = key_entry_of(key, entry, "config")
            if key_entry is not None:
                key_ids[key.id] = key_entry
                keys[key_entry.digest] = key_entry

    def _row_key_entry(self, tid: str, plan_name: str, kid: str, digest: bytes) -> KeyEntry | None:
        """The entry of a row's key, without its records; None unless the row's plan is configured and the key is
        not revoked (the records' way then makes it)."""
        plan = self.plans.get(plan_name)
        if plan is None or kid in self._revoked:
            return None
        plan_name, limits, allowed = self._standings.plan_terms(plan, plan.allowed_models)
        principal = Principal(tid, plan_name, limits, allowed, kid, None, "api_key")
        return KeyEntry(digest, self.hash_kind, "config", principal, None, None)

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
        terms = tenant.terms
        if terms is not None:
            plan, limits, allowed = terms
            if key.models is not None:
                allowed = self._standings.model_set(key.models) if allowed is None else allowed & frozenset(key.models)
            principal = Principal(tenant.tenant.id, plan, limits, allowed, key.id, None, "api_key")
        revoked_key = replace(key, revoked=True) if revoked and not key.revoked else key
        return KeyEntry(digest, revoked_key, source, principal, refusal, key.expires)


def _ids(held: str | tuple[str, ...]) -> tuple[str, ...]:
    """The key ids a ``_keys_of`` value holds."""
    return (held,) if type(held) is str else held  # type: ignore[return-value]
