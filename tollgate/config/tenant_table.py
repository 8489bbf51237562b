"""The ``tenants:`` section read without a model per tenant, when every tenant is in the plain shape.

A file of 100,000 tenants validated through :class:`~tollgate.config.identity.TenantDoc` makes a pydantic
model per tenant and per key and runs the cross-field checks over them: seconds, and a hundred megabytes
that the process keeps as fragmented heap. Most such files repeat one plain shape (a plan, a name, a few
keys by digest), which needs only type checks. :func:`read_tenants` takes exactly that subset and builds
the same :class:`Tenant` and :class:`ApiKey` records :func:`~tollgate.config.identity.build_tenant` and
:func:`~tollgate.config.identity.build_key` would, with repeated values (plan names, model lists) shared.
Anything else (an unusual field, a wrong value, a check that fails) answers None: the caller then validates
the section through the models, which name every problem with its path.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from tollgate.config.flow_lines import FlowSection
from tollgate.config.identity import (
    KEY_ID,
    LIMIT_FIELDS,
    SUBDOMAIN,
    TENANT_ID,
    ApiKey,
    Tenant,
    frozen_map,
    hash_key,
    split_key_hash,
)
from tollgate.config.tenant_rows import KeyRows, TenantRows, TenantValue

__all__ = ["read_tenants"]

_TENANT_FIELDS = frozenset({"name", "plan", "status", "subdomain", "allowed_models", "limits", "metadata", "keys"})
_KEY_FIELDS = frozenset({"id", "key", "sha256", "hmac_sha256", "key_hash", "name", "revoked", "models", "admin"})
_CREDENTIALS = ("key", "sha256", "hmac_sha256", "key_hash")
_STATUSES = {"active": "active", "suspended": "suspended"}
_MAX_LIMIT = 10**15
_NO_VALUES: Mapping[str, Any] = frozen_map()


def _own(text: str) -> str:
    """A copy of ``text`` that the records keep, so that no string of the parsed document outlives it: the
    document's memory (ten times the records') is then given back whole instead of held by one id in each page."""
    return text.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")


# The keys of the last tables read in this process, newest last, while some version still holds them: a reload of
# an unchanged tenant keeps such a table's id and row objects instead of new equal ones, so that a reload of 100,000
# tenants leaves no new objects of its own among the old version's in the heap (where they would keep its pages in
# use). Tables no version holds any more are dropped as a new one is added, so that files read only to be checked
# (a worker's POST /admin/reload), however many in a row, never push out the version in force.
_recent: list[weakref.ref[KeyRows]] = []
_RECENT_KEPT = 2


def _previous() -> KeyRows | None:
    for ref in reversed(_recent):
        table = ref()
        if table is not None:
            return table
    return None


class _Irregular(Exception):
    """A tenant outside the plain shape, or a check that fails: the models read the section."""


def read_tenants(
    tenants: Any, *, secret: bytes | None, plans: Mapping[str, Any], models: Mapping[str, Any]
) -> tuple[TenantRows, KeyRows] | None:
    """The tenants and keys of a ``tenants:`` section (a mapping, or a large section read a slice at a time) in the
    plain shape that passes every check; else None."""
    parts: Iterable[dict[Any, Any]]
    if type(tenants) is dict:
        parts = (tenants,)
    elif isinstance(tenants, FlowSection):
        parts = tenants.slices()
    else:
        return None
    try:
        table = _Reader(secret, plans, models, _previous()).read(parts)
    except _Irregular:
        return None
    live = [ref for ref in _recent if ref() is not None]
    _recent[:] = [*live[-(_RECENT_KEPT - 1) :], weakref.ref(table[1])]
    return table


class _Reader:
    def __init__(
        self, secret: bytes | None, plans: Mapping[str, Any], models: Mapping[str, Any], previous: KeyRows | None
    ) -> None:
        self.kind = "sha256" if secret is None else "hmac-sha256"  # the kind a row's key must be of
        # The last table read, when its rows' keys are of the same kind: equal rows are kept as its objects. Its
        # tenants are walked in step with the section's (a file read again lists them in the same order: the
        # next row is compared in memory order), looked up by id where the two orders part.
        if previous is not None and previous.tenant_rows.hash_kind != self.kind:
            previous = None
        self.previous = previous
        self.cursor = iter(previous.tenant_rows.stored()) if previous is not None else None
        self.beside: tuple[str, TenantValue] | None = None  # the previous table's tenant in step with this one
        self.secret = secret
        self.plans = plans
        self.models = models
        self.tenants: dict[str, TenantValue] = {}
        self.keys: dict[str, ApiKey | str] = {}
        self.digests: dict[str, set[bytes]] = {}  # by kind: two keys with the same digest are one key
        self.subdomains: set[str] = set()
        self.model_lists: dict[tuple[str, ...], tuple[str, ...]] = {}  # one tuple per distinct list

    def read(self, parts: Iterable[dict[Any, Any]]) -> tuple[TenantRows, KeyRows]:
        for part in parts:
            self._read(part)
        table = TenantRows(self.tenants, self.kind)
        return table, KeyRows(self.keys, table)

    def _read(self, tenants: dict[Any, Any]) -> None:
        for tenant_id, doc in tenants.items():
            if type(tenant_id) is not str or TENANT_ID.fullmatch(tenant_id) is None:
                raise _Irregular
            if tenant_id in self.tenants:  # again in a later slice: the section's mapping keeps the last (the models)
                raise _Irregular
            if type(doc) is not dict or not doc.keys() <= _TENANT_FIELDS:
                raise _Irregular
            tenant_id = _own(tenant_id)
            self.beside = next(self.cursor, None) if self.cursor is not None else None
            keys = doc.get("keys", [])
            if type(keys) is not list:
                raise _Irregular
            read = self._tenant(tenant_id, doc)
            row_plan = read if type(read) is str and len(keys) == 1 else None
            if row_plan is not None and self._key(tenant_id, 0, keys[0], row_plan=row_plan):
                continue  # kept as a row
            if isinstance(read, str):
                read = Tenant(id=tenant_id, name=tenant_id, plan=read, limits=_NO_VALUES, metadata=_NO_VALUES)
            self.tenants[tenant_id] = read
            for i, key in enumerate(keys):
                if row_plan is None:  # else its one key is kept already, as a record
                    self._key(tenant_id, i, key)

    def _models(self, value: Any) -> tuple[str, ...]:
        if type(value) is not list or any(type(m) is not str or m not in self.models for m in value):
            raise _Irregular
        models = tuple(dict.fromkeys(value))
        return self.model_lists.setdefault(models, models)

    def _tenant(self, tenant_id: str, doc: dict[str, Any]) -> Tenant | str:
        """The tenant's record; only its plan (interned) when it is plain, every other field the default."""
        name = doc.get("name", tenant_id)
        plan = doc.get("plan")
        status = doc.get("status", "active")
        status = _STATUSES.get(status) if type(status) is str else None
        if type(name) is not str or not name or type(plan) is not str or plan not in self.plans or status is None:
            raise _Irregular
        subdomain = doc.get("subdomain")
        if subdomain is not None:
            if type(subdomain) is not str or SUBDOMAIN.fullmatch(subdomain) is None or subdomain in self.subdomains:
                raise _Irregular
            self.subdomains.add(subdomain)
        allowed = self._models(doc["allowed_models"]) if "allowed_models" in doc else None
        limits = self._limits(doc["limits"]) if "limits" in doc else _NO_VALUES
        metadata = self._metadata(doc["metadata"]) if "metadata" in doc else _NO_VALUES
        plan = sys.intern(plan)
        plain = name == tenant_id and status == "active" and subdomain is None and allowed is None
        if plain and limits is _NO_VALUES and metadata is _NO_VALUES:
            return plan
        return Tenant(
            id=tenant_id,
            name=name,
            plan=plan,
            status=status,
            subdomain=subdomain,
            allowed_models=allowed,
            limits=limits,
            metadata=metadata,
        )

    @staticmethod
    def _limits(value: Any) -> Mapping[str, int | None]:
        if type(value) is not dict or not value.keys() <= set(LIMIT_FIELDS):
            raise _Irregular
        if any(type(v) is not int or not 0 <= v <= _MAX_LIMIT for v in value.values()):
            raise _Irregular
        return frozen_map({f: value[f] for f in LIMIT_FIELDS if f in value}) if value else _NO_VALUES

    @staticmethod
    def _metadata(value: Any) -> Mapping[str, Any]:
        if type(value) is not dict:
            raise _Irregular
        for k, v in value.items():
            if type(k) is not str or (v is not None and not isinstance(v, (str, int, float, bool))):
                raise _Irregular
        return frozen_map(value) if value else _NO_VALUES

    def _key(self, tenant_id: str, index: int, doc: Any, *, row_plan: str | None = None) -> bool:
        """Check and keep one key; with ``row_plan`` (a plain tenant's plan), a plain key is kept in the tenant's row
        (True); otherwise, or for any other key, the key is kept as its record (False)."""
        if type(doc) is not dict or not doc.keys() <= _KEY_FIELDS:
            raise _Irregular
        given = [c for c in _CREDENTIALS if c in doc]
        if len(given) != 1:
            raise _Irregular
        key_id = doc.get("id")
        if key_id is None:
            key_id = f"{tenant_id}-{index}"
        if type(key_id) is not str or KEY_ID.fullmatch(key_id) is None or key_id in self.keys:
            raise _Irregular
        kind, digest = self._digest(given[0], doc[given[0]])
        seen = self.digests.setdefault(kind, set())
        if digest in seen:
            raise _Irregular
        name, revoked, admin = doc.get("name", ""), doc.get("revoked", False), doc.get("admin", False)
        if type(name) is not str or type(revoked) is not bool or type(admin) is not bool:
            raise _Irregular
        models = self._models(doc["models"]) if "models" in doc else None
        seen.add(digest)
        if row_plan is not None and kind == self.kind and not (name or revoked or admin or models is not None):
            same = self._same_row(tenant_id, row_plan, key_id, digest)
            row: TenantValue  # not a Row: compiled, a Row is unpacked into a C struct, and packed again as a new tuple
            if same is None:
                key_id = _own(key_id)
                row = (row_plan, key_id, digest)
            else:
                tenant_id, row, key_id = same
            self.tenants[tenant_id] = row
            self.keys[key_id] = tenant_id
            return True
        key_id = _own(key_id)
        self.keys[key_id] = ApiKey(
            id=key_id,
            tenant=tenant_id,
            digest=digest,
            hash_kind=kind,
            name=name,
            revoked=revoked,
            models=models,
            admin=admin,
        )
        return False

    def _same_row(self, tenant_id: str, plan: str, key_id: str, digest: bytes) -> tuple[str, TenantValue, str] | None:
        """The previous table's tenant id, row and key id objects for this row, when it held an equal one. The row is
        held as Any (see _key): the object itself is what is kept."""
        beside = self.beside
        held: Any
        if beside is not None and beside[0] == tenant_id:
            held = beside[1]
            if type(held) is tuple and held[2] == digest and held[1] == key_id and held[0] == plan:
                return beside[0], held, held[1]
            return None
        found: Any = self.previous.same_row(tenant_id, plan, key_id, digest) if self.previous is not None else None
        if found is None:
            return None
        held = found[1]
        return found[0], held, held[1]

    def _digest(self, credential: str, value: Any) -> tuple[str, bytes]:
        """The kind and digest of a key, as :meth:`KeyDoc.key_hash_with` makes them, when its kind fits the secret."""
        if type(value) is not str:
            raise _Irregular
        if credential == "key":
            if len(value) < 16:
                raise _Irregular
            return split_key_hash(hash_key(value, self.secret))
        if credential == "key_hash":
            kind, _, value = value.partition(":")
            if kind not in ("sha256", "hmac-sha256"):
                raise _Irregular
        else:
            if (credential == "sha256") != (self.secret is None):
                raise _Irregular
            kind = "sha256" if credential == "sha256" else "hmac-sha256"
        if len(value) != 64:
            raise _Irregular
        try:
            digest = bytes.fromhex(value)
        except ValueError:
            raise _Irregular from None
        if digest.hex() != value:  # 64 lower-case hex digits, nothing else (fromhex takes upper case and spaces)
            raise _Irregular
        return kind, digest
