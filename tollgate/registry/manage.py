"""Managing tenants and keys at runtime: validation, key generation, and the registry records each change writes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from tollgate.config.identity import TENANT_ID, ApiKey, Tenant, check_tenant_refs, parse_key, parse_tenant
from tollgate.config.model import Config
from tollgate.config.reader import Node, Problems
from tollgate.errors import BadRequest, NotFound
from tollgate.identity.directory import Directory, KeyEntry, TenantEntry
from tollgate.registry.registry import Registry
from tollgate.registry.stores import RegistryConflict

__all__ = ["MAX_BULK", "Manager", "generate_key", "key_view", "new_key_id", "tenant_view"]

MAX_BULK = 10_000
_GATEWAY_SET_KEY_FIELDS = ("id", "key", "sha256", "hmac_sha256", "key_hash", "created", "revoked", "tenant")
_TENANT_FIELDS = ("name", "plan", "status", "subdomain", "allowed_models", "limits", "metadata")


def generate_key(prefix: str) -> str:
    """A new API key: the recognizable prefix and 256 bits from the OS CSPRNG, base64url."""
    return prefix + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def tenant_view(entry: TenantEntry, keys: int) -> dict[str, Any]:
    return {**entry.tenant.to_json(), "source": entry.source, "keys": keys}


def key_view(entry: KeyEntry) -> dict[str, Any]:
    doc = entry.key.to_json()
    del doc["key_hash"]
    doc["source"] = entry.source
    return doc


def _invalid(problems: Problems) -> BadRequest:
    shown = problems.lines[:20]
    more = f" (and {len(problems.lines) - 20} more)" if len(problems.lines) > 20 else ""
    return BadRequest("invalid input: " + "; ".join(shown) + more, code="invalid_input")


class Manager:
    """The operations behind the admin API, over one process's :class:`Registry` and the config in force."""

    def __init__(self, registry: Registry, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.config = config
        self.clock = clock

    @property
    def directory(self) -> Directory:
        return self.registry.directory

    # -- lookups --------------------------------------------------------
    def tenant(self, tenant_id: str) -> TenantEntry:
        entry = self.directory.tenants.get(tenant_id)
        if entry is None:
            raise NotFound(f"no tenant {tenant_id!r}", code="tenant_not_found")
        return entry

    def key(self, key_id: str) -> KeyEntry:
        entry = self.directory.key_ids.get(key_id)
        if entry is None:
            raise NotFound(f"no API key {key_id!r}", code="key_not_found")
        return entry

    # -- tenants --------------------------------------------------------
    def _parse_new_tenant(
        self, doc: Any, path: str, problems: Problems, subdomains: dict[str, str], now: float
    ) -> tuple[Tenant | None, list[Any]]:
        if not isinstance(doc, dict):
            problems.add(path, "must be a JSON object")
            return None, []
        node = Node(doc, path, problems)
        tenant_id = node.str("id", pattern=TENANT_ID)
        tenant = parse_tenant(tenant_id or "", node, created=now)
        key_docs = node.raw("keys", None) or []
        if not isinstance(key_docs, list):
            node.error("keys", "must be a list")
            key_docs = []
        node.finish()
        if tenant_id is None:
            return None, []
        check_tenant_refs(
            tenant, path, problems, plans=self.config.plans, models=self.config.models, subdomain_owner=subdomains
        )
        if tenant.subdomain is not None:
            subdomains.setdefault(tenant.subdomain, tenant_id)
        return tenant, key_docs

    async def create_tenants(
        self, docs: Any, *, path: str = "tenants", single: bool = False
    ) -> tuple[list[Tenant], list[tuple[ApiKey, str]]]:
        """Create every tenant in ``docs`` (with optional ``keys``), or none of them; ``single``: problems name bare fields."""
        if not isinstance(docs, list) or not docs:
            raise BadRequest(f"{path} must be a non-empty list of tenants", code="invalid_input")
        if len(docs) > MAX_BULK:
            raise BadRequest(f"at most {MAX_BULK} tenants per call", code="invalid_input")
        now = self.clock()
        problems = Problems()
        subdomains = dict(self.directory.subdomains)
        tenants: list[Tenant] = []
        new_keys: list[tuple[ApiKey, str]] = []
        seen: set[str] = set()
        for i, doc in enumerate(docs):
            where = "" if single else f"{path}[{i}]"
            tenant, key_docs = self._parse_new_tenant(doc, where, problems, subdomains, now)
            if tenant is None:
                continue
            if tenant.id in seen:
                problems.add(f"{where}.id" if where else "id", f"tenant {tenant.id!r} appears twice in this request")
            seen.add(tenant.id)
            tenants.append(tenant)
            for j, kdoc in enumerate(key_docs):
                key = self._parse_new_key(
                    tenant.id, kdoc, f"{where}.keys[{j}]" if where else f"keys[{j}]", problems, now, tenant
                )
                if key is not None:
                    new_keys.append(key)
        if problems:
            raise _invalid(problems)
        taken = [t.id for t in tenants if t.id in self.directory.tenants]
        if taken:
            raise RegistryConflict(
                f"tenant already exists: {', '.join(taken[:5])}" + (" ..." if len(taken) > 5 else "")
            )
        changes: dict[str, Any] = {f"t:{t.id}": t.to_json() for t in tenants}
        changes.update({f"k:{k.id}": k.to_json() for k, _plain in new_keys})
        await self.registry.write(changes, create_only=list(changes))
        return tenants, new_keys

    async def update_tenant(self, tenant_id: str, patch: Any) -> TenantEntry:
        entry = self.tenant(tenant_id)
        if not isinstance(patch, dict) or not patch:
            raise BadRequest("send a JSON object with the fields to change", code="invalid_input")
        unknown = [k for k in patch if k not in _TENANT_FIELDS]
        if unknown:
            raise BadRequest(
                f"cannot change {', '.join(map(str, unknown))}; changeable: {', '.join(_TENANT_FIELDS)}",
                code="invalid_input",
            )
        doc = {**entry.tenant.to_json(), **patch}
        doc.pop("id", None)
        problems = Problems()
        node = Node(doc, "", problems)
        tenant = parse_tenant(tenant_id, node, created=entry.tenant.created)
        node.finish()
        check_tenant_refs(
            tenant,
            "",
            problems,
            plans=self.config.plans,
            models=self.config.models,
            subdomain_owner=self.directory.subdomains,
        )
        if problems:
            raise _invalid(problems)
        await self.registry.write({f"t:{tenant_id}": tenant.to_json()})
        return self.tenant(tenant_id)

    async def set_status(self, tenant_id: str, status: str) -> TenantEntry:
        entry = self.tenant(tenant_id)
        if entry.tenant.status != status:
            await self.registry.write({f"t:{tenant_id}": replace(entry.tenant, status=status).to_json()})
        return self.tenant(tenant_id)

    def deletion_plan(self, tenant_id: str) -> dict[str, Any]:
        entry = self.tenant(tenant_id)
        if self.directory.is_config_tenant(tenant_id):
            raise BadRequest(
                f"tenant {tenant_id!r} is declared in the config file; remove it there (or suspend it here)",
                code="declared_in_config",
            )
        keys = self.directory.keys_of(tenant_id)
        return {"tenant": entry.tenant.to_json(), "keys": [k.key.id for k in keys]}

    async def delete_tenant(self, tenant_id: str) -> None:
        plan = self.deletion_plan(tenant_id)
        changes: dict[str, Any] = {f"t:{tenant_id}": None}
        changes.update({f"k:{kid}": None for kid in plan["keys"] if self.directory.is_api_key(kid)})
        await self.registry.write(changes)

    # -- keys -----------------------------------------------------------
    def _parse_new_key(
        self, tenant_id: str, doc: Any, path: str, problems: Problems, now: float, tenant: Tenant
    ) -> tuple[ApiKey, str] | None:
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            problems.add(path, "must be a JSON object")
            return None
        for forbidden in _GATEWAY_SET_KEY_FIELDS:
            if forbidden in doc:
                problems.add(f"{path}.{forbidden}", "is set by the gateway")
        plaintext = generate_key(self.config.identity.key_prefix)
        key_id = new_key_id()
        data = {k: v for k, v in doc.items() if k not in _GATEWAY_SET_KEY_FIELDS}
        node = Node({**data, "key": plaintext, "id": key_id}, path, problems)
        key = parse_key(node, tenant_id, secret=self.config.identity.key_secret, default_id=key_id, created=now)
        node.finish()
        if key.expires is not None and key.expires <= now:
            problems.add(f"{path}.expires", "is in the past")
        for j, m in enumerate(key.models or ()):
            if m not in self.config.models:
                problems.add(f"{path}.models[{j}]", f"unknown model {m!r}")
        return key, plaintext

    async def create_key(self, tenant_id: str, doc: Any) -> tuple[ApiKey, str]:
        entry = self.tenant(tenant_id)
        problems = Problems()
        created = self._parse_new_key(tenant_id, doc, "", problems, self.clock(), entry.tenant)
        if problems or created is None:
            raise _invalid(problems)
        key, plaintext = created
        await self.registry.write({f"k:{key.id}": key.to_json()}, create_only=[f"k:{key.id}"])
        return key, plaintext

    async def revoke_key(self, key_id: str) -> KeyEntry:
        entry = self.key(key_id)
        if not entry.key.revoked:
            if self.directory.is_api_key(key_id):
                await self.registry.write({f"k:{key_id}": replace(entry.key, revoked=True).to_json()})
            else:
                await self.registry.write({f"r:{key_id}": {"revoked_at": self.clock()}})
        return self.key(key_id)
