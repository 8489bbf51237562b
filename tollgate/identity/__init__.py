"""Identity: who is calling (the identifier chain), the registry of tenants and keys, and its persistence."""

from __future__ import annotations

from tollgate.identity.chain import IdentityRuntime, authenticate, client_ip, compile_identity, identify
from tollgate.identity.directory import ANONYMOUS, Directory, Principal
from tollgate.registry.registry import Registry, registry_watching

__all__ = [
    "ANONYMOUS",
    "Directory",
    "IdentityRuntime",
    "Principal",
    "Registry",
    "authenticate",
    "client_ip",
    "compile_identity",
    "identify",
    "registry_watching",
]
