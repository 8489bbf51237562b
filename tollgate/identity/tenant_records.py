"""Fast reading of tenant and key records in exactly the shape the gateway writes (``Tenant.to_json`` / ``ApiKey.to_json``).

The registry stores these records without reading them; the directory reads them.

Loading 100,000 tenants through the general, path-reporting parser costs
seconds; a record that is exactly what we wrote needs only type checks. Any
record that is not (hand-edited, older, wrong) returns None here and goes
through the general parser, which names its problems.
"""

from __future__ import annotations

from typing import Any

from tollgate.config.identity import KEY_ID, LIMIT_FIELDS, SUBDOMAIN, ApiKey, Tenant, frozen_map, split_key_hash

__all__ = ["key_from_record", "tenant_from_record"]

_TENANT_KEYS = frozenset(
    {"id", "name", "plan", "status", "subdomain", "allowed_models", "limits", "metadata", "created"}
)
_KEY_KEYS = frozenset({"id", "tenant", "key_hash", "name", "created", "expires", "revoked", "models", "admin"})
_STATUSES = ("active", "suspended")
_HASH_PREFIXES = ("sha256:", "hmac-sha256:")


def _str_list(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and value >= 0


def tenant_from_record(ident: str, doc: Any) -> Tenant | None:
    if type(doc) is not dict or not doc.keys() <= _TENANT_KEYS:
        return None
    name, plan, status = doc.get("name", ident), doc.get("plan"), doc.get("status", "active")
    subdomain, allowed = doc.get("subdomain"), doc.get("allowed_models")
    limits, metadata, created = doc.get("limits") or {}, doc.get("metadata") or {}, doc.get("created", 0)
    if type(name) is not str or not name or type(plan) is not str or not plan or status not in _STATUSES:
        return None
    if doc.get("id", ident) != ident or not _number(created):
        return None
    if subdomain is not None and (type(subdomain) is not str or not SUBDOMAIN.fullmatch(subdomain)):
        return None
    if allowed is not None and not _str_list(allowed):
        return None
    if type(limits) is not dict or not limits.keys() <= set(LIMIT_FIELDS):
        return None
    if not all(v is None or (type(v) is int and 0 <= v <= 10**15) for v in limits.values()):
        return None
    if type(metadata) is not dict or not all(
        type(k) is str and (v is None or type(v) in (str, int, float, bool)) for k, v in metadata.items()
    ):
        return None
    return Tenant(
        id=ident,
        name=name,
        plan=plan,
        status=status,
        subdomain=subdomain,
        allowed_models=tuple(dict.fromkeys(allowed)) if allowed is not None else None,
        limits=frozen_map(limits),
        metadata=frozen_map(metadata),
        created=float(created),
    )


def key_from_record(ident: str, doc: Any) -> ApiKey | None:
    if type(doc) is not dict or not doc.keys() <= _KEY_KEYS:
        return None
    tenant, key_hash, name = doc.get("tenant"), doc.get("key_hash"), doc.get("name", "")
    created, expires, revoked, models, admin = (
        doc.get("created", 0),
        doc.get("expires"),
        doc.get("revoked", False),
        doc.get("models"),
        doc.get("admin", False),
    )
    if doc.get("id", ident) != ident or not KEY_ID.fullmatch(ident) or type(tenant) is not str or not tenant:
        return None
    if type(key_hash) is not str or not key_hash.startswith(_HASH_PREFIXES):
        return None
    hexdigest = key_hash.partition(":")[2]
    if len(hexdigest) != 64 or hexdigest.strip("0123456789abcdef"):
        return None
    if (
        type(name) is not str
        or not _number(created)
        or (expires is not None and not _number(expires))
        or type(revoked) is not bool
        or type(admin) is not bool
    ):
        return None
    if models is not None and not _str_list(models):
        return None
    kind, digest = split_key_hash(key_hash)
    return ApiKey(
        id=ident,
        tenant=tenant,
        digest=digest,
        hash_kind=kind,
        name=name,
        created=float(created),
        expires=float(expires) if expires is not None else None,
        revoked=revoked,
        models=tuple(dict.fromkeys(models)) if models is not None else None,
        admin=admin,
    )
