"""Rate-limit state in response headers: OpenAI's ``x-ratelimit-*`` names and the IETF ``RateLimit`` fields."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

__all__ = ["HeaderLimit", "HeaderPlan", "LimitReading", "format_reset", "ratelimit_headers", "retry_after_seconds"]


class HeaderLimit(NamedTuple):
    """One limit's state as the headers need it; ``unit`` is ``requests`` or ``tokens`` (a tuple: built per limit per request)."""

    name: str
    unit: str
    limit: int
    remaining: int
    reset_ms: int
    window_ms: int


# A minute or more is written in whole seconds: those texts, by second (a month's window resets once a second).
_LONG_RESETS: dict[int, str] = {}
_LONG_EXACT = 10**12  # below it, int(ms / 1000) == ms // 1000 for every integer ms (the float is exact enough)


def format_reset(ms: int | float) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``.

    ``ms`` may be a float (the compiled module checks the declared type, so the union is spelled out)."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    if type(ms) is int:
        if ms < 60_000:  # in integer arithmetic: 1500 -> "1.5s"
            whole, frac = divmod(ms, 1000)
            return f"{whole}s" if not frac else f"{whole}.{frac:03d}".rstrip("0") + "s"
        if ms < _LONG_EXACT:
            text = _LONG_RESETS.get(ms // 1000)
            if text is None:
                if len(_LONG_RESETS) >= 4096:
                    _LONG_RESETS.clear()
                text = _LONG_RESETS[ms // 1000] = _long_reset(ms)
            return text
    seconds = ms / 1000
    if seconds < 60:
        text = f"{seconds:.3f}".rstrip("0").rstrip(".")
        return f"{text}s"
    return _long_reset(ms)


def _long_reset(ms: float) -> str:
    """A reset of a minute or more: whole hours, minutes and seconds."""
    whole = int(ms / 1000)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


def retry_after_seconds(ms: int) -> str:
    """``Retry-After`` takes whole seconds: round up so a client never retries too early."""
    return str(max(1, -(-ms // 1000)))


_SF_STRINGS: dict[str, str] = {}


def _sf_string(name: str) -> str:
    """A structured-field string; rule names are few, so each is quoted once."""
    quoted = _SF_STRINGS.get(name)
    if quoted is None:
        if len(_SF_STRINGS) >= 4096:
            _SF_STRINGS.clear()
        quoted = _SF_STRINGS[name] = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return quoted


# Per unit: the names of its three x-ratelimit headers.
_NAMES = {
    unit: (f"x-ratelimit-limit-{unit}", f"x-ratelimit-remaining-{unit}", f"x-ratelimit-reset-{unit}")
    for unit in ("requests", "tokens")
}
# (name, limit, window_ms) -> (limit as text, quoted name, RateLimit-Policy item): the same for every request of a limit.
_STATIC: dict[tuple[str, int, int], tuple[str, str, str]] = {}


def _static(lim: HeaderLimit) -> tuple[str, str, str]:
    key = (lim.name, lim.limit, lim.window_ms)
    hit = _STATIC.get(key)
    if hit is None:
        if len(_STATIC) >= 4096:
            _STATIC.clear()
        name = _sf_string(lim.name)
        window = f";w={max(1, lim.window_ms // 1000)}" if lim.window_ms > 0 else ""
        hit = _STATIC[key] = (str(lim.limit), name, f"{name};q={lim.limit}{window}")
    return hit


def ratelimit_headers(limits: Iterable[HeaderLimit]) -> dict[str, str]:
    """Headers for the tightest request limit and the tightest token limit (fewest remaining, then soonest reset).

    A plan made for these limits alone; an admission keeps its :class:`HeaderPlan` and uses this only where it
    has none (a refusal answered before every limit was evaluated)."""
    shown = list(limits)
    return HeaderPlan(enumerate(shown)).headers(shown)


class LimitReading(Protocol):
    """What the headers read of one limit's state after admission (``LimitState`` is one)."""

    @property
    def limit(self) -> int: ...

    @property
    def remaining(self) -> int: ...

    @property
    def reset_ms(self) -> int: ...


# One limit a plan reports: its position among the states, name, limit, window, and its _static parts.
_Slot = tuple[int, str, int, int, tuple[str, str, str]]


class HeaderPlan:
    """The headers of one list of limits, worked out once: which limits show (by position) under which unit,
    and their fixed parts; per request only the tightest is picked and its remaining and reset written.

    :func:`ratelimit_headers` is a plan made for one list and used once.
    """

    __slots__ = ("requests", "tokens", "_units")

    def __init__(self, limits: Iterable[tuple[int, HeaderLimit]]) -> None:
        requests: list[_Slot] = []
        tokens: list[_Slot] = []
        for position, lim in limits:
            slot = (position, lim.name, lim.limit, lim.window_ms, _static(lim))
            if lim.unit == "requests":
                requests.append(slot)
            elif lim.unit == "tokens":
                tokens.append(slot)
        self.requests = tuple(requests)
        self.tokens = tuple(tokens)
        # per unit shown: its three header names, its first limit, the others
        self._units = tuple(
            (_NAMES[unit], slots[0], slots[1:])
            for unit, slots in (("requests", self.requests), ("tokens", self.tokens))
            if slots
        )

    def headers(self, states: Sequence[LimitReading]) -> dict[str, str]:
        """The headers for ``states`` (one per limit of the list the plan was made for, in its order)."""
        headers: dict[str, str] = {}
        policy = state = ""
        for (limit_header, remaining_header, reset_header), best, others in self._units:
            st = states[best[0]]
            for slot in others:  # fewest remaining, then soonest reset; the first of equals
                other = states[slot[0]]
                if other.remaining < st.remaining or (other.remaining == st.remaining and other.reset_ms < st.reset_ms):
                    best, st = slot, other
            _, name, limit, window_ms, parts = best
            if st.limit != limit:  # a fail mode's share of the limit (``local``): its own parts
                parts = _static(HeaderLimit(name, "", st.limit, 0, 0, window_ms))
            limit_text, quoted, item = parts
            remaining_count = st.remaining
            reset_ms = st.reset_ms
            remaining = str(remaining_count) if remaining_count > 0 else "0"
            headers[limit_header] = limit_text
            headers[remaining_header] = remaining
            headers[reset_header] = format_reset(reset_ms)
            reading = f"{quoted};r={remaining};t={-(-reset_ms // 1000) if reset_ms > 0 else 0}"
            if policy:
                policy = f"{policy}, {item}"
                state = f"{state}, {reading}"
            else:
                policy, state = item, reading
        if policy:
            headers["RateLimit-Policy"] = policy
            headers["RateLimit"] = state
        return headers
