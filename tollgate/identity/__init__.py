"""Identity: who is calling (the identifier chain, API keys, JWTs), and the directory of tenants and keys it reads."""

from __future__ import annotations

from tollgate.identity.chain import IdentityRuntime, authenticate, client_ip, compile_identity
from tollgate.identity.directory import ANONYMOUS, Directory, Principal

__all__ = [
    "ANONYMOUS",
    "Directory",
    "IdentityRuntime",
    "Principal",
    "authenticate",
    "client_ip",
    "compile_identity",
]
