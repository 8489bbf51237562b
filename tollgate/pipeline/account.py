"""Account stage: the admission settled in the background, the request's record queued for accounting; never waits."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from tollgate.accounting import Accounting
from tollgate.accounting.records import Record
from tollgate.clock import Clock
from tollgate.pipeline.context import RequestContext
from tollgate.policy.settlement import Settler

__all__ = ["AccountDeps", "account", "capture"]

log = logging.getLogger("tollgate.accounting")


@dataclass(frozen=True, slots=True)
class AccountDeps:
    """What the account stage works with: the settler (reservations, leases), accounting and its wall clock,
    and the clock of ``ctx.started``."""

    settler: Settler
    accounting: Accounting
    wall: Callable[[], float]
    clock: Clock


def account(ctx: RequestContext, deps: AccountDeps) -> None:
    """Called once per request when it ends, however it ends: settle what it reserved, record what it did."""
    if ctx.admission is not None:
        deps.settler.finish(ctx)
    try:
        record = capture(ctx, deps.clock.loop_time(), deps.wall())
        if ctx.cache_hit is not None:  # answered from the response cache (tollgate/accounting/records.py)
            record += (ctx.cache_hit,)
        deps.accounting.record(record)
    except Exception:  # accounting must never fail a request
        log.exception("accounting: cannot record request %s", getattr(ctx, "request_id", "?"))


def capture(ctx: RequestContext, end: float, wall: float) -> Record:
    """The record of ``ctx`` (tollgate/accounting/records.py), read once: attribute reads only, no computation.

    The context itself is not kept: it holds the request and its body, which
    must not live until the next flush. The pipeline does not time the start of
    the upstream call apart (``upstream_started`` is None): accounting counts
    the time up to the end of the answer as the upstream's.
    """
    return (
        ctx.request_id,
        ctx.endpoint,
        ctx.model,
        ctx.model_served,
        ctx.upstream_name,
        ctx.status,
        ctx.error,
        ctx.stream,
        ctx.client_disconnected,
        ctx.client_ip,
        ctx.started,
        ctx.first_byte_at,
        ctx.finished_at,
        ctx.usage,
        len(ctx.body_bytes),
        ctx.principal,
        ctx.end_user,
        ctx.namespace,
        None,
        ctx.attempts,
        end,
        wall,
        ctx.deployment,
    )
