"""Identify stage: the identifier chain names the request's principal and end user, or refuses it (401, 403)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tollgate.errors import Forbidden
from tollgate.identity import Directory, IdentityRuntime, TenantRefused, authenticate
from tollgate.pipeline.context import RequestContext

__all__ = ["DirectorySource", "IdentifyDeps", "identify"]


class DirectorySource(Protocol):
    """Where the directory in force is read, per request: the registry swaps it when its records reload."""

    @property
    def directory(self) -> Directory: ...


@dataclass(frozen=True, slots=True)
class IdentifyDeps:
    """The identifier chain of the config version, and the registry whose directory it reads."""

    identity: IdentityRuntime
    registry: DirectorySource


def identify(ctx: RequestContext, deps: IdentifyDeps) -> None:
    """Set ``ctx.principal`` and ``ctx.end_user``; refuse a model the principal may not use."""
    identity = deps.identity
    try:
        principal = ctx.principal = authenticate(ctx.request, identity, deps.registry.directory)
    except TenantRefused as refused:
        ctx.principal = refused.principal  # who was refused: its tenant and key go into the record and the audit
        raise
    model = ctx.model
    if model is not None and principal.allowed_models is not None and model not in principal.allowed_models:
        raise Forbidden(f"you are not allowed to use the model {model!r}", param="model", code="model_not_allowed")
    # After authentication: an end user only subdivides the tenant the credential named.
    ctx.end_user = identity.end_users.of(principal, ctx.body, ctx.request.headers)
