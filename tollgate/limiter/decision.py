"""What an admission answers: per-limit state, the decision, and the handles to settle and release later."""

from __future__ import annotations

from typing import NamedTuple

from tollgate.limiter.spec import LimitSpec

__all__ = [
    "Charge",
    "Consumed",
    "Decision",
    "Extension",
    "Lease",
    "LimitState",
    "Reservation",
    "SettledLimit",
    "Settlement",
]


class LimitState(NamedTuple):
    """One limit's answer. ``retry_after_ms`` is 0 when allowed and -1 when the cost exceeds the limit itself;
    an admitted ``shaping`` limit's is the wait before the request's turn (the admit stage sleeps it).

    ``degraded``: the store failed and the limit's fail mode answered
    (``fail_open`` reports ``remaining = limit``, ``local`` reports the
    embedded engine's share of the limit). Immutable; a named tuple because
    one is built per limit per request.
    """

    name: str
    kind: str
    unit: str
    allowed: bool
    limit: int
    remaining: int
    reset_ms: int
    retry_after_ms: int
    shadow: bool = False
    degraded: bool = False


class Consumed(NamedTuple):
    """What a finished request really used, in every unit a reservation can be held in.

    The fields are named as the units of :class:`LimitSpec`, so ``getattr(consumed, spec.unit)`` is what a
    limit settles to; build one with :meth:`of_usage`.
    """

    tokens: int  # input + output
    input_tokens: int
    output_tokens: int
    nanos: int  # its cost, in 1e-9 of the pricing currency

    @classmethod
    def of_usage(cls, input_tokens: int, output_tokens: int, nanos: int = 0) -> Consumed:
        # tuple.__new__: without the named tuple's Python-level constructor (one per finished request)
        return tuple.__new__(cls, (input_tokens + output_tokens, input_tokens, output_tokens, nanos))

    def of(self, unit: str) -> int:
        """The amount a limit counting ``unit`` settles to."""
        return getattr(self, unit)  # type: ignore[no-any-return]


class Charge(NamedTuple):
    """Where one limit was consumed: the store (``local`` for the fallback), the key, and the mark from admit.lua."""

    store: str
    key: str
    tag: str
    spec: LimitSpec  # as applied (a ``local`` charge carries the divided limit)
    mark: int
    lease_id: str = ""


class Reservation:
    """Token limits reserved at admission with an estimated cost; ``Limiter.settle`` reconciles them once."""

    __slots__ = ("charges", "settlement")

    def __init__(self, charges: tuple[Charge, ...]) -> None:
        self.charges = charges
        self.settlement: Settlement | None = None

    @property
    def reserved(self) -> int:
        """The largest cost reserved on any of its limits (they normally share one estimate)."""
        return max((c.spec.cost for c in self.charges), default=0)

    def __repr__(self) -> str:
        return f"Reservation({[c.spec.name for c in self.charges]}, reserved={self.reserved}, settled={self.settlement is not None})"


class Lease:
    """Concurrency leases held by one request; renew while it runs, release when done (idempotent)."""

    __slots__ = ("charges", "ttl_ms", "released")

    def __init__(self, charges: tuple[Charge, ...], ttl_ms: int = 0) -> None:
        """``ttl_ms``: the shortest window of the charges' limits when the caller knows it (0: worked out here)."""
        self.charges = charges
        if not ttl_ms:
            ttl_ms = charges[0].spec.window_ms
            for c in charges:
                if c.spec.window_ms < ttl_ms:
                    ttl_ms = c.spec.window_ms
        self.ttl_ms = ttl_ms
        self.released = False

    def __repr__(self) -> str:
        return f"Lease({[c.spec.name for c in self.charges]}, released={self.released})"


class Decision(NamedTuple):
    """All-or-nothing answer for a list of limits (immutable).

    ``limits`` holds the state of every limit evaluated (a refused earlier
    group leaves later groups unevaluated; a cached refusal reports only the
    limit known to be over). ``cached``: refused by the local cache of keys
    known to be over their limit, without asking the store.
    """

    allowed: bool
    limits: tuple[LimitState, ...]
    degraded: bool = False
    retry_after_ms: int = 0
    reservation: Reservation | None = None
    lease: Lease | None = None
    cached: bool = False

    @property
    def refused(self) -> tuple[LimitState, ...]:
        """The limits that refused (shadow limits never do)."""
        return tuple(s for s in self.limits if not s.allowed and not s.shadow)


class Extension(NamedTuple):
    """What ``Limiter.extend`` granted: per limit asked (in order) the units granted, 0 when it had too little left.

    ``reservation`` holds the granted charges (each spec's cost is its grant), to settle with the request;
    ``degraded``: a store failed and the limits' fail modes answered.
    """

    granted: tuple[int, ...]
    reservation: Reservation | None
    degraded: bool = False


class SettledLimit(NamedTuple):
    """One limit after settling: units charged (> 0) or refunded (< 0), units over the limit, what is left.
    Immutable; a named tuple because one is built per settled limit per request."""

    name: str
    applied: int
    overdraft: int
    remaining: int
    reset_ms: int


class Settlement(NamedTuple):
    """The result of ``Limiter.settle``; ``degraded`` when a store failed and some limits were not reconciled.
    Immutable; a named tuple because one is built per settled request."""

    limits: tuple[SettledLimit, ...]
    degraded: bool = False

    @property
    def overdraft(self) -> int:
        """The largest overdraft among the limits (0: no budget was overdrawn)."""
        return max((s.overdraft for s in self.limits), default=0)
