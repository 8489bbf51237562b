"""One tenant's API keys as its own admin key manages them: list, create, revoke, never outside that tenant.

Every lookup is scoped to the tenant: a key of another tenant is reported
exactly as an unknown key (``key_not_found``), so a caller learns nothing of
keys it does not own. Creation goes through :class:`~tollgate.registry.manage.Manager`
(the same validation, hashing and registry record as the admin API), limited to
the fields a tenant may choose: ``name``, ``models`` (a subset of what the
tenant may use), ``expires`` and ``admin``.
"""

from __future__ import annotations

from typing import Any

from tollgate.config.identity import ApiKey
from tollgate.errors import BadRequest, NotFound
from tollgate.identity.directory import KeyEntry
from tollgate.registry.manage import Manager

__all__ = ["MAX_TENANT_KEYS", "TENANT_KEY_FIELDS", "TenantKeys", "tenant_key_view"]

# Fields a tenant's admin key may set on a key it creates; everything else is the gateway's or the operator's.
TENANT_KEY_FIELDS = ("name", "models", "expires", "admin")
# Keys a tenant may hold that are not revoked, counting those the operator gave it: creating one more is refused.
MAX_TENANT_KEYS = 1_000


def tenant_key_view(entry: KeyEntry) -> dict[str, Any]:
    """What a tenant sees of one of its keys: never the key, never its hash."""
    key = entry.key
    return {
        "id": key.id,
        "object": "tollgate.key",
        "name": key.name,
        "tenant": key.tenant,
        "created": key.created,
        "expires": key.expires,
        "revoked": key.revoked,
        "models": list(key.models) if key.models is not None else None,
        "admin": key.admin,
        "source": entry.source,
    }


class TenantKeys:
    """The keys of ``tenant``, over one process's registry (through ``manager``)."""

    def __init__(self, manager: Manager, tenant: str) -> None:
        self.manager = manager
        self.tenant = tenant

    def entries(self) -> list[KeyEntry]:
        return self.manager.directory.keys_of(self.tenant)

    def find(self, key_id: str) -> KeyEntry:
        """The tenant's key ``key_id``; another tenant's key is not found, in the same words as an unknown one."""
        entry = self.manager.directory.key_ids.get(key_id)
        if entry is None or entry.key.tenant != self.tenant:
            raise NotFound(f"no API key {key_id[:100]!r}", param="key_id", code="key_not_found")
        return entry

    async def create(self, doc: Any) -> tuple[ApiKey, str]:
        """A new key of the tenant from ``doc`` (``name``, ``models``, ``expires``, ``admin``): (its record, the key)."""
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise BadRequest("send a JSON object (name, models, expires, admin), or nothing", code="invalid_input")
        unknown = sorted(str(k) for k in doc if k not in TENANT_KEY_FIELDS)
        if unknown:
            raise BadRequest(
                f"cannot set {', '.join(unknown)} on a key; settable: {', '.join(TENANT_KEY_FIELDS)}",
                param=unknown[0],
                code="invalid_input",
            )
        self._check_models(doc.get("models"))
        live = sum(1 for e in self.entries() if not e.key.revoked)
        if live >= MAX_TENANT_KEYS:
            raise BadRequest(
                f"the tenant already holds {live} keys that are not revoked (at most {MAX_TENANT_KEYS}); "
                "revoke some first",
                code="too_many_keys",
            )
        return await self.manager.create_key(self.tenant, doc)

    def _check_models(self, models: Any) -> None:
        """Each model named must be one the tenant may use (the type is checked by the key's own validation)."""
        if not isinstance(models, list):
            return
        principal = self.manager.tenant(self.tenant).principal
        allowed = principal.allowed_models if principal is not None else frozenset()
        for i, model in enumerate(models):
            if isinstance(model, str) and allowed is not None and model not in allowed:
                raise BadRequest(
                    f"models[{i}]: the tenant may not use {model!r}", param=f"models[{i}]", code="model_not_allowed"
                )

    async def revoke(self, key_id: str, *, acting_key: str | None, allow_self: bool = False) -> KeyEntry:
        """Revoke the tenant's key ``key_id`` (idempotent); the acting key revokes itself only with ``allow_self``."""
        entry = self.find(key_id)
        if key_id == acting_key and not allow_self and not entry.key.revoked:
            raise BadRequest(
                "this is the key making the request: add ?allow_self=true to revoke it anyway "
                "(create its successor first)",
                param="key_id",
                code="self_revocation",
            )
        return await self.manager.revoke_key(key_id)
