"""Identity: who is calling (the identifier chain, API keys, JWTs and their JWKS), and the directory of tenants and keys it reads."""

from __future__ import annotations

from tollgate.identity.chain import (
    IdentityRuntime,
    TenantRefused,
    authenticate,
    authenticate_fresh,
    client_ip,
    compile_identity,
)
from tollgate.identity.directory import ANONYMOUS, Directory, Principal
from tollgate.identity.jwks import SigningKeysStale

__all__ = [
    "ANONYMOUS",
    "Directory",
    "IdentityRuntime",
    "Principal",
    "SigningKeysStale",
    "TenantRefused",
    "authenticate",
    "authenticate_fresh",
    "client_ip",
    "compile_identity",
]
