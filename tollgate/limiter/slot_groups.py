"""Admission grouped by hash slot: a request's limits as admit.lua calls, and what one call's reply admitted."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from tollgate.limiter.decision import Charge, Decision, Lease, LimitState, Reservation
from tollgate.limiter.keys import KeyBuilder
from tollgate.limiter.script_args import ADMIT_STRIDE, joined_limits, limit_state, packed_limit
from tollgate.limiter.spec import LimitSpec

__all__ = ["LAYOUTS_LIMIT", "Group", "Item", "Layout", "Outcome", "alone", "group_outcome", "layout_of", "slot_groups"]

LAYOUTS_LIMIT = 4_096  # layouts a limiter remembers; one is about 1.5 KB; spec tuples vary with the token estimate


class Item(NamedTuple):
    position: int  # in the request's list of limits
    spec: LimitSpec
    key: str
    tag: str
    args: str | None  # the limit packed for admit.lua; None for a lease, whose id is drawn per request


class Outcome:
    """What one group's admission answered: admitted or not, each limit's state, what to settle or release later."""

    __slots__ = ("allowed", "states", "charges", "degraded")

    def __init__(
        self, allowed: bool, states: list[tuple[int, LimitState]], charges: list[Charge], degraded: bool
    ) -> None:
        self.allowed = allowed
        self.states = states
        self.charges = charges
        self.degraded = degraded


# One limit's offset of its fields in admit.lua's reply, and the fixed fields of its LimitState: name, kind, unit,
# limit and shadow.
_Fixed = tuple[int, str, str, str, int, bool]
# One limit an admitted call leaves to settle or release: the reply's offset of its mark, its key, tag and spec.
_Held = tuple[int, str, str, LimitSpec]


class Group(NamedTuple):
    """One admit.lua call: its limits, KEYS, and joined ARGV whose last value, the lease id, is "" until drawn;
    and, worked out once, what a reply is read with when this call is the request's only one (see :func:`alone`)."""

    items: list[Item]
    keys: tuple[str, ...]  # a tuple, the same one call after call: the embedded engine registers it (run_sync)
    args: list[Any]
    wants_lease: bool
    fixed: tuple[_Fixed, ...]  # per limit: where its reply fields start, its LimitState's fields the reply lacks
    reserved: tuple[_Held, ...]  # the limits whose estimate settles later (a cost to reconcile)
    leased: tuple[_Held, ...]  # the concurrency limits: a lease to release
    lease_ttl_ms: int  # the shortest window of the leased limits (a Lease's TTL), 0 without any

    @classmethod
    def of(cls, items: list[Item]) -> Group:
        keys = tuple([it.key for it in items])
        args: list[Any] = [joined_limits([packed_limit(it.spec) if it.args is None else it.args for it in items]), ""]
        fixed = tuple(
            [
                (2 + n * ADMIT_STRIDE, it.spec.name, it.spec.kind, it.spec.unit, it.spec.limit, it.spec.shadow)
                for n, it in enumerate(items)
            ]
        )
        marks = [(2 + n * ADMIT_STRIDE + 4, it) for n, it in enumerate(items) if it.spec.cost > 0]
        reserved = tuple([(j, it.key, it.tag, it.spec) for j, it in marks if it.spec.reserves])
        leased = tuple([(j, it.key, it.tag, it.spec) for j, it in marks if it.args is None])
        ttl = min([spec.window_ms for *_, spec in leased], default=0)
        return cls(items, keys, args, any(it.args is None for it in items), fixed, reserved, leased, ttl)

    def argv(self, lease_id: str) -> list[Any]:
        if not self.wants_lease:
            return self.args  # shared: the engines never change ARGV
        return [self.args[0], lease_id]


class Layout(NamedTuple):
    """How one tuple of specs is admitted on a store kind: worked out once (admission reuses its spec tuples)."""

    specs: Sequence[LimitSpec]
    items: list[Item]
    wants_lease: bool
    groups: list[Group]


def layout_of(specs: Sequence[LimitSpec], single_slot: bool, keys: KeyBuilder) -> Layout:
    """The items and admit.lua calls of ``specs``: one call, or one per hash slot when the store needs it."""
    items = []
    for i, spec in enumerate(specs):
        key, tag = keys.key_and_tag(spec)  # remembered by the key builder
        items.append(Item(i, spec, key, tag, None if spec.kind == "concurrency" else packed_limit(spec)))
    groups = [Group.of(g) for g in slot_groups(items, single_slot)]
    return Layout(specs, items, any(it.args is None for it in items), groups)


def slot_groups(items: list[Item], single_slot: bool) -> list[list[Item]]:
    """All items together, or (``single_slot``: Cluster) one group per hash tag, the tenant's first."""
    if not single_slot:
        return [items]
    by_tag: dict[str, list[Item]] = {}
    for it in items:
        by_tag.setdefault(it.tag, []).append(it)
    # the tenant's own limits first: they are the ones most likely to refuse
    return sorted(by_tag.values(), key=lambda g: not g[0].tag.startswith("t."))


_new = tuple.__new__  # a named tuple from one tuple, without a Python-level constructor (several per request)


def group_outcome(store: str, group: list[Item], reply: Sequence[int], lease_id: str, every_charge: bool) -> Outcome:
    """admit.lua's reply for one group: each limit's state and, when admitted, what settles or releases later
    (every charge when ``every_charge``: a later group's refusal refunds them)."""
    admitted = reply[0] == 1
    states = []
    charges = []
    j = 2  # this limit's fields in the reply
    for it in group:
        spec = it.spec
        states.append((it.position, limit_state(spec, reply, j)))
        if admitted and spec.cost > 0 and (every_charge or spec.reserves or it.args is None):
            charges.append(_new(Charge, (store, it.key, it.tag, spec, reply[j + 4], lease_id)))
        j += ADMIT_STRIDE
    return Outcome(admitted, states, charges, False)


def alone(store: str, group: Group, reply: Sequence[int], lease_id: str) -> Decision:
    """admit.lua's reply when ``group`` is the request's only call (every limit in one slot, the usual case): the
    decision itself, each limit's state in the order of the request's limits, read with the group's fixed parts.

    What :func:`group_outcome` and the limiter's assembly of outcomes give for one group, without the positions,
    the sort and the lists between them (an admitted request's limits were all consumed: nothing to refund)."""
    # The reply's items as objects from a list (the engines' replies are lists): read without the generic item
    # lookup, and put into the states as they are, never unboxed to native integers and boxed again. The
    # constructors and tuple.__new__ in locals: each use of a module's global is a dictionary lookup (compiled).
    items: list[Any] = reply if type(reply) is list else list(reply)
    new = _new
    state = LimitState
    limits = tuple(
        [
            new(
                state,
                (name, kind, unit, items[j] == 1, limit, items[j + 1], items[j + 2], items[j + 3], shadow, False),
            )
            for j, name, kind, unit, limit, shadow in group.fixed
        ]
    )
    if items[0] != 1:
        return Decision(False, limits, False, retry_after(limits))
    reservation = lease = None
    charge = Charge
    if group.reserved:
        reservation = Reservation(
            tuple([new(charge, (store, k, t, s, items[j], lease_id)) for j, k, t, s in group.reserved])
        )
    if group.leased:
        lease = Lease(
            tuple([new(charge, (store, k, t, s, items[j], lease_id)) for j, k, t, s in group.leased]),
            group.lease_ttl_ms,
        )
    # tuple.__new__: the named tuple without its Python-level constructor (one per admitted request)
    return new(Decision, (True, limits, False, 0, reservation, lease, False))


def retry_after(limits: Sequence[LimitState]) -> int:
    """A refusal's wait: the longest of the limits that refused, -1 when one never fits."""
    waits = [s.retry_after_ms for s in limits if not s.allowed and not s.shadow]
    if not waits:
        return 0
    return -1 if -1 in waits else max(waits)
