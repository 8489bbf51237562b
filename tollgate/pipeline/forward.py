"""Forward stage: one attempt on one deployment, with its timeouts; SSE relayed event by event.

One call of :func:`forward` is one attempt. It raises an ``UpstreamError``
only while nothing has reached the client (so the attempt loop in
tollgate/pipeline/attempts.py may still retry or fall back); once the first
event is out, trouble becomes an SSE error event and a clean end of the stream.

The headers the upstream gets are the pool's business (tollgate/upstream/pool.py); the
path is the endpoint's, or the deployment's own (Azure, tollgate/config/upstreams.py).
Where the client's dialect and the upstream's differ (an Anthropic upstream for an OpenAI client,
an OpenAI one for an Anthropic client), or the client speaks Anthropic's, the upstream's client
carries the bridge, built once per upstream (tollgate/upstream/anthropic.py): the request is
prepared by it before it is sent, a whole answer or an error put in the client's dialect before
anything reads it, and a stream event by event under the same relay. What a bridge dropped in
translation is named to the client in ``x-tollgate-dropped``; what it cannot translate is
refused in the client's dialect. Errors the gateway writes into a stream, and the events that
end one, are the client's dialect's too (tollgate/edge/dialects.py).
What the upstream answers with 401 or 403 is the gateway's problem, never
relayed (``UpstreamAuthError``); any other error body is relayed without
credentials (tollgate/upstream/redaction.py).

Unlike the other stages, it is called once per attempt, with the attempt's
deployment, its upstream's client and the statuses to divert, after the
clock that times it (``ctx.started``, the deadlines, ``first_byte_at``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import orjson

from tollgate.clock import Clock
from tollgate.config.model import Deployment
from tollgate.edge.answers import REQUEST_ID_HEADER, Response
from tollgate.edge.dialects import ANTHROPIC
from tollgate.edge.messages import StreamedAnswer
from tollgate.edge.multipart import form_boundary, scan_form, with_field
from tollgate.errors import (
    BadRequest,
    RequestError,
    UpstreamAuthError,
    UpstreamBadResponse,
    UpstreamStatus,
    UpstreamTimeout,
)
from tollgate.pipeline.context import RequestContext
from tollgate.policy.response_cache import CACHE_HEADER, Tape
from tollgate.upstream.anthropic import TranslatedStream
from tollgate.upstream.anthropic_usage import usage_from_anthropic_body
from tollgate.upstream.client import ConnectError, HttpError, UpstreamResponse
from tollgate.upstream.deadlines import Deadline
from tollgate.upstream.media import MEDIA_KINDS, media_usage
from tollgate.upstream.pool import UpstreamClient, upstream_head, upstream_headers
from tollgate.upstream.redaction import redact
from tollgate.upstream.responses_usage import relabeled_response
from tollgate.upstream.sse import SseParser
from tollgate.upstream.usage import usage_from_body

__all__ = ["DROPPED_HEADER", "MODEL_HEADER", "Answer", "forward"]

log = logging.getLogger("tollgate.forward")

Answer = StreamedAnswer | Response
"""What the stages that answer return: a complete response, or a stream already under way."""

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
# Which model served the response (differs from the requested one when a fallback did).
MODEL_HEADER = "x-tollgate-model"
# The request parameters dropped in translation to the upstream's dialect (the upstream's drop_unsupported).
DROPPED_HEADER = "x-tollgate-dropped"
# A stream's first event that fails the attempt, so that another may serve: malformed, or the upstream's error event.
_FAILED_FIRST = frozenset({"upstream_malformed_event", "upstream_error_event"})
# An upstream's answer to the gateway's credential that the tenant never sees as such (see UpstreamAuthError).
_AUTH_STATUSES = frozenset({401, 403})


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: treated as absent


async def forward(
    ctx: RequestContext, clock: Clock, deployment: Deployment, client: UpstreamClient, divert: frozenset[int]
) -> Answer:
    """Send the request to one deployment and relay its answer.

    An error status in ``divert`` raises :class:`UpstreamStatus` (body read, nothing
    sent) instead of being relayed, so the caller can retry or fall back.
    """
    endpoint = ctx.endpoint
    assert endpoint is not None and ctx.body is not None and client.http is not None
    cfg = client.config
    bridge = client.messages_bridge if endpoint.dialect is ANTHROPIC else client.dialect
    dropped: Sequence[str] = ()  # no list made on the OpenAI-to-OpenAI path
    form_type: str | None = None
    if bridge is None:  # OpenAI's dialect on both sides: the client's bytes, unless the model name changes
        # The deployment's own path where its provider has one (Azure), built with the config.
        found = endpoint.upstream_suffix if deployment.paths is None else deployment.paths.get(endpoint.upstream_suffix)
        if found is None:
            return _refused(ctx, clock, _unserved(cfg.name, cfg.provider, endpoint.path))
        path = found
        if endpoint.multipart:  # an upload: its own bytes and Content-Type (boundary), the model field rewritten
            form_type = ctx.request.headers.get("Content-Type", "")
            body = ctx.body_bytes if deployment.model == ctx.model else _with_model(ctx, form_type, deployment.model)
        elif deployment.model == ctx.model:
            body = ctx.body_bytes
        else:
            body = orjson.dumps({**ctx.body, "model": deployment.model})
    else:
        local = bridge.local(ctx.body, endpoint.kind)
        if local is not None:
            ctx.upstream_name = cfg.name
            return _answered(ctx, clock, 200, local, "application/json", ())
        try:
            path, body, dropped = bridge.prepare(ctx.body, ctx.body_bytes, deployment, endpoint.kind)
        except RequestError as exc:
            return _refused(ctx, clock, exc)
    ctx.upstream_name = cfg.name
    now = clock.loop_time
    deadline = ctx.started + cfg.timeouts.total
    phase = "first byte"
    try:
        with client.deadlines.at(min(deadline, now() + cfg.timeouts.first_byte)) as timer:
            if form_type is None and client.inject is None:  # the gateway's headers as lines made once per upstream
                sent, tail = upstream_head(client, ctx.request.headers, ctx.client_ip, ctx.request_id)
            else:  # a traced request's trace context is written into its list of headers (TracedHttp)
                sent = upstream_headers(client, ctx.request.headers, ctx.client_ip, ctx.request_id, form_type)
                tail = ""
            upstream = await client.http.request("POST", path, sent, body, tail)
            # Released in a finally of its own, not one that also covers the request: compiled, a finally reading a
            # variable the try may not have assigned takes it for the type it has at the try's end.
            try:
                ctx.first_byte_at = now()
                phase = "idle"
                timer.reschedule(min(deadline, now() + cfg.timeouts.idle))
                status = upstream.status
                content_type = upstream.headers.get("content-type", "")
                if ctx.stream and status == 200 and content_type.startswith("text/event-stream"):
                    phase = "first event"
                    source = upstream if bridge is None else bridge.stream(upstream, int(clock.time()))
                    return await _relay_stream(
                        ctx, clock, source, timer, deadline, cfg.timeouts.idle, dropped, client.secrets
                    )
                data = upstream.whole()  # None: not all of it has arrived yet
                if data is None:
                    data = await upstream.read()
            finally:
                upstream.release()
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
    if status >= 400:
        if status in _AUTH_STATUSES:
            # The provider's words go to the operator's log (its masked key says which one failed), not to the tenant.
            raise UpstreamAuthError(
                cfg.name, status, redact(data[:2000], client.secrets, shapes=False).decode("utf-8", "replace")
            )
        data = redact(data, client.secrets)
        judged = 503 if status == 529 else status  # Anthropic's overloaded is judged as the 503 it means
        if bridge is not None:
            status, data = bridge.answer(status, data, int(clock.time()))
            content_type = "application/json"
        if judged in divert:
            retry_after = _retry_after(upstream.headers.get("retry-after"))
            raise UpstreamStatus(cfg.name, judged, data, content_type, retry_after, status)
    elif bridge is not None:
        status, data = bridge.answer(status, data, int(clock.time()))
        content_type = "application/json"
    if status == 200:
        kind = endpoint.kind
        if kind == "responses":  # the stored response's id says which upstream holds it
            tenant = ctx.principal.tenant if ctx.principal is not None else "anonymous"
            data, ctx.usage = relabeled_response(data, cfg.name, tenant)
        elif kind in MEDIA_KINDS:  # audio is never parsed; images and transcripts may report usage
            ctx.usage = media_usage(kind, ctx.body, data, content_type)
        elif kind == "messages":
            ctx.usage = usage_from_anthropic_body(data)
        else:
            ctx.usage = usage_from_body(data)
    return _answered(ctx, clock, status, data, content_type, dropped)


def _unserved(upstream: str, provider: str, route: str) -> BadRequest:
    """The refusal of a route the deployment's provider has no path for (Azure has no moderations)."""
    return BadRequest(
        f"this model is served by upstream {upstream!r} ({provider}), which does not serve {route}",
        code="unsupported_endpoint",
        param="model",
    )


def _with_model(ctx: RequestContext, form_type: str, model: str) -> bytes:
    """An upload's bytes with its ``model`` field's value replaced (the guard found exactly one)."""
    raw = ctx.body_bytes
    field = next(f for f in scan_form(raw, form_boundary(form_type)) if f.name == "model")
    return with_field(raw, field, model)


def _answered(
    ctx: RequestContext, clock: Clock, status: int, data: bytes, content_type: str, dropped: Sequence[str]
) -> Response:
    """A whole answer to the client: its status and body, the model that served it, what the limits said."""
    ctx.status = status
    ctx.finished_at = clock.loop_time()
    ctx.bytes_out = len(data)
    headers = {
        "Content-Type": content_type or "application/json",
        REQUEST_ID_HEADER: ctx.request_id,
        MODEL_HEADER: ctx.model_served or "",
    }
    if dropped:
        headers[DROPPED_HEADER] = ", ".join(dropped)
    if ctx.admission is not None:
        headers.update(ctx.admission.headers)
    return Response(status, data, headers)


def _refused(ctx: RequestContext, clock: Clock, exc: RequestError) -> Response:
    """The client's answer when its request has no translation: 400 in its dialect's shape, naming the parameter."""
    assert ctx.endpoint is not None
    ctx.error = exc.code
    refusal = ctx.endpoint.dialect.error_answer(exc, ctx.request_id)
    return _answered(ctx, clock, refusal.status, refusal.body, "application/json", ())


async def _relay_stream(
    ctx: RequestContext,
    clock: Clock,
    upstream: UpstreamResponse | TranslatedStream,
    timer: Deadline,
    deadline: float,
    idle: float,
    dropped: Sequence[str],
    secrets: tuple[bytes, ...],
) -> Answer:
    """Relay SSE event by event; before the first event is out, failures raise so another attempt can serve. An
    error event goes out without the upstream's credentials, as an error body does (see SseParser)."""
    now = clock.loop_time
    assert ctx.endpoint is not None
    parser = SseParser(ctx.stream_monitor, ctx.endpoint.dialect.terminal, secrets)
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
            if _went_on(parser):
                continue
            raise UpstreamBadResponse("upstream ended the stream before its first event", code="upstream_empty_stream")
        out += parser.feed(chunk)
    if parser.stop is not None and parser.stop[1] in _FAILED_FIRST and not out:
        raise UpstreamBadResponse(f"{parser.stop[0]} before anything else", code=parser.stop[1])
    headers = {**_SSE_HEADERS, REQUEST_ID_HEADER: ctx.request_id, MODEL_HEADER: ctx.model_served or ""}
    if dropped:
        headers[DROPPED_HEADER] = ", ".join(dropped)
    if ctx.admission is not None:
        headers.update(ctx.admission.headers)
    tape = ctx.cache_tape  # a cacheable stream on a miss: what the client gets is recorded (tollgate/pipeline/cache.py)
    if tape is not None:
        headers[CACHE_HEADER] = "miss"
    response = StreamedAnswer(200, headers)
    ctx.status = 200
    sent = 0
    outcome = "done"
    # The events that follow the first are relayed in the upstream connection's callback while nothing needs this
    # coroutine (no hold, no stop, a client that keeps up): see _Pump. A translated stream is read piece by piece.
    pump = _Pump(parser, response, tape, timer, now, idle, deadline)
    if type(upstream) is UpstreamResponse:
        relay = upstream.relay
        pump.finished = upstream.whole
    else:
        relay = None
    try:
        # Inside the try: a client that left must not be blamed on the upstream (it would trip its breaker).
        # The first events go out with the head, in one write.
        await response.prepare(ctx.request, out)
        if out:
            sent = len(out)
            if tape is not None:
                tape.add(out)
            out = b""
        while True:
            if out:
                if response.send(out):  # response.write(out), without a coroutine per event
                    await response.drain()
                sent += len(out)
                if tape is not None:
                    tape.add(out)
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
            when = now() + idle
            timer.when = when if when < deadline else deadline  # timer.reschedule(min(deadline, when)), per event
            if relay is None:
                chunk = await upstream.readany()
            else:
                piece = await relay(pump)
                if piece is None:  # the pump stopped at a piece: what it left is this loop's to do
                    out, pump.out = pump.out, b""
                    written = pump.written
                    if written:  # sent, but the client reads slower: wait for it, then count the piece
                        pump.written = b""
                        await response.drain()
                        sent += len(written)
                        if tape is not None:
                            tape.add(written)
                    elif pump.last:  # the upstream's body ended with the terminator: the answer's end goes with it
                        await response.write_eof(out)
                        sent += len(out)
                        if tape is not None and out:
                            tape.add(out)
                        return response
                    continue
                chunk = piece
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
        ctx.bytes_out = sent + pump.sent
        ctx.finished_at = now()
        if parser.monitor is not None:
            parser.monitor.on_end(outcome)


class _Pump:
    """The relay's work on each upstream piece after the first event, done in the upstream connection's callback
    (``UpstreamResponse.relay``) while nothing needs the relay's coroutine: the piece parsed, its events sent and
    counted (recorded too, on a cache miss), the idle deadline pushed back, as the relay's loop does them.

    It stops (returns False) at a piece after which the parser holds an event or stops the stream, leaving what
    the piece gave in ``out``; at the piece of the stream's terminator when the upstream's body ended with it too
    (``finished`` says so: the usual end), leaving its events in ``out`` and ``last`` set, for the loop to send
    with the answer's end in one write; at a piece whose events cannot be written (the client is gone), leaving
    them in ``out``; and at a piece written to a client that reads slower, leaving it in ``written`` to be counted
    once the loop has waited for the client."""

    __slots__ = (
        "parser",
        "response",
        "tape",
        "timer",
        "now",
        "idle",
        "deadline",
        "sent",
        "out",
        "written",
        "finished",
        "last",
    )

    def __init__(
        self,
        parser: SseParser,
        response: StreamedAnswer,
        tape: Tape | None,
        timer: Deadline,
        now: Callable[[], float],
        idle: float,
        deadline: float,
    ) -> None:
        self.parser = parser
        self.response = response
        self.tape = tape
        self.timer = timer
        self.now = now
        self.idle = idle
        self.deadline = deadline
        self.sent = 0  # bytes of events it wrote and counted
        self.out = b""
        self.written = b""
        # The upstream's ``whole()``, asked once the terminator is seen: what is left of its body when it has ended
        # (b"" after the pieces the pump was given), None while it goes on.
        self.finished: Callable[[], bytes | None] | None = None
        self.last = False  # it stopped at the end of the upstream's body, its last events in ``out``

    def __call__(self, chunk: bytes) -> bool:
        parser = self.parser
        out = parser.feed(chunk)
        if parser.stop is not None or parser.holding:
            self.out = out
            return False
        if parser.done and self.finished is not None:
            finished, self.finished = self.finished, None
            rest = finished()
            if rest is not None:  # the body has ended: the loop ends the answer (and reads b"" from now on)
                if rest:  # bytes after the piece: unusual; the loop sends the events and the end as always
                    self.out = out + parser.feed(rest)
                    return False
                self.out = out
                self.last = not parser.pending
                return False
        if out:
            try:
                slow = self.response.send(out)
            except ConnectionResetError:
                self.out = out
                return False
            if slow:
                self.written = out
                return False
            self.sent += len(out)
            if self.tape is not None:
                self.tape.add(out)
        when = self.now() + self.idle
        self.timer.when = when if when < self.deadline else self.deadline
        return True


def _went_on(parser: SseParser) -> bool:
    """Whether the parser has something to go on with: an event, the stream's end, a stop, or a held event."""
    return bool(parser.events) or parser.done or parser.stop is not None or parser.holding


async def _write_eof(response: StreamedAnswer) -> None:
    try:
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client already has the whole answer


async def _stalled(response: StreamedAnswer, ctx: RequestContext, done: bool) -> str:
    if done:  # silence after [DONE] is not an error
        await _write_eof(response)
        return "done"
    await _end_with_error(response, "upstream stream stalled past the idle timeout", "upstream_idle_timeout", ctx)
    return "stalled"


async def _end_with_error(response: StreamedAnswer, message: str, code: str, ctx: RequestContext) -> None:
    assert ctx.endpoint is not None
    ctx.error = code
    try:
        await response.write(ctx.endpoint.dialect.stream_error(message, code))
        await response.write_eof()
    except ConnectionResetError:
        ctx.client_disconnected = True
