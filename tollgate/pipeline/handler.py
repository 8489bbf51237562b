"""The request pipeline: guard → identify → match → admit → route → forward → account, for one endpoint.

Every stage is a function of the request context and of its own, narrow
dependencies: ``stage(ctx, deps) -> None``. Guard and admit may wait: admit
is a coroutine, guard hands back an awaitable only when the body is still to
be read; identify, match and account never do (plain functions, no
coroutine to pay for). Route and forward answer: ``serve(ctx, deps)`` returns
the response (tollgate/pipeline/attempts.py), calling ``forward`` once per
attempt. The dependencies of every stage are built once per config version by
the runtime (:class:`Stages`, tollgate/runtime/state.py) and read once per
request, so a request runs under one version from its start to its end.

While a request is served, the context variable of tollgate/accounting/logs.py names it, so every line
logged meanwhile carries its request id and tenant. With tracing on (``Stages.tracing``), the request has
a server span from its start to its end, a stream's end included (tollgate/pipeline/traces.py); off, the
handler pays one attribute read for it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Final, Protocol, final

from tollgate.accounting.logs import SERVING
from tollgate.clock import Clock
from tollgate.config.model import Guard
from tollgate.edge.answers import request_id_from, status_for
from tollgate.edge.messages import Handler, Request
from tollgate.errors import GatewayError
from tollgate.identity import Principal, SigningKeysStale, client_ip
from tollgate.identity.chain import IPNetwork
from tollgate.pipeline.account import AccountDeps, account
from tollgate.pipeline.admit import AdmitDeps, admit
from tollgate.pipeline.attempts import serve
from tollgate.pipeline.cache import CacheDeps, serve_cached
from tollgate.pipeline.context import Endpoint, RequestContext
from tollgate.pipeline.forward import Answer
from tollgate.pipeline.guard import guard
from tollgate.pipeline.identify import IdentifyDeps, identify
from tollgate.pipeline.match import match
from tollgate.pipeline.route import RouteDeps
from tollgate.policy.matchers import NamespaceTable
from tollgate.policy.shedding import Shedder

__all__ = ["Gateway", "OpenSpan", "RequestTracer", "Stages", "make_proxy_handler"]

log = logging.getLogger("tollgate.proxy")
_SERVING: Final = SERVING  # read from a native static, not the module's dictionary (compiled)


class OpenSpan(Protocol):
    """A request's span while it is served."""

    def end(self, ctx: RequestContext) -> None: ...


class RequestTracer(Protocol):
    """Opens a request's span (tollgate/pipeline/traces.py); None in ``Stages`` when tracing is off."""

    def start(self, ctx: RequestContext) -> OpenSpan: ...


@dataclass(frozen=True, slots=True)
class Stages:
    """The dependencies of every stage for one config version (and the handler's own: the clock of
    ``ctx.started``, the shedder's in-flight count, the proxies trusted to name the client's address, the
    tracer of the requests' spans when tracing is on)."""

    clock: Clock
    shedder: Shedder
    proxies: tuple[IPNetwork, ...]
    guard: Guard
    identify: IdentifyDeps
    match: NamespaceTable
    admit: AdmitDeps
    route: RouteDeps
    account: AccountDeps
    tracing: RequestTracer | None = None
    cache: CacheDeps | None = None


class _Version(Protocol):
    @property
    def stages(self) -> Stages: ...


class Gateway(Protocol):
    """Where the handler finds the config version in force (``GatewayState`` is one)."""

    @property
    def runtime(self) -> _Version: ...


@final
class _Serving:
    """What the log lines of a request read (tollgate/accounting/logs.py): its id, and its principal, from its
    context while its handler runs; once the handler is done (:meth:`done`), the principal alone, so that an idle
    connection keeps the request's id and principal, not its context (and body).

    Set once per request: the tasks the request starts share it, and read the same id and principal as ever."""

    __slots__ = ("request_id", "_ctx", "_principal")

    def __init__(self, request_id: str, ctx: RequestContext) -> None:
        self.request_id = request_id
        self._ctx: RequestContext | None = ctx
        self._principal: Principal | None = None

    @property
    def principal(self) -> Principal | None:
        ctx = self._ctx
        return self._principal if ctx is None else ctx.principal

    def done(self) -> None:
        ctx = self._ctx
        if ctx is not None:
            self._principal = ctx.principal
            self._ctx = None


def make_proxy_handler(endpoint: Endpoint, gateway: Gateway) -> Handler:
    error_answer = endpoint.dialect.error_answer  # in the client's dialect: OpenAI's shape, or Anthropic's
    internal_error_answer = endpoint.dialect.internal_error_answer

    async def handle(request: Request) -> Answer:
        stages = gateway.runtime.stages
        request_id = request_id_from(request.headers.get("x-request-id"))
        proxies = stages.proxies
        # No trusted proxy: the peer's address, as client_ip() would find it, without asking the transport again.
        ip = client_ip(request, proxies) if proxies else (request.remote or "unknown")
        ctx = RequestContext(request, request_id, endpoint, stages.clock.loop_time(), ip)
        serving = _Serving(request_id, ctx)
        _SERVING.set(serving)  # the request id and tenant of every line logged while it is served
        tracer = stages.tracing
        span = None if tracer is None else tracer.start(ctx)
        shedder = stages.shedder
        try:
            shedder.enter()
            reading = guard(ctx, stages.guard)  # None: the body had all arrived, nothing to wait for
            if reading is not None:
                await reading
            try:
                identify(ctx, stages.identify)
            except SigningKeysStale as stale:  # a JWT the cached JWKS keys cannot check: refresh, try once more
                await stale.keys.refresh()
                identify(ctx, stages.identify)
            match(ctx, stages.match)
            await admit(ctx, stages.admit)
            if stages.cache is not None:  # the response cache; off, this check is all it costs
                return await serve_cached(ctx, stages.cache)
            return await serve(ctx, stages.route)  # route → forward, with retries and fallbacks
        except GatewayError as exc:
            ctx.status = status_for(exc)
            ctx.error = exc.code
            return error_answer(exc, request_id)
        except asyncio.CancelledError:
            ctx.client_disconnected = not ctx.stream_complete
            raise
        except Exception:
            log.exception("unexpected error on request %s", request_id)
            ctx.status = 500
            ctx.error = "internal_error"
            return internal_error_answer(request_id)
        finally:
            shedder.leave()
            account(ctx, stages.account)
            if span is not None:
                span.end(ctx)
            # The connection's task serves its next request too (tollgate/edge/server.py): what the server logs
            # after this answer still names this request, without keeping its context (and body) while idle.
            serving.done()

    return handle
