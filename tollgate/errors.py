"""The gateway's exception tree: every class carries its HTTP status (``http_status``) and OpenAI's error ``type``.

    GatewayError                         anything the gateway raises on purpose                 500
    ├── ConfigError                      a configuration was refused (carries every problem)    500
    ├── RequestError                     the client sent something we cannot accept             400
    │   ├── BadRequest                   malformed JSON, missing field, failed field_check      400
    │   ├── NotFound                     unknown path or model                                  404
    │   ├── Conflict                     would create what already exists                       409
    │   │   └── RegistryConflict         (tollgate/registry/stores.py) a record already there   409
    │   ├── MethodNotAllowed                                                                    405
    │   ├── PayloadTooLarge                                                                     413
    │   ├── HeadersTooLarge                                                                     431
    │   ├── Unauthenticated              no or bad credential                                   401
    │   ├── Forbidden                    suspended tenant, model not allowed, forged claim      403
    │   │   └── TenantRefused            (tollgate/identity/chain.py) a known tenant refused,   403
    │   │                                with the principal refused (for its records)
    │   └── RateLimited                  a limit refused the request                            429
    │       └── QuotaExhausted           a money budget does not cover the request              429
    ├── UpstreamError                    the model provider failed us                           502
    │   ├── UpstreamBadResponse          connection reset, bad status, malformed body           502
    │   │   ├── UpstreamStatus           an error status the attempt loop judges itself         502
    │   │   └── UpstreamAuthError        the provider refused the gateway's own credential      502
    │   ├── UpstreamUnavailable          no healthy deployment, every fallback exhausted        503
    │   └── UpstreamTimeout              connect / first byte / idle / total timeout            504
    ├── Overloaded                       the gateway sheds load                                 503
    ├── ScalingActionFailed              a scaling actuator (webhook, Kubernetes API) did not   502
    │                                    take a decision after its retries
    └── StoreError                       a store failed or exceeded its budget (wraps the       503
        │                                driver's error: Redis, files, the embedded engine)
        ├── StoreTimeout                 a call sent to the store got no answer within budget   503
        ├── StoreUnavailable             the call never reached the store (circuit open,        503
        │   │                            cannot connect)
        │   ├── StoreOverloaded          (also an Overloaded) the gateway's own queue for the   503
        │   │                            store is full past store.queue_timeout: never a
        │   │                            fail-mode answer
        │   └── DatabaseUnavailable      (also a DatabaseError) the database of record cannot   503
        │                                be reached or the connection broke: buffer and retry
        └── DatabaseError                the database of record (SQLite, PostgreSQL) failed a   503
                                         statement (wraps the driver's error)

A StoreError other than StoreOverloaded makes the limiter apply each limit's
fail mode; a StoreUnavailable one is known not to have been applied, so a
settlement that met it can be replayed later. Storage code (the limiter's
engines, the registry, usage and audit stores) catches its driver's errors
and raises a StoreError in their place, so nothing above it sees a driver.

Domain code raises these and never picks a status; the edge
(tollgate/edge/answers.py) turns them into OpenAI-shaped JSON with the
``http_status`` of their class. (``http_status``, not ``status``: an upstream
error's ``status`` is what the upstream answered.)

The ``type`` of each is OpenAI's: ``invalid_request_error`` for what the
client sent (a bad key too, code ``invalid_api_key``), ``requests`` or
``tokens`` for a rate limit (code ``rate_limit_exceeded``),
``insufficient_quota`` for a spent budget, ``server_error`` for the rest.
An error that tells the client when to come back carries ``Retry-After``
(whole seconds) and ``retry-after-ms``, which OpenAI's SDKs read first; one
that retrying cannot cure carries ``x-should-retry: false``, which they obey.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "ConfigError",
    "Conflict",
    "DatabaseError",
    "DatabaseUnavailable",
    "Forbidden",
    "GatewayError",
    "HeadersTooLarge",
    "MethodNotAllowed",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "QuotaExhausted",
    "RateLimited",
    "RequestError",
    "ScalingActionFailed",
    "StoreError",
    "StoreOverloaded",
    "StoreTimeout",
    "StoreUnavailable",
    "Unauthenticated",
    "UpstreamAuthError",
    "UpstreamBadResponse",
    "UpstreamError",
    "UpstreamStatus",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose.

    ``code`` is a short machine-readable reason (OpenAI's ``error.code``),
    ``param`` names the offending request field when there is one;
    ``http_status`` is the status the edge answers it with.
    """

    http_status = 500
    error_type = "server_error"
    default_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.param = param
        self.headers = dict(headers) if headers else {}
        retry_after = self.headers.get("Retry-After")
        if retry_after is not None and "retry-after-ms" not in self.headers and retry_after.isdigit():
            self.headers["retry-after-ms"] = f"{int(retry_after) * 1000}"  # its form that OpenAI's SDKs read first


class ConfigError(GatewayError):
    """A configuration was refused; ``problems`` lists ``path: reason`` lines."""

    default_code = "invalid_config"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class RequestError(GatewayError):
    http_status = 400
    error_type = "invalid_request_error"


class BadRequest(RequestError):
    default_code = "invalid_request"


class NotFound(RequestError):
    http_status = 404
    default_code = "not_found"


class Conflict(RequestError):
    """The request would create what already exists (a tenant, a key, a namespace, a rule)."""

    http_status = 409
    default_code = "conflict"


class MethodNotAllowed(RequestError):
    http_status = 405
    default_code = "method_not_allowed"

    def __init__(self, message: str, *, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message, headers={"Allow": ", ".join(allowed)} if allowed else None)


class PayloadTooLarge(RequestError):
    http_status = 413
    default_code = "request_too_large"


class HeadersTooLarge(RequestError):
    http_status = 431
    default_code = "headers_too_large"


class Unauthenticated(RequestError):
    """OpenAI answers a missing or wrong key with ``invalid_request_error`` and code ``invalid_api_key``."""

    http_status = 401
    default_code = "invalid_api_key"


class Forbidden(RequestError):
    http_status = 403
    default_code = "forbidden"


class RateLimited(RequestError):
    """A limit refused the request; ``error_type`` names what ran out, as OpenAI does: ``requests`` or ``tokens``."""

    http_status = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message, code=code, param=param, headers=headers)
        if error_type is not None:
            self.error_type = error_type


class QuotaExhausted(RateLimited):
    """A money budget is spent: OpenAI's ``insufficient_quota``; ``x-should-retry: false`` keeps SDKs from retrying it."""

    error_type = "insufficient_quota"
    default_code = "insufficient_quota"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={**(headers or {}), "x-should-retry": "false"})


class UpstreamError(GatewayError):
    http_status = 502


class UpstreamBadResponse(UpstreamError):
    default_code = "bad_gateway"


class UpstreamStatus(UpstreamBadResponse):
    """The upstream answered an error status the attempt loop judges itself (retry, fall back, or relay it as it is).

    ``status`` is the upstream's, as the attempt loop judges it (Anthropic's 529 is the 503 it means);
    ``body`` its (redacted) answer in the client's dialect, to be relayed with ``relay_status`` (the
    status of that dialect: Anthropic's clients get their 529); ``retry_after`` its ``Retry-After`` in seconds.
    """

    default_code = "upstream_status"

    def __init__(
        self,
        upstream: str,
        status: int,
        body: bytes,
        content_type: str,
        retry_after: float | None,
        relay_status: int | None = None,
    ) -> None:
        super().__init__(f"upstream {upstream!r} answered {status}")
        self.status = status
        self.relay_status = status if relay_status is None else relay_status
        self.body = body
        self.content_type = content_type
        self.retry_after = retry_after


class UpstreamAuthError(UpstreamBadResponse):
    """An upstream answered 401 or 403 to the gateway's own credential: the operator's to fix, never the client's.

    ``message`` is the gateway's; the provider's text (``upstream_text``) goes to the log only. A retry
    within seconds cannot cure it: ``x-should-retry: false``.
    """

    default_code = "upstream_auth_error"

    def __init__(self, upstream: str, status: int, upstream_text: str) -> None:
        super().__init__(
            f"the model provider behind upstream {upstream!r} refused the gateway's credentials ({status}); "
            "the gateway's operator has to fix this, a retry will not help until then",
            headers={"x-should-retry": "false"},
        )
        self.upstream = upstream
        self.status = status
        self.upstream_text = upstream_text


class UpstreamUnavailable(UpstreamError):
    http_status = 503
    default_code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    http_status = 504
    default_code = "upstream_timeout"


class Overloaded(GatewayError):
    http_status = 503
    default_code = "overloaded"


class ScalingActionFailed(GatewayError):
    """A scaling actuator (a webhook, the Kubernetes API) did not take a decision after its retries."""

    http_status = 502
    default_code = "scaling_action_failed"


class StoreError(GatewayError):
    """A store (the limiter's Redis or embedded engine, the registry, usage or audit store) failed; wraps the driver's error."""

    http_status = 503
    default_code = "store_error"


class StoreTimeout(StoreError):
    default_code = "store_timeout"


class StoreUnavailable(StoreError):
    """The call never reached the store: its circuit is open, or no connection could be made."""

    default_code = "store_unavailable"


class StoreOverloaded(Overloaded, StoreUnavailable):
    """A store call waited in the gateway's own queue (for a connection) past ``store.queue_timeout``.

    The store was not asked, so no fail mode answers for it: the request is
    refused with 503 ``overloaded``.
    """

    error_type = "overloaded_error"
    default_code = "overloaded"


class DatabaseError(StoreError):
    """The database of record (SQLite or PostgreSQL) failed a statement: the driver's error, wrapped.

    A statement the database refuses (bad SQL, a constraint) is a bug or a
    conflict, not an outage: retrying it will not help.
    """

    default_code = "database_error"


class DatabaseUnavailable(DatabaseError, StoreUnavailable):
    """The database cannot be reached, or the connection broke (or gave no answer in time): buffer and retry later."""

    default_code = "database_unavailable"
