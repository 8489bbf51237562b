"""The ids of stored Responses API responses as the gateway hands them out: which upstream holds one, and for whom.

A response the Responses API stores lives on the upstream that created it, so
``GET``/``DELETE /v1/responses/{id}`` and a later request's
``previous_response_id`` must reach that upstream, whichever gateway process or
machine they arrive at. The gateway keeps no table for it: the id it gives the
client says it, ``resp_tg`` followed by the URL-safe base64 (unpadded) of the
JSON ``[upstream, tenant, upstream's id]``. The upstream's id is the secret
(random, from the provider); the tenant in it keeps another tenant from using a
leaked id through the gateway's credential.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["PREFIX", "StoredResponse", "gateway_id", "relabel", "stored_response"]

PREFIX = "resp_tg"
# An id longer than this is not one of ours (a provider's id is well under 100 characters).
_MAX_ID = 1024


@dataclass(frozen=True, slots=True)
class StoredResponse:
    upstream: str
    tenant: str
    id: str


def gateway_id(upstream: str, tenant: str, upstream_id: str) -> str:
    raw = orjson.dumps([upstream, tenant, upstream_id])
    return PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def stored_response(value: Any) -> StoredResponse | None:
    """The response a gateway id names; None for anything else (a provider's own id, garbage)."""
    if not isinstance(value, str) or not value.startswith(PREFIX) or len(value) > _MAX_ID:
        return None
    encoded = value[len(PREFIX) :]
    try:
        doc = orjson.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not (isinstance(doc, list) and len(doc) == 3 and all(isinstance(part, str) and part for part in doc)):
        return None
    return StoredResponse(doc[0], doc[1], doc[2])


def relabel(response: Any, upstream: str, tenant: str) -> bool:
    """Give a response object the gateway's ids in place (its own, and the ``previous_response_id`` it echoes);
    False when it has no id to give one for."""
    if not isinstance(response, dict):
        return False
    ident = response.get("id")
    if not isinstance(ident, str) or not ident or ident.startswith(PREFIX):
        return False
    response["id"] = gateway_id(upstream, tenant, ident)
    previous = response.get("previous_response_id")
    if isinstance(previous, str) and previous and not previous.startswith(PREFIX):
        response["previous_response_id"] = gateway_id(upstream, tenant, previous)
    return True
