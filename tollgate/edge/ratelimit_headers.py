"""Rate-limit state in response headers: OpenAI's ``x-ratelimit-*`` names and the IETF ``RateLimit`` fields."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

__all__ = ["HeaderLimit", "format_reset", "ratelimit_headers", "retry_after_seconds"]


class HeaderLimit(NamedTuple):
    """One limit's state as the headers need it; ``unit`` is ``requests`` or ``tokens`` (a tuple: built per limit per request)."""

    name: str
    unit: str
    limit: int
    remaining: int
    reset_ms: int
    window_ms: int


def format_reset(ms: int) -> str:
    """OpenAI's reset format: ``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        text = f"{seconds:.3f}".rstrip("0").rstrip(".")
        return f"{text}s"
    whole = int(seconds)
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
    """Headers for the tightest request limit and the tightest token limit (fewest remaining)."""
    requests: HeaderLimit | None = None
    tokens: HeaderLimit | None = None
    for lim in limits:  # one pass: this runs on every admitted request
        if lim.unit == "requests":
            if requests is None or (lim.remaining, lim.reset_ms) < (requests.remaining, requests.reset_ms):
                requests = lim
        elif lim.unit == "tokens" and (
            tokens is None or (lim.remaining, lim.reset_ms) < (tokens.remaining, tokens.reset_ms)
        ):
            tokens = lim
    headers: dict[str, str] = {}
    policies: list[str] = []
    states: list[str] = []
    for unit, tightest in (("requests", requests), ("tokens", tokens)):
        if tightest is None:
            continue
        limit_text, name, policy = _static(tightest)
        remaining = str(tightest.remaining) if tightest.remaining > 0 else "0"
        reset_ms = tightest.reset_ms
        limit_header, remaining_header, reset_header = _NAMES[unit]
        headers[limit_header] = limit_text
        headers[remaining_header] = remaining
        headers[reset_header] = format_reset(reset_ms)
        policies.append(policy)
        states.append(f"{name};r={remaining};t={-(-reset_ms // 1000) if reset_ms > 0 else 0}")
    if policies:
        headers["RateLimit-Policy"] = policies[0] if len(policies) == 1 else ", ".join(policies)
        headers["RateLimit"] = states[0] if len(states) == 1 else ", ".join(states)
    return headers
