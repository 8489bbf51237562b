"""Cache stage: after admission, answer from the response cache, or serve the request and store its complete answer.

Runs only when ``cache.enabled`` (the handler checks one attribute otherwise).
A request is looked up when its route is chat completions, completions,
messages or embeddings, it is deterministic (``temperature`` 0, or an
embedding) or its client sends ``x-tollgate-cache: use``, and its client does
not send ``x-tollgate-cache: no-store`` (then it is neither read nor written).

The key is a BLAKE2b digest of the route, the request body as canonical JSON
(sorted keys) without the parameters that change only the framing of the
answer or who asked (:data:`FRAMING`), and the answer's shape: ``json``, or
``sse`` (``sse+usage`` when an OpenAI stream's client asked for the usage
chunk), so a streamed and a non-streamed request each get an answer in their
own shape. Its scope is the tenant (tollgate/policy/response_cache.py).

A hit is admitted like any request (its request limits counted); it reserved
a token estimate that the settler gives back (no usage, no upstream: settled
as zero tokens), is billed ``cache.price_per_1k_tokens`` and recorded apart
(tokens and cost saved). No upstream is called: a hit is served while every
upstream is down. A streamed hit replays the bytes the first client got: the
same events, byte for byte, so the ids and ``created`` times inside them are
the original answer's; a non-streamed hit answers the stored JSON body (its
``id`` and ``created`` the original's too). Headers are this request's own
(``x-request-id``, rate limits) plus ``x-tollgate-cache: hit``.

Only 200 answers that ended complete are stored: a stream cut by a budget,
truncated, broken, stalled or left by its client is not, nor an answer of an
error status, nor one larger than ``cache.max_entry_bytes``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from tollgate.clock import Clock
from tollgate.config.cache import ResponseCacheConfig
from tollgate.edge.answers import REQUEST_ID_HEADER, Response
from tollgate.edge.messages import StreamedAnswer
from tollgate.pipeline.attempts import serve
from tollgate.pipeline.context import RequestContext
from tollgate.pipeline.forward import MODEL_HEADER, Answer
from tollgate.pipeline.route import RouteDeps
from tollgate.policy.response_cache import CACHE_HEADER, CachedAnswer, CacheHit, ResponseCache, Tape

__all__ = ["FRAMING", "CacheDeps", "CacheMetrics", "cache_key", "serve_cached"]

FRAMING = frozenset({"stream", "stream_options", "user", "metadata", "store"})
"""Body parameters left out of the key: they change how the answer is framed, or who asked, not the answer."""
_KINDS = frozenset({"chat", "completion", "messages", "embedding"})
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class CacheMetrics(Protocol):
    """Where the stage counts lookups (``hit``, ``miss``, ``bypass``, ``stored``) and the tokens hits saved."""

    def cache_result(self, result: str, tokens_saved: int = 0) -> None: ...


@dataclass(frozen=True, slots=True)
class CacheDeps:
    """The process's cache, the config version's ``cache:`` section and routing, metrics, the clock."""

    cache: ResponseCache
    config: ResponseCacheConfig
    route: RouteDeps
    metrics: CacheMetrics
    clock: Clock
    # What a hit is billed per token of the answer it replays, in nanos of the pricing currency.
    charge_per_token: float


def cache_key(path: str, body: dict[str, Any], shape: str) -> str:
    """The digest of a request: its route, its body without :data:`FRAMING` as canonical JSON, the answer's shape."""
    if not FRAMING.isdisjoint(body):
        body = {k: v for k, v in body.items() if k not in FRAMING}
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(b"%s\0%s\0%s" % (path.encode(), canonical, shape.encode()), digest_size=20).hexdigest()


def _cacheable(ctx: RequestContext) -> bool | None:
    """True: look it up; False: not cacheable; None: the client bypasses the cache (``no-store``)."""
    endpoint = ctx.endpoint
    body = ctx.body
    if endpoint is None or body is None or endpoint.kind not in _KINDS:
        return False
    asked = ctx.request.headers.get(CACHE_HEADER)
    if asked is not None:
        asked = asked.strip().lower()
        if asked == "no-store":
            return None
        if asked == "use":
            return True
    if endpoint.kind == "embedding":
        return True
    temperature = body.get("temperature")
    return temperature == 0 and not isinstance(temperature, bool)


def _shape(ctx: RequestContext) -> str:
    if not ctx.stream:
        return "json"
    wants_usage = getattr(ctx.stream_monitor, "client_wants_usage", True)
    return "sse+usage" if wants_usage else "sse"


async def serve_cached(ctx: RequestContext, deps: CacheDeps) -> Answer:
    """The answer from the cache on a hit; else the request served (tollgate/pipeline/attempts.py), its answer stored."""
    wanted = _cacheable(ctx)
    if not wanted:
        if wanted is None:
            deps.metrics.cache_result("bypass")
        return await serve(ctx, deps.route)
    assert ctx.endpoint is not None and ctx.body is not None
    ttl = deps.config.ttl_for(ctx.model, ctx.namespace)
    if ttl <= 0:
        return await serve(ctx, deps.route)
    cache = deps.cache
    tenant = ctx.principal.tenant if ctx.principal is not None else "anonymous"
    scope = cache.scope_of(tenant)
    model = ctx.model or ""
    key = cache.key(scope, model, cache_key(ctx.endpoint.path, ctx.body, _shape(ctx)))
    found = await cache.get(key, scope, model)
    if found is not None:
        tokens = found.prompt_tokens + found.completion_tokens
        deps.metrics.cache_result("hit", tokens)
        ctx.cache_hit = CacheHit(found.prompt_tokens, found.completion_tokens, round(tokens * deps.charge_per_token))
        return await _replay(ctx, found, deps.clock)
    deps.metrics.cache_result("miss")
    if ctx.stream:
        ctx.cache_tape = Tape(deps.config.max_entry_bytes)
    answer = await serve(ctx, deps.route)
    stored = _complete(ctx, answer, deps.config.max_entry_bytes)
    if stored is not None and cache.put(key, scope, model, stored, ttl):
        deps.metrics.cache_result("stored")
    if isinstance(answer, Response) and CACHE_HEADER not in answer.headers:
        answer.headers = {**answer.headers, CACHE_HEADER: "miss"}
    return answer


def _complete(ctx: RequestContext, answer: Answer, max_bytes: int) -> CachedAnswer | None:
    """What to store of a served request: its complete 200 answer, if it had one that fits."""
    if ctx.status != 200 or ctx.error is not None or ctx.client_disconnected or answer.status != 200:
        return None
    usage = ctx.usage
    prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)
    served = ctx.model_served or ctx.model or ""
    if isinstance(answer, Response):
        if len(answer.body) > max_bytes:
            return None
        content_type = answer.headers.get("Content-Type", "application/json")
        return CachedAnswer("json", content_type, served, answer.body, prompt, completion)
    tape = ctx.cache_tape
    if tape is None or tape.overflowed or not tape.chunks:
        return None
    return CachedAnswer("sse", _SSE_HEADERS["Content-Type"], served, b"".join(tape.chunks), prompt, completion)


def _headers(ctx: RequestContext, found: CachedAnswer, base: dict[str, str]) -> dict[str, str]:
    headers = {**base, REQUEST_ID_HEADER: ctx.request_id, MODEL_HEADER: found.model_served, CACHE_HEADER: "hit"}
    if ctx.admission is not None:
        headers.update(ctx.admission.headers)
    return headers


async def _replay(ctx: RequestContext, found: CachedAnswer, clock: Clock) -> Answer:
    """Answer with the stored answer: its JSON body, or its SSE bytes as one stream."""
    ctx.model_served = found.model_served
    ctx.status = 200
    now: Callable[[], float] = clock.loop_time
    if found.shape == "json":
        ctx.bytes_out = len(found.body)
        ctx.finished_at = now()
        return Response(200, found.body, _headers(ctx, found, {"Content-Type": found.content_type}))
    response = StreamedAnswer(200, _headers(ctx, found, _SSE_HEADERS))
    try:
        await response.prepare(ctx.request)
        await response.write(found.body)
        ctx.bytes_out = len(found.body)
        await response.write_eof()
        ctx.stream_complete = True
    except ConnectionResetError:
        ctx.client_disconnected = True
    except asyncio.CancelledError:
        ctx.client_disconnected = not ctx.stream_complete
        raise
    finally:
        ctx.finished_at = now()
    return response
