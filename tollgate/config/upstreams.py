"""The ``upstreams`` section: where each provider is, its credential, the headers it gets, its timeouts and pool.

Client headers reach an upstream only through the upstream's allow-list,
``forward_headers``: exact names, or prefixes ending in ``*``. Whatever the
list says, some names never come from a client (:data:`NEVER_FORWARDED`,
:data:`NEVER_FORWARDED_PREFIXES`): hop-by-hop and framing headers, client
credentials, client-address claims, the gateway's own headers. The
organisation and project headers of a provider (:data:`CONFIG_ONLY`) come
from the upstream's ``headers`` alone.

An upstream's ``provider`` says which API it speaks. ``openai``: any
OpenAI-compatible server, ``base_url`` its API prefix. ``azure``: Azure OpenAI,
the same dialect at other URLs: ``base_url`` is the resource endpoint, the key
goes in ``api-key``, and each deployment's request paths are built here, once
(:func:`azure_paths`): ``/openai/deployments/{deployment}/...?api-version=...``
with an ``api_version``, Azure's v1 API ``/openai/v1/...`` without one.
``anthropic``: Anthropic's Messages API, served to OpenAI-dialect clients
through tollgate/upstream/translate/: ``base_url`` is the API root, requests go
to ``{base_url}/v1/messages``, the key goes in ``x-api-key`` with an
``anthropic-version`` header. Anthropic Messages clients reach every kind:
an Anthropic upstream as they came, the others translated to chat completions.
On any upstream that translates, ``drop_unsupported`` says whether a
parameter with no equivalent in its dialect is dropped (the answer's
``x-tollgate-dropped`` header names it) or refused (400 naming it).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

from pydantic import BeforeValidator

from tollgate.config.model import DEFAULT_FORWARD_HEADERS, Pool, Timeouts, Upstream
from tollgate.config.validation import Doc, Found, check
from tollgate.config.values import Bool, NonEmptyStr, Str, StrList, frozen_map

__all__ = [
    "AUTH_HEADERS",
    "AZURE_API_PATHS",
    "AZURE_DEPLOYMENT",
    "CONFIG_ONLY",
    "CONNECTION_RELAY_HEADER",
    "DEFAULT_ANTHROPIC_VERSION",
    "DEFAULT_FORWARD_HEADERS",
    "NEVER_FORWARDED",
    "NEVER_FORWARDED_PREFIXES",
    "PROVIDERS",
    "UpstreamDoc",
    "azure_paths",
    "build_upstream",
    "never_forwarded",
]

AUTH_HEADERS = ("authorization", "api-key", "x-api-key", "none")
PROVIDERS = ("openai", "azure", "anthropic")
# The anthropic-version header an Anthropic upstream sends when its config names none.
DEFAULT_ANTHROPIC_VERSION = "2023-06-01"
# Anthropic's API versions are dates: 2023-06-01.
_ANTHROPIC_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")

# The OpenAI API paths an Azure resource serves under its deployments and its v1 API (after /v1 on OpenAI).
# Moderations are not among them: a model served by Azure refuses that route (400 unsupported_endpoint).
AZURE_API_PATHS = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/images/generations",
    "/audio/speech",
    "/audio/transcriptions",
)
# The paths Azure serves only under its v1 API: an upstream with an api_version (deployment URLs) has none of them.
AZURE_V1_ONLY = frozenset({"/responses"})
# An Azure deployment name (it goes into the URL path as it is).
AZURE_DEPLOYMENT = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
# A dated api-version of Azure's deployment URLs: 2024-10-21, 2025-04-01-preview.
_API_VERSION = re.compile(r"(\d{4})-(\d{2})-(\d{2})(-preview)?")

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


def _header_value(value: object) -> object:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# A header value; a number is written as its text.
HeaderValue = Annotated[Str, BeforeValidator(_header_value)]


def _date_text(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime.date) else value


# An api-version; YAML reads an unquoted 2024-10-21 as a date, which is taken as its text.
ApiVersion = Annotated[Str, BeforeValidator(_date_text)]


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


class UpstreamDoc(Doc):
    """A model provider: where it is, its credential, the headers it gets, timeouts and connection pool."""

    provider: Literal["openai", "azure", "anthropic"] = "openai"
    """The API it speaks: openai (any OpenAI-compatible server), azure (Azure OpenAI: deployment URLs, the key
    in api-key) or anthropic (Anthropic's Messages API, translated to and from OpenAI's chat completions)."""
    base_url: NonEmptyStr
    """openai: the API prefix, such as https://api.openai.com/v1. azure: the resource endpoint, such as
    https://myres.openai.azure.com (the gateway adds /openai/...). anthropic: the API root, such as
    https://api.anthropic.com (the gateway adds /v1/messages)."""
    api_version: ApiVersion | None = None
    """azure only: the api-version of the deployment URLs (/openai/deployments/{deployment}/...?api-version=...),
    such as 2024-10-21 or 2025-04-01-preview. Without it: Azure's v1 API (/openai/v1/...), which takes the
    deployment name as the body's model."""
    anthropic_version: ApiVersion | None = None
    """anthropic only: the anthropic-version header sent on every call; default 2023-06-01."""
    drop_unsupported: Bool | None = None
    """anthropic only: a chat parameter with no Anthropic equivalent is dropped (true) or refused with a 400
    naming it (false, the default)."""
    api_key: Str | None = None
    """Injected on every call; client credentials never go upstream."""
    auth_header: Literal["authorization", "api-key", "x-api-key", "none"] = "authorization"
    """Where the credential goes: authorization (Bearer), api-key, x-api-key, or none. azure: always api-key.
    anthropic: always x-api-key."""
    headers: Mapping[str, HeaderValue] = {}
    """Extra headers sent upstream; OpenAI-Organization, OpenAI-Project and OpenAI-Beta come only from here."""
    forward_headers: StrList = DEFAULT_FORWARD_HEADERS
    """Client headers sent upstream: names, or prefixes ending in * (x-stainless-*). Hop-by-hop headers, client
    credentials, client-address claims, X-Tollgate-* and what the gateway sets itself never pass."""
    timeouts: Timeouts = Timeouts()
    pool: Pool = Pool()

    @check
    def base_url_is_absolute(self) -> Found:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            yield "base_url", "must be an absolute http:// or https:// URL"
        elif parts.query or parts.fragment:
            yield "base_url", "must not carry a query or fragment"

    @check
    def anthropic_fields_fit(self) -> Found:
        if self.provider != "anthropic":
            if self.anthropic_version is not None:
                yield (
                    "anthropic_version",
                    f"applies only to provider: anthropic (this upstream's provider is {self.provider})",
                )
            return
        if self.anthropic_version is not None and not _ANTHROPIC_VERSION.fullmatch(self.anthropic_version):
            yield "anthropic_version", f"{self.anthropic_version!r} is not an Anthropic API version such as 2023-06-01"
        if "auth_header" in self.model_fields_set and self.auth_header != "x-api-key":
            yield "auth_header", "an Anthropic upstream sends its key as x-api-key (leave auth_header out)"
        if "v1" in urlsplit(self.base_url).path.lower().split("/"):
            yield "base_url", "is the API root, such as https://api.anthropic.com: the gateway adds /v1/messages"
        for h in self.headers:
            if h.lower() == "anthropic-version":
                yield f"headers.{h}", "is set from anthropic_version"

    @check
    def provider_fields_fit(self) -> Found:
        if self.provider != "azure":
            if self.api_version is not None:
                yield "api_version", f"applies only to provider: azure (this upstream's provider is {self.provider})"
            return
        if self.api_version is not None and not _is_api_version(self.api_version):
            yield (
                "api_version",
                f"{self.api_version!r} is not an Azure api-version such as 2024-10-21 or 2025-04-01-preview",
            )
        if "auth_header" in self.model_fields_set and self.auth_header != "api-key":
            yield "auth_header", "an Azure upstream sends its key as api-key (leave auth_header out)"
        if "openai" in urlsplit(self.base_url).path.lower().split("/"):
            yield (
                "base_url",
                "is the Azure resource endpoint, such as https://myres.openai.azure.com: the gateway adds /openai/...",
            )

    @check
    def headers_cannot_break_the_request(self) -> Found:
        for h, value in self.headers.items():
            if h.lower() in ("host", "content-length", "transfer-encoding", "connection"):
                yield f"headers.{h}", "is set by the gateway and cannot be configured"
            elif not _HEADER_NAME.fullmatch(h):
                yield f"headers.{h}", "is not a valid header name"
            elif _BREAKS_HEADER.search(value):
                yield f"headers.{h}", "must not contain CR, LF or NUL (it would break the request sent upstream)"
        if self.api_key and _BREAKS_HEADER.search(self.api_key):
            # A secret read from a file often ends with a newline: refuse it rather than send a broken request.
            yield "api_key", "must not contain CR, LF or NUL (check for a trailing newline in the secret)"

    @check
    def forward_headers_come_from_clients(self) -> Found:
        _, problems = _forward_headers(self.forward_headers, {h.lower() for h in self.headers})
        yield from problems


def build_upstream(name: str, doc: UpstreamDoc) -> Upstream:
    return Upstream(
        name=name,
        base_url=doc.base_url.rstrip("/"),
        api_key=doc.api_key or None,
        auth_header=_auth_header(doc),
        provider=doc.provider,
        api_version=doc.api_version,
        anthropic_version=(doc.anthropic_version or DEFAULT_ANTHROPIC_VERSION) if doc.provider == "anthropic" else None,
        drop_unsupported=bool(doc.drop_unsupported),
        headers=frozen_map({k: str(v) for k, v in doc.headers.items()}),
        forward_headers=_forward_headers(doc.forward_headers, {h.lower() for h in doc.headers})[0],
        timeouts=doc.timeouts,
        pool=doc.pool,
    )


def _auth_header(doc: UpstreamDoc) -> str:
    if doc.provider == "azure":
        return "api-key"
    if doc.provider == "anthropic":
        return "x-api-key"
    return doc.auth_header


def azure_paths(api_version: str | None, deployment: str) -> Mapping[str, str]:
    """The path of each OpenAI API path (``/chat/completions``...) on an Azure resource, for one deployment.

    With an ``api_version``: the deployment's URL with its query. Without: the v1 API's path (the deployment
    is then the body's model).
    """
    if api_version is None:
        return frozen_map({path: f"/openai/v1{path}" for path in AZURE_API_PATHS})
    query = f"?api-version={quote(api_version, safe='')}"
    at = f"/openai/deployments/{quote(deployment, safe='')}"
    return frozen_map({path: f"{at}{path}{query}" for path in AZURE_API_PATHS if path not in AZURE_V1_ONLY})


def _is_api_version(text: str) -> bool:
    found = _API_VERSION.fullmatch(text)
    return found is not None and 1 <= int(found[2]) <= 12 and 1 <= int(found[3]) <= 31


def _forward_headers(entries: tuple[str, ...], configured: set[str]) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """The allow-list of client headers, lower-case; and a problem at the index of every refused entry."""
    out: list[str] = []
    problems: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        at = f"forward_headers[{i}]"
        lower = entry.lower()
        if not _FORWARD_ENTRY.fullmatch(entry):
            problems.append((at, f"{entry!r} is not a header name, or a name prefix ending in * (such as x-mock-*)"))
        elif lower in CONFIG_ONLY:
            problems.append((at, f"{entry} comes only from this upstream's headers, never from a client"))
        elif lower.endswith("*") and any(lower[:-1].startswith(p) for p in NEVER_FORWARDED_PREFIXES):
            problems.append((at, f"{entry} names only headers that never come from a client"))
        elif never_forwarded(lower):
            problems.append((at, f"{entry} never comes from a client: it {_why_never(lower)}"))
        elif lower in configured:
            problems.append((at, f"{entry} is set by this upstream's headers: a client's value would never be sent"))
        elif lower not in out:
            out.append(lower)
    return tuple(out), problems
