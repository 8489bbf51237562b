"""Forward stage: one pooled session per upstream, the header allow-list, timeouts, SSE relayed event by event.

One call of :func:`forward` is one attempt on one deployment. It raises an
``UpstreamError`` only while nothing has reached the client (so the attempt
loop in ``tollgate/pipeline/attempts.py`` may still retry or fall back); once the first
event is out, trouble becomes an SSE error event and a clean end of the stream.

What a tenant sends reaches the upstream only through the upstream's
``forward_headers`` allow-list (tollgate/config/upstreams.py), minus the names
its ``Connection`` header lists; the gateway adds its own headers (credential,
organisation, ``X-Forwarded-For``, ``x-request-id``). What the upstream answers
with 401 or 403 is the gateway's problem, never relayed (``UpstreamAuthError``);
any other error body is relayed without credentials (tollgate/upstream/redaction.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

import orjson

from tollgate.config.model import Deployment, Upstream
from tollgate.config.upstreams import CONNECTION_RELAY_HEADER, never_forwarded
from tollgate.edge import server as httpserver
from tollgate.edge.answers import REQUEST_ID_HEADER, error_body
from tollgate.errors import UpstreamAuthError, UpstreamBadResponse, UpstreamStatus, UpstreamTimeout
from tollgate.pipeline.context import RequestContext
from tollgate.upstream.client import ConnectError, HttpError, Response, UpstreamHttp
from tollgate.upstream.deadlines import Deadline, Deadlines
from tollgate.upstream.redaction import redact, secrets_of
from tollgate.upstream.sse import SseParser
from tollgate.upstream.usage import usage_from_body

__all__ = [
    "MODEL_HEADER",
    "UpstreamClient",
    "UpstreamPool",
    "forward",
    "sse_error_event",
    "upstream_headers",
]

log = logging.getLogger("tollgate.forward")

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
# Which model served the response (differs from the requested one when a fallback did).
MODEL_HEADER = "x-tollgate-model"
# An upstream's answer to the gateway's credential that the tenant never sees as such (see UpstreamAuthError).
_AUTH_STATUSES = frozenset({401, 403})
# Connection values that name no other header (the common case: nothing to drop).
_PLAIN_CONNECTION = frozenset({"keep-alive", "close"})


class UpstreamClient:
    """An upstream's pooled keep-alive connections, the headers the gateway adds to every call, and which client headers pass."""

    __slots__ = (
        "config",
        "http",
        "fixed_headers",
        "fixed_names",
        "forward_names",
        "forward_prefixes",
        "secrets",
        "deadlines",
    )

    def __init__(self, config: Upstream, deadlines: Deadlines | None = None) -> None:
        self.config = config
        self.http: UpstreamHttp | None = None
        self.deadlines = deadlines or Deadlines()
        fixed: list[tuple[str, str]] = [("Content-Type", "application/json")]
        if not any(name.lower() == "accept-encoding" for name in config.headers):
            # identity: the answer is parsed (usage) and relayed; a compressed one would only be inflated here.
            fixed.append(("Accept-Encoding", "identity"))
        if config.api_key and config.auth_header != "none":
            if config.auth_header == "authorization":
                fixed.append(("Authorization", f"Bearer {config.api_key}"))
            else:
                fixed.append((config.auth_header, config.api_key))
        fixed.extend(config.headers.items())
        self.fixed_headers = tuple(fixed)
        self.fixed_names = frozenset(name.lower() for name, _ in fixed)
        # The allow-list, checked against never_forwarded() once here for names, per header for prefixes.
        allowed = [name for name in config.forward_headers if not name.endswith("*")]
        self.forward_names = frozenset(n for n in allowed if not never_forwarded(n) and n not in self.fixed_names)
        self.forward_prefixes = tuple(name[:-1] for name in config.forward_headers if name.endswith("*"))
        self.secrets = secrets_of(config.api_key, config.headers.items())

    async def start(self) -> None:
        pool = self.config.pool
        self.http = UpstreamHttp(
            self.config.base_url,
            max_connections=pool.max_connections,
            keepalive=pool.keepalive,
            connect_timeout=self.config.timeouts.connect,
        )

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()


class UpstreamPool:
    """The live upstream clients; a reload keeps the sessions whose upstream config did not change."""

    def __init__(self) -> None:
        self.clients: dict[str, UpstreamClient] = {}
        self._retired: list[UpstreamClient] = []
        # One sweep for every upstream call's timeouts (see tollgate/upstream/deadlines.py).
        self.deadlines = Deadlines()

    async def apply(self, upstreams: Mapping[str, Upstream]) -> None:
        fresh: dict[str, UpstreamClient] = {}
        for name, cfg in upstreams.items():
            old = self.clients.get(name)
            if old is not None and old.config == cfg:
                fresh[name] = old
                continue
            client = UpstreamClient(cfg, self.deadlines)
            await client.start()
            fresh[name] = client
        # Sessions that left the config may still carry in-flight requests:
        # keep them until shutdown rather than cutting those requests.
        self._retired.extend(c for name, c in self.clients.items() if fresh.get(name) is not c)
        self.clients = fresh

    async def close(self) -> None:
        for client in [*self.clients.values(), *self._retired]:
            await client.close()
        self.clients = {}
        self._retired = []
        self.deadlines.close()


def upstream_headers(ctx: RequestContext, client: UpstreamClient) -> list[tuple[str, str]]:
    """The client headers the upstream's allow-list lets through (minus those named in ``Connection``), plus ours."""
    headers = ctx.request.headers
    names = client.forward_names
    prefixes = client.forward_prefixes
    out: list[tuple[str, str]] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in names or (
            prefixes and lower.startswith(prefixes) and not never_forwarded(lower) and lower not in client.fixed_names
        ):
            out.append((name, value))
    if out:
        connection = headers.getall("Connection", None)
        relayed = headers.getall(CONNECTION_RELAY_HEADER, None) if CONNECTION_RELAY_HEADER in headers else None
        if relayed is not None or (
            connection is not None and (len(connection) > 1 or connection[0].lower() not in _PLAIN_CONNECTION)
        ):
            named = _connection_named(connection or (), relayed or ())
            out = [(name, value) for name, value in out if name.lower() not in named]
    out.extend(client.fixed_headers)
    # The address the gateway settled on (identity/chain.py: trusted proxies only); a client's own claim stays here.
    out.append(("X-Forwarded-For", ctx.client_ip))
    out.append((REQUEST_ID_HEADER, ctx.request_id))
    return out


def _connection_named(connection: Sequence[str], relayed: Sequence[str]) -> frozenset[str]:
    """Header names a client listed in ``Connection``: hop-by-hop, for this hop only. nginx relays its client's."""
    return frozenset(token.strip().lower() for value in (*connection, *relayed) for token in value.split(","))


def sse_error_event(message: str, code: str) -> bytes:
    return b"data: " + error_body(message, "server_error", code) + b"\n\n"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: treated as absent


async def forward(
    ctx: RequestContext, deployment: Deployment, client: UpstreamClient, divert: frozenset[int]
) -> httpserver.StreamResponse | httpserver.Response:
    """Send the request to one deployment and relay its answer.

    An error status in ``divert`` raises :class:`UpstreamStatus` (body read, nothing
    sent) instead of being relayed, so the caller can retry or fall back.
    """
    assert ctx.endpoint is not None and ctx.body is not None and client.http is not None
    cfg = client.config
    if deployment.model == ctx.model:
        body = ctx.body_bytes
    else:
        body = orjson.dumps({**ctx.body, "model": deployment.model})
    ctx.upstream_name = cfg.name
    loop = asyncio.get_running_loop()
    deadline = ctx.started + cfg.timeouts.total
    phase = "first byte"
    upstream: Response | None = None
    try:
        async with client.deadlines.at(min(deadline, loop.time() + cfg.timeouts.first_byte)) as timer:
            upstream = await client.http.request(
                "POST", ctx.endpoint.upstream_suffix, upstream_headers(ctx, client), body
            )
            ctx.first_byte_at = loop.time()
            phase = "idle"
            timer.reschedule(min(deadline, loop.time() + cfg.timeouts.idle))
            status = upstream.status
            content_type = upstream.headers.get("content-type", "")
            if ctx.stream and status == 200 and content_type.startswith("text/event-stream"):
                phase = "first event"
                return await _relay_stream(ctx, upstream, timer, deadline, cfg.timeouts.idle)
            data = await upstream.read()
    except TimeoutError:
        raise UpstreamTimeout(
            f"upstream {cfg.name!r} timed out waiting for the {phase}", code="upstream_timeout"
        ) from None
    except ConnectError as exc:
        raise UpstreamBadResponse(
            f"cannot connect to upstream {cfg.name!r}: {exc}", code="upstream_connect_error"
        ) from None
    except HttpError as exc:
        raise UpstreamBadResponse(f"upstream {cfg.name!r} failed: {exc}", code="upstream_error") from None
    finally:
        if upstream is not None:
            upstream.release()
    if status >= 400:
        if status in _AUTH_STATUSES:
            # The provider's words go to the operator's log (its masked key says which one failed), not to the tenant.
            raise UpstreamAuthError(
                cfg.name, status, redact(data[:2000], client.secrets, shapes=False).decode("utf-8", "replace")
            )
        data = redact(data, client.secrets)
        if status in divert:
            raise UpstreamStatus(
                cfg.name, status, data, content_type, _retry_after(upstream.headers.get("retry-after"))
            )
    ctx.status = status
    ctx.finished_at = loop.time()
    ctx.bytes_out = len(data)
    if status == 200:
        ctx.usage = usage_from_body(data)
    headers = {
        "Content-Type": content_type or "application/json",
        REQUEST_ID_HEADER: ctx.request_id,
        MODEL_HEADER: ctx.model_served or "",
    }
    if ctx.admission is not None:
        headers.update(ctx.admission.headers)
    return httpserver.Response(status, data, headers)


async def _relay_stream(
    ctx: RequestContext,
    upstream: Response,
    timer: Deadline,
    deadline: float,
    idle: float,
) -> httpserver.StreamResponse | httpserver.Response:
    """Relay SSE event by event; before the first event is out, failures raise so another attempt can serve."""
    loop = asyncio.get_running_loop()
    parser = SseParser(ctx.stream_monitor)
    # Nothing reaches the client until the first complete event parsed: until then a failure can still be retried.
    out = b""
    while not parser.events and not parser.done and parser.stop is None:
        if parser.holding:  # the first content event waits for its budget to cover it
            await parser.monitor.cover()  # type: ignore[union-attr]
            out += parser.resume()
            continue
        chunk = await upstream.readany()
        if not chunk:
            out += parser.flush()
            if parser.events or parser.done or parser.stop is not None or parser.holding:
                continue
            raise UpstreamBadResponse("upstream ended the stream before its first event", code="upstream_empty_stream")
        out += parser.feed(chunk)
    if parser.stop is not None and parser.stop[1] == "upstream_malformed_event" and not out:
        raise UpstreamBadResponse("upstream sent a malformed first stream event", code="upstream_malformed_event")
    headers = {**_SSE_HEADERS, REQUEST_ID_HEADER: ctx.request_id, MODEL_HEADER: ctx.model_served or ""}
    if ctx.admission is not None:
        headers.update(ctx.admission.headers)
    response = httpserver.StreamResponse(200, headers)
    ctx.status = 200
    sent = 0
    outcome = "done"
    try:
        # Inside the try: a client that left must not be blamed on the upstream (it would trip its breaker).
        await response.prepare(ctx.request)
        while True:
            if out:
                await response.write(out)
                sent += len(out)
            if parser.stop is not None:
                upstream.close()
                message, code = parser.stop
                outcome = "malformed" if code == "upstream_malformed_event" else "ended"
                await _end_with_error(response, message, code, ctx)
                return response
            if parser.holding:  # an event waits until its budget covers it (see UsageMonitor)
                await parser.monitor.cover()  # type: ignore[union-attr]
                out = parser.resume()
                continue
            timer.reschedule(min(deadline, loop.time() + idle))
            chunk = await upstream.readany()
            if not chunk:
                out = parser.flush()
                if not out:
                    break
                continue
            out = parser.feed(chunk)
        if not parser.done:
            outcome = "truncated"
            await _end_with_error(
                response, "upstream stream ended without its terminator", "upstream_stream_truncated", ctx
            )
            return response
        await response.write_eof()
        return response
    except ConnectionResetError:
        # The client went away (if after [DONE], it merely did not wait for the end of the chunked body).
        if not parser.done:
            outcome = "client_gone"
            ctx.client_disconnected = True
        upstream.close()
        return response
    except asyncio.CancelledError:
        upstream.close()
        if not timer.expired():
            # The server cancels the handler when the client goes away; after [DONE] the client had the whole
            # answer (SDKs close as soon as they read it, often before the upstream ends its body).
            if parser.done:
                ctx.stream_complete = True
            else:
                outcome = "client_gone"
                ctx.client_disconnected = True
            raise
        # Our idle timer fired mid-stream. Swallowing its cancellation is safe:
        # the timeout block's exit uncancels the task either way.
        outcome = await _stalled(response, ctx, parser.done)
        return response
    except HttpError as exc:
        upstream.close()
        if parser.done:  # the answer was complete; only the connection's end was untidy
            await _write_eof(response)
            return response
        outcome = "broken"
        await _end_with_error(response, f"upstream stream broke: {exc}", "upstream_stream_error", ctx)
        return response
    finally:
        ctx.bytes_out = sent
        ctx.finished_at = loop.time()
        if parser.monitor is not None:
            parser.monitor.on_end(outcome)


async def _write_eof(response: httpserver.StreamResponse) -> None:
    try:
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client already has the whole answer


async def _stalled(response: httpserver.StreamResponse, ctx: RequestContext, done: bool) -> str:
    if done:  # silence after [DONE] is not an error
        await _write_eof(response)
        return "done"
    await _end_with_error(response, "upstream stream stalled past the idle timeout", "upstream_idle_timeout", ctx)
    return "stalled"


async def _end_with_error(response: httpserver.StreamResponse, message: str, code: str, ctx: RequestContext) -> None:
    ctx.error = code
    try:
        await response.write(sse_error_event(message, code))
        await response.write_eof()
    except ConnectionResetError:
        ctx.client_disconnected = True
