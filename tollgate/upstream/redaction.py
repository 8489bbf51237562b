"""Credentials removed from what an upstream wrote before the gateway relays it to a tenant.

A provider's error body may quote the key it was given ("Incorrect API key
provided: sk-...") or echo a header. Relayed error bodies go through
:func:`redact`: the upstream's own secrets (known from its config) and
anything shaped like a credential (``sk-...`` keys, masked ones included,
``Bearer`` tokens, Google ``AIza...`` keys) become ``[redacted]``. The
replacement holds no quote or backslash, so a JSON body stays JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["redact", "secrets_of"]

REDACTED = b"[redacted]"
_CREDENTIAL = re.compile(
    rb"(?i)(bearer\s+)[a-z0-9._~+/=-]{5,}[a-z0-9_~+/=-]"  # an Authorization value (a sentence's full stop stays)
    rb"|(?<![a-z0-9])sk-[a-z0-9_*-]{6,}"  # OpenAI and Anthropic keys (sk-proj-..., sk-ant-...), masked or not
    rb"|(?<![a-z0-9])AIza[0-9a-z_-]{20,}"  # Google API keys
)
# A secret shorter than this is not looked for verbatim: it would match ordinary words.
_MIN_SECRET = 8


def _mask(match: re.Match[bytes]) -> bytes:
    scheme = match.group(1)
    return scheme + REDACTED if scheme else REDACTED


def redact(text: bytes, secrets: Iterable[bytes] = (), *, shapes: bool = True) -> bytes:
    """``text`` without the given secrets and, unless ``shapes`` is false, without anything shaped like a credential.

    ``shapes=False`` is for the operator's log, where a provider's masked key (``sk-...abcd``) says which key failed.
    """
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _CREDENTIAL.sub(_mask, text) if shapes else text


def secrets_of(api_key: str | None, headers: Iterable[tuple[str, str]]) -> tuple[bytes, ...]:
    """What an upstream must never see quoted back to a tenant: its key, and configured header values that look secret."""
    found = []
    if api_key:
        found.append(api_key)
    for name, value in headers:
        lower = name.lower()
        if any(word in lower for word in ("auth", "key", "token", "secret")):
            found.append(value.removeprefix("Bearer ").removeprefix("bearer "))
    return tuple(
        sorted({s.encode("utf-8", "surrogateescape") for s in found if len(s) >= _MIN_SECRET}, key=len, reverse=True)
    )
