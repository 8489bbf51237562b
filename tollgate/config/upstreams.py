"""The ``upstreams`` section: where each provider is, its credential, the headers it gets, its timeouts and pool.

Client headers reach an upstream only through the upstream's allow-list,
``forward_headers``: exact names, or prefixes ending in ``*``. Whatever the
list says, some names never come from a client (:data:`NEVER_FORWARDED`,
:data:`NEVER_FORWARDED_PREFIXES`): hop-by-hop and framing headers, client
credentials, client-address claims, the gateway's own headers. The
organisation and project headers of a provider (:data:`CONFIG_ONLY`) come
from the upstream's ``headers`` alone.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tollgate.config.model import DEFAULT_FORWARD_HEADERS, Pool, Timeouts, Upstream, frozen_map
from tollgate.config.reader import Node

__all__ = [
    "AUTH_HEADERS",
    "CONFIG_ONLY",
    "CONNECTION_RELAY_HEADER",
    "DEFAULT_FORWARD_HEADERS",
    "NEVER_FORWARDED",
    "NEVER_FORWARDED_PREFIXES",
    "parse_upstream",
]

AUTH_HEADERS = ("authorization", "api-key", "x-api-key", "none")

# nginx hands the gateway the names in the client's Connection header under this name (its own Connection
# header is nginx's); the gateway drops the client headers named in either (see config/nginx.conf).
CONNECTION_RELAY_HEADER = "x-tollgate-connection"

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)
CLIENT_CREDENTIALS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie"})
# Who the client is and where it came from is the gateway's to say (X-Forwarded-For: the address it settled on).
CLIENT_ADDRESS = frozenset({"forwarded", "x-real-ip", "x-client-ip", "true-client-ip", "cf-connecting-ip", "via"})
# Framing, the body's type and coding, the request id: the gateway sets them itself.
GATEWAY_SET = frozenset(
    {"host", "content-length", "content-type", "content-encoding", "accept-encoding", "expect", "x-request-id"}
)
NEVER_FORWARDED = HOP_BY_HOP | CLIENT_CREDENTIALS | CLIENT_ADDRESS | GATEWAY_SET
NEVER_FORWARDED_PREFIXES = ("proxy-", "x-forwarded-", "x-tollgate-")
# The provider account a call is billed to and the features enabled on it: the operator's, never a tenant's.
CONFIG_ONLY = frozenset({"openai-organization", "openai-project", "openai-beta"})

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_FORWARD_ENTRY = re.compile(r"[!#$%&'+.^_`|~0-9A-Za-z-]+\*?")  # a token, or a token prefix ending in *
_BREAKS_HEADER = re.compile(r"[\r\n\x00]")
_DEFAULT_TIMEOUTS = Timeouts()
_DEFAULT_POOL = Pool()


def never_forwarded(name: str) -> bool:
    """Whether a lower-case header name is refused from a client whatever an allow-list says."""
    return name in NEVER_FORWARDED or name in CONFIG_ONLY or name.startswith(NEVER_FORWARDED_PREFIXES)


def _why_never(name: str) -> str:
    if name in HOP_BY_HOP:
        return "is hop-by-hop"
    if name in CLIENT_CREDENTIALS:
        return "is a client credential"
    if name in CLIENT_ADDRESS or name.startswith("x-forwarded-"):
        return "claims the client's address or route (the gateway sends X-Forwarded-For itself)"
    if name.startswith("proxy-"):
        return "is meant for a proxy"
    if name.startswith("x-tollgate-"):
        return "is the gateway's own"
    return "is set by the gateway"


def parse_upstream(name: str, node: Node) -> Upstream:
    base_url = node.str("base_url")
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            node.error("base_url", "must be an absolute http:// or https:// URL")
        elif parts.query or parts.fragment:
            node.error("base_url", "must not carry a query or fragment")
        base_url = base_url.rstrip("/")
    auth_header = node.str("auth_header", "authorization", choices=AUTH_HEADERS)
    api_key = node.str("api_key", None, nonempty=False) or None
    headers = node.str_map("headers")
    for h, value in headers.items():
        if h.lower() in ("host", "content-length", "transfer-encoding", "connection"):
            node.error(f"headers.{h}", "is set by the gateway and cannot be configured")
        elif not _HEADER_NAME.fullmatch(h):
            node.error(f"headers.{h}", "is not a valid header name")
        elif _BREAKS_HEADER.search(value):
            node.error(f"headers.{h}", "must not contain CR, LF or NUL (it would break the request sent upstream)")
    if api_key is not None and _BREAKS_HEADER.search(api_key):
        # A secret read from a file often ends with a newline: refuse it rather than send a broken request.
        node.error("api_key", "must not contain CR, LF or NUL (check for a trailing newline in the secret)")
    forward_headers = _forward_headers(node, {h.lower() for h in headers})
    t = node.child("timeouts")
    timeouts = Timeouts(
        connect=t.duration("connect", _DEFAULT_TIMEOUTS.connect),
        first_byte=t.duration("first_byte", _DEFAULT_TIMEOUTS.first_byte),
        idle=t.duration("idle", _DEFAULT_TIMEOUTS.idle),
        total=t.duration("total", _DEFAULT_TIMEOUTS.total),
    )
    if timeouts.total < timeouts.first_byte:
        t.error("total", "must be at least first_byte")
    t.finish()
    p = node.child("pool")
    pool = Pool(
        max_connections=p.int("max_connections", _DEFAULT_POOL.max_connections, min=1, max=100_000),
        keepalive=p.duration("keepalive", _DEFAULT_POOL.keepalive),
    )
    p.finish()
    node.finish()
    return Upstream(
        name=name,
        base_url=base_url or "",
        api_key=api_key,
        auth_header=auth_header,
        headers=frozen_map(headers),
        forward_headers=forward_headers,
        timeouts=timeouts,
        pool=pool,
    )


def _forward_headers(node: Node, configured: set[str]) -> tuple[str, ...]:
    """The allow-list of client headers, lower-case; every refused entry is a problem at its index."""
    entries = node.str_list("forward_headers", DEFAULT_FORWARD_HEADERS)
    out: list[str] = []
    for i, entry in enumerate(entries):
        at = f"forward_headers[{i}]"
        lower = entry.lower()
        if not _FORWARD_ENTRY.fullmatch(entry):
            node.error(at, f"{entry!r} is not a header name, or a name prefix ending in * (such as x-mock-*)")
        elif lower in CONFIG_ONLY:
            node.error(at, f"{entry} comes only from this upstream's headers, never from a client")
        elif lower.endswith("*") and any(lower[:-1].startswith(p) for p in NEVER_FORWARDED_PREFIXES):
            node.error(at, f"{entry} names only headers that never come from a client")
        elif never_forwarded(lower):
            node.error(at, f"{entry} never comes from a client: it {_why_never(lower)}")
        elif lower in configured:
            node.error(at, f"{entry} is set by this upstream's headers: a client's value would never be sent")
        elif lower not in out:
            out.append(lower)
    return tuple(out)
