"""Counter keys: every value encoded so that nothing can collide or move a key to another Cluster slot.

    <prefix>:{t.<tenant>}:<kind>:<name>:<scope>=<value>,...     a tenant's limit
    <prefix>:{s.<scope>=<value>,...}:<kind>:<name>:<scope>...    any other scope (global: {s.})

Values (tenant, scope values) are percent-encoded over the bytes of their
UTF-8 form, keeping only ``A-Z a-z 0-9 _ . -``: ``{ } : * , = ~ %``, NUL,
spaces and non-ASCII characters can never appear raw, so the hash tag is the
first ``{...}`` and is exactly the one intended. An encoding longer than 64
characters is replaced by ``~`` and 32 hex digits of its SHA-256 (``~`` never
appears in an encoded value, so the two forms cannot collide). Limit and
scope names are validated by :class:`LimitSpec`. The kind segment carries
the window geometry of sliding and fixed windows, so a changed window starts
fresh counters instead of misreading old ones, and the version of a layout
that changed: ``sw2`` is a sliding window whose hash also holds its total and
its lowest and highest slot (lua/sliding_window.lua); the ``sw`` keys of the
earlier layout are never read as ``sw2`` ones.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote

from tollgate.limiter.spec import LimitSpec

__all__ = ["PREFIX", "KeyBuilder", "encode_value", "tenant_key_pattern"]

PREFIX = re.compile(r"[A-Za-z0-9_.-]{1,32}")
MAX_ENCODED = 64


def encode_value(value: str) -> str:
    """An injective, slot-safe encoding of one tenant or scope value."""
    raw = value.encode("utf-8", "surrogatepass")
    encoded = quote(raw, safe="").replace("~", "%7E")
    if len(encoded) > MAX_ENCODED:
        return "~" + hashlib.sha256(raw).hexdigest()[:32]
    return encoded


def tenant_key_pattern(tenant: str, prefix: str = "tg") -> str:
    """A SCAN MATCH pattern for every counter of one tenant (admin API: list or drop a tenant's keys)."""
    return f"{prefix}:{{t.{encode_value(tenant)}}}:*"


def _kind_segment(spec: LimitSpec) -> str:
    if spec.kind == "sliding_window":
        return f"sw2.{spec.window_ms}.{spec.slots}"
    if spec.kind == "fixed_window":
        return f"fw.{spec.calendar}" if spec.calendar else f"fw.{spec.window_ms}"
    if spec.kind == "gcra":
        return "gc"
    if spec.kind == "shaping":
        return "sh"
    return "cc"


class KeyBuilder:
    """Builds (and remembers, up to ``cache_size``) the key and hash tag of a limit."""

    __slots__ = ("prefix", "_cache", "_cache_size")

    def __init__(self, prefix: str = "tg", *, cache_size: int = 65_536) -> None:
        if not PREFIX.fullmatch(prefix):
            raise ValueError(f"key prefix must match {PREFIX.pattern}")
        self.prefix = prefix
        self._cache: dict[tuple[object, ...], tuple[str, str]] = {}
        self._cache_size = cache_size

    def key_and_tag(self, spec: LimitSpec) -> tuple[str, str]:
        """``(key, hash tag)``; the tag is the text between the braces."""
        ident = (spec.name, spec.kind, spec.window_ms, spec.slots, spec.calendar, spec.tenant, spec.scope_key)
        hit = self._cache.get(ident)
        if hit is not None:
            return hit
        scope = ",".join(f"{s}={encode_value(v)}" for s, v in spec.scope_key)
        tag = f"t.{encode_value(spec.tenant)}" if spec.tenant is not None else f"s.{scope}"
        built = (f"{self.prefix}:{{{tag}}}:{_kind_segment(spec)}:{spec.name}:{scope}", tag)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[ident] = built
        return built

    def key(self, spec: LimitSpec) -> str:
        return self.key_and_tag(spec)[0]
