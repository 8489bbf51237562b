"""The tenants and keys of a config file, the plain ones kept as rows: what 100,000 tenants cost in memory.

Most tenants of a large file are a plan and one key by its digest. Such a tenant is kept as one row
``(plan, key id, digest)`` instead of a :class:`Tenant` and an :class:`ApiKey` record (a third of the memory),
and its records are made when they are read. :class:`TenantRows` and :class:`KeyRows` are the
``Config.tenants`` and ``Config.api_keys`` mappings: reading them gives the same records, equal to those
the models make, whichever way a tenant is kept.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping

from tollgate.config.identity import ApiKey, Tenant

__all__ = ["KeyRows", "Row", "TenantRows"]

# A plain tenant: its plan (interned), the id and the digest of its one key. Everything else is the default:
# named by its id, active, its plan's models and limits, no metadata; the key unnamed, not revoked, of any model.
Row = tuple[str, str, bytes]
TenantValue = Tenant | Row


class TenantRows(Mapping[str, Tenant]):
    """``Config.tenants``: a plain tenant kept as a :data:`Row`, any other as its record, in the file's order."""

    __slots__ = ("_by_id", "hash_kind")

    def __init__(self, by_id: dict[str, TenantValue], hash_kind: str) -> None:
        self._by_id = by_id
        self.hash_kind = hash_kind  # of every row's key: "sha256", or "hmac-sha256" with a key secret

    def __getitem__(self, tenant_id: str) -> Tenant:
        value = self._by_id[tenant_id]
        if type(value) is tuple:
            return Tenant(id=tenant_id, name=tenant_id, plan=value[0])
        return value  # type: ignore[return-value]

    def __contains__(self, tenant_id: object) -> bool:
        return tenant_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    def row(self, tenant_id: str) -> Row | None:
        """The tenant's row when it is kept as one; None for a tenant kept as a record, or unknown."""
        value = self._by_id.get(tenant_id)
        return value if type(value) is tuple else None

    def stored(self) -> ItemsView[str, TenantValue]:
        """Every tenant as it is kept: ``(id, row or record)``, without making a record."""
        return self._by_id.items()

    def __repr__(self) -> str:
        return f"TenantRows({len(self._by_id)} tenants)"


class KeyRows(Mapping[str, ApiKey]):
    """``Config.api_keys``: the key of a tenant kept as a row is the id of that tenant, any other key its record."""

    __slots__ = ("__weakref__", "_by_id", "_tenants")

    def __init__(self, by_id: dict[str, ApiKey | str], tenants: TenantRows) -> None:
        self._by_id = by_id
        self._tenants = tenants

    def __getitem__(self, key_id: str) -> ApiKey:
        value = self._by_id[key_id]
        if type(value) is str:
            row = self._tenants.row(value)
            assert row is not None and row[1] == key_id
            return ApiKey(id=key_id, tenant=value, digest=row[2], hash_kind=self._tenants.hash_kind)
        return value  # type: ignore[return-value]

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._by_id

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def tenant_rows(self) -> TenantRows:
        return self._tenants

    def same_row(self, tenant_id: str, plan: str, key_id: str, digest: bytes) -> tuple[str, Row] | None:
        """This table's id and row objects for a tenant kept here as the row ``(plan, key_id, digest)``; else None."""
        held = self._tenants._by_id.get(tenant_id)
        if type(held) is not tuple or held[2] != digest or held[1] != key_id or held[0] != plan:
            return None
        owner = self._by_id.get(key_id)
        return (owner, held) if type(owner) is str and owner == tenant_id else None

    def records(self) -> Iterator[ApiKey]:
        """The keys kept as records (the keys of tenants kept as rows are in their rows)."""
        return (value for value in self._by_id.values() if type(value) is not str)  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"KeyRows({len(self._by_id)} keys)"
