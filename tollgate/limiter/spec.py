"""``LimitSpec``: a frozen description of one limit to apply to a request."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CALENDARS",
    "FAIL_MODES",
    "KINDS",
    "RESERVED_UNITS",
    "UNITS",
    "Calendar",
    "FailMode",
    "Kind",
    "LimitSpec",
    "Unit",
]

Kind = Literal["sliding_window", "gcra", "fixed_window", "concurrency", "shaping"]
FailMode = Literal["fail_open", "fail_closed", "local"]
Calendar = Literal["minute", "hour", "day", "month"]
Unit = Literal["requests", "tokens", "input_tokens", "output_tokens", "nanos"]

KINDS: tuple[str, ...] = ("sliding_window", "gcra", "fixed_window", "concurrency", "shaping")
FAIL_MODES: tuple[str, ...] = ("fail_open", "fail_closed", "local")
CALENDARS: tuple[str, ...] = ("minute", "hour", "day", "month")
UNITS: tuple[str, ...] = ("requests", "tokens", "input_tokens", "output_tokens", "nanos")
# Units whose cost is an estimate reserved at admission and settled to what the request really used.
RESERVED_UNITS = frozenset({"tokens", "input_tokens", "output_tokens", "nanos"})

LIMIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SCOPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
MAX_WINDOW_MS = 400 * 86_400_000  # a little over a year
MAX_LIMIT = 10**15  # a money budget of a million in nano-units; exact in Lua's doubles and Redis's integers


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitSpec:
    """One limit to check and consume for a request.

    ``name``       the rule's name (reported in headers and metrics; part of the key)
    ``kind``       sliding_window | gcra | fixed_window | concurrency | shaping (a leaky bucket as a queue:
                   a request over the rate is admitted with a wait, its turn; see lua/shaping.lua)
    ``limit``      units per window (requests or tokens), or leases held at once
    ``window_ms``  the window; the lease TTL for concurrency; ignored with ``calendar``
    ``cost``       units this request consumes now (for tokens: the estimate reserved)
    ``scope_key``  ((scope, value), ...) that selects the counter, e.g. (("key", "k1"),)
    ``tenant``     the hash-tag group: every key of one tenant shares a Cluster slot;
                   None for limits of other scopes (global, per IP)
    ``fail_mode``  when the store fails: fail_open, fail_closed, or local (the
                   embedded engine with the limit divided among gateway instances)
    ``shadow``     evaluated and reported, never refuses
    ``calendar``   fixed_window only: minute | hour | day | month, in UTC
    ``unit``       requests; tokens (input + output), input_tokens, output_tokens, or
                   nanos (money, 1e-9 of the pricing currency): these are reserved
                   now as an estimate and settled later to what was really used
    ``slots``      sliding_window only: slots per window (precision)
    ``max_delay_ms`` shaping only: the longest a request may wait for its turn; past it, refused
    """

    name: str
    kind: Kind
    limit: int
    window_ms: int = 60_000
    cost: int = 1
    scope_key: tuple[tuple[str, str], ...] = ()
    tenant: str | None = None
    fail_mode: FailMode = "fail_open"
    shadow: bool = False
    calendar: Calendar | None = None
    unit: Unit = "requests"
    slots: int = 20
    max_delay_ms: int = 0
    # True when the cost is an estimate to settle later (token and money limits). Derived, kept as a field because
    # admission and the limiter ask it several times per request.
    reserves: bool = dataclasses.field(init=False, repr=False, compare=False)

    # Written out, not generated: the dataclass's generated __init__ runs as interpreted code even in the compiled
    # build, one object.__setattr__ a field (about 2.6 µs a LimitSpec, built for every rule's limit of a request
    # and for each extension's charges); written here it is compiled. The dataclass keeps eq, hash and repr.
    def __init__(
        self,
        *,
        name: str,
        kind: Kind,
        limit: int,
        window_ms: int = 60_000,
        cost: int = 1,
        scope_key: tuple[tuple[str, str], ...] = (),
        tenant: str | None = None,
        fail_mode: FailMode = "fail_open",
        shadow: bool = False,
        calendar: Calendar | None = None,
        unit: Unit = "requests",
        slots: int = 20,
        max_delay_ms: int = 0,
        _checked: bool = False,
    ) -> None:
        """``_checked``: the values are known to pass the checks (:meth:`with_cost` of a spec that passed them)."""
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "window_ms", window_ms)
        object.__setattr__(self, "cost", cost)
        object.__setattr__(self, "scope_key", scope_key)
        object.__setattr__(self, "tenant", tenant)
        object.__setattr__(self, "fail_mode", fail_mode)
        object.__setattr__(self, "shadow", shadow)
        object.__setattr__(self, "calendar", calendar)
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "slots", slots)
        object.__setattr__(self, "max_delay_ms", max_delay_ms)
        if not _checked:
            problems = _problems(self)
            if problems:
                raise ValueError(f"limit {name!r}: " + "; ".join(problems))
        object.__setattr__(self, "reserves", unit in RESERVED_UNITS and kind != "concurrency")

    def with_cost(self, cost: int) -> LimitSpec:
        """The same limit with another cost (the per-request part), checked as a new one is."""
        # The constructor, not dataclasses.replace: that walks the fields in Python on every call (once or twice
        # a metered stream, for each extension's charges). Of the checks only those of the cost can fail for a spec
        # that passed them all (the cost's range, a lease's 0 or 1): a valid cost skips the others (their regular
        # expressions, most of a call's cost), an invalid one goes through them all to raise what a new spec raises.
        return LimitSpec(
            name=self.name,
            kind=self.kind,
            limit=self.limit,
            window_ms=self.window_ms,
            cost=cost,
            scope_key=self.scope_key,
            tenant=self.tenant,
            fail_mode=self.fail_mode,
            shadow=self.shadow,
            calendar=self.calendar,
            unit=self.unit,
            slots=self.slots,
            max_delay_ms=self.max_delay_ms,
            _checked=_int_in(cost, 0, MAX_LIMIT) and (self.kind != "concurrency" or cost <= 1),
        )


def _problems(s: LimitSpec) -> list[str]:
    out: list[str] = []
    if not isinstance(s.name, str) or not LIMIT_NAME.fullmatch(s.name):
        out.append(f"name must match {LIMIT_NAME.pattern}")
    if s.kind not in KINDS:
        out.append(f"kind must be one of {', '.join(KINDS)}")
    if not _int_in(s.limit, 0, MAX_LIMIT):
        out.append(f"limit must be an integer in 0..{MAX_LIMIT}")
    if not _int_in(s.window_ms, 1, MAX_WINDOW_MS):
        out.append(f"window_ms must be an integer in 1..{MAX_WINDOW_MS}")
    if not _int_in(s.cost, 0, MAX_LIMIT):
        out.append("cost must be a non-negative integer")
    if s.fail_mode not in FAIL_MODES:
        out.append(f"fail_mode must be one of {', '.join(FAIL_MODES)}")
    if s.unit not in UNITS:
        out.append(f"unit must be one of {', '.join(UNITS)}")
    if not _is_bool(s.shadow):
        out.append("shadow must be a boolean")
    if s.tenant is not None and (not isinstance(s.tenant, str) or not s.tenant):
        out.append("tenant must be a non-empty string or None")
    if not isinstance(s.scope_key, tuple) or not all(
        isinstance(p, tuple)
        and len(p) == 2
        and isinstance(p[0], str)
        and SCOPE_NAME.fullmatch(p[0])
        and isinstance(p[1], str)
        for p in s.scope_key
    ):
        out.append(f"scope_key must be a tuple of (scope, value) string pairs, scope matching {SCOPE_NAME.pattern}")
    if s.calendar is not None and (s.kind != "fixed_window" or s.calendar not in CALENDARS):
        out.append(f"calendar is for fixed_window only, one of {', '.join(CALENDARS)}")
    if s.kind == "concurrency" and (s.cost not in (0, 1) or s.unit != "requests"):
        out.append("a concurrency limit costs 0 or 1 lease and counts requests")
    if s.kind == "gcra" and isinstance(s.limit, int) and isinstance(s.window_ms, int) and s.limit > s.window_ms * 1000:
        out.append("gcra resolves one unit per microsecond: limit must be <= window_ms * 1000")
    if s.kind == "shaping":
        if s.unit != "requests":
            out.append("a shaping limit counts requests")
        if not _int_in(s.max_delay_ms, 0, MAX_WINDOW_MS):
            out.append(f"max_delay_ms must be an integer in 0..{MAX_WINDOW_MS}")
        if isinstance(s.limit, int) and isinstance(s.window_ms, int) and s.limit > s.window_ms * 1000:
            out.append("shaping resolves one request per microsecond: limit must be <= window_ms * 1000")
    elif s.max_delay_ms:
        out.append("max_delay_ms is for shaping limits only")
    if s.kind == "sliding_window" and not _int_in(s.slots, 1, 1000):
        out.append("slots must be an integer in 1..1000")
    return out


def _is_bool(v: object) -> bool:
    return isinstance(v, bool)


def _int_in(v: object, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
