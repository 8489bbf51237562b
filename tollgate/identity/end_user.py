"""End users: who, inside the tenant a credential authenticated, a request is for.

The value comes from the verified JWT's user claim, OpenAI's body field
``user``, or a configured header (``identity.end_user``), the first of these
sources that has one. It subdivides the tenant and never changes it: the
tenant, key and plan come from the credential alone. The value is a client's
word, so it is bounded before anything keeps it: a string of at most
``max_length`` characters, without control characters and valid UTF-8 (a
header's undecodable bytes arrive as lone surrogates), else the request is
refused with a 400 naming the field; it is never rewritten. A token's claim
is held to the same bounds (an issuer's odd ``sub`` must not break a log
line or a usage write either). The value keys limiter counters (which carry
TTLs), usage aggregates (capped per tenant and month) and access-log lines;
never a metric label.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tollgate.config.identity import EndUserConfig
from tollgate.errors import BadRequest

if TYPE_CHECKING:
    from tollgate.identity.directory import Principal

__all__ = ["EndUsers", "checked_end_user"]

# C0 and C1 controls, DEL, the Unicode line and paragraph separators (nothing that can split a log line), and
# surrogates: a lone one is what an undecodable header byte becomes, and no UTF-8 encoder (orjson, Redis) takes it.
# The escapes are the pattern's own (a raw string): mypyc cannot write a surrogate into a C string constant.
_REFUSED = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", list: "an array", dict: "an object"}


def checked_end_user(value: Any, field: str, max_length: int, param: str | None) -> str | None:
    """``value`` as an end user (``None`` for an empty string), or :class:`BadRequest` naming ``field`` (and ``param``)."""
    if not isinstance(value, str):
        kind = _KINDS.get(type(value), type(value).__name__)
        raise BadRequest(
            f"Invalid type for '{field}': expected a string, but got {kind} instead.", param=param, code="invalid_type"
        )
    if not value:
        return None
    if len(value) > max_length:
        raise BadRequest(
            f"Invalid '{field}': string too long. Expected a string with maximum length {max_length}, "
            f"but got a string with length {len(value)} instead.",
            param=param,
            code="string_above_max_length",
        )
    bad = _REFUSED.search(value)
    if bad is not None:
        what = "is not valid UTF-8" if 0xD800 <= ord(bad.group()) <= 0xDFFF else "contains a control character"
        raise BadRequest(
            f"Invalid '{field}': the end user {what} (at index {bad.start()}).", param=param, code="invalid_value"
        )
    return value


class EndUsers:
    """The end-user sources of one config version, in precedence order."""

    __slots__ = ("sources", "header", "max_length", "claim")

    def __init__(self, config: EndUserConfig, user_claim: str = "sub") -> None:
        self.sources = config.sources
        self.header = config.header
        self.max_length = config.max_length
        self.claim = f"{user_claim} claim of the token"

    def of(self, principal: Principal, body: Mapping[str, Any] | None, headers: Mapping[str, str]) -> str | None:
        """The end user of a request (its JSON ``body``, its ``headers``), or ``None``; raises :class:`BadRequest`
        for a value out of bounds."""
        value: Any
        param: str | None
        for source in self.sources:
            if source == "jwt":
                value = principal.user  # signed by the token's issuer: authoritative, when present
                field, param = self.claim, None
            elif source == "body":
                value = body.get("user") if body is not None else None
                field = param = "user"
            else:
                value = headers.get(self.header)
                field = param = self.header
            if value is not None:
                user = checked_end_user(value, field, self.max_length, param)
                if user is not None:
                    return user
        return None
