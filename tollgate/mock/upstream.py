"""OpenAI-compatible mock upstream with fault injection, for the demo, the integration tests and the benchmarks.

This module makes the application and runs it; the chat, completions,
embeddings and models endpoints are in ``endpoints.py``, the Responses API in
``responses.py``, images, audio and moderations in ``media.py``, Anthropic's
Messages API in ``anthropic.py``, Azure's paths in ``azure.py``, the faults
they apply in ``faults.py``, what they generate in ``generation.py``, the
knobs in ``settings.py``.

Endpoints, shaped like OpenAI's answers (each module's docstring has the details):

- ``POST /v1/chat/completions``, ``POST /v1/completions``: ``"stream": true``
  answers in OpenAI's SSE format (role delta, one content delta per
  ``tokens_per_chunk`` tokens, a final chunk with ``finish_reason``, a
  ``choices: []`` usage chunk when ``stream_options.include_usage`` is true,
  then ``data: [DONE]``);
- ``POST /v1/embeddings``; ``GET /v1/models`` and ``/v1/models/{id}``;
- ``POST /v1/responses`` (stream: Responses SSE events, no ``[DONE]``), ``GET``
  and ``DELETE /v1/responses/{id}`` (stored responses; responses.py);
- ``POST /v1/images/generations``, ``POST /v1/audio/speech`` (audio bytes),
  ``POST /v1/audio/transcriptions`` (multipart upload), ``POST /v1/moderations``
  (media.py); ``GET /_mock/images/{name}`` serves the image an image ``url``
  names;
- ``POST /v1/messages``, ``POST /v1/messages/count_tokens``: Anthropic's
  Messages API (anthropic.py);
- Azure OpenAI's paths for these (azure.py): ``/openai/deployments/{deployment}/``
  ``chat/completions``, ``completions``, ``embeddings``,
  ``images/generations``, ``audio/speech``, ``audio/transcriptions`` (with
  ``?api-version=``), and ``/openai/v1/`` ``chat/completions``,
  ``completions``, ``embeddings``, ``images/generations``, ``audio/speech``,
  ``audio/transcriptions``, ``responses`` (``POST``; ``GET``/``DELETE``
  ``responses/{id}``); the ``api-key`` they expect is ``azure_api_key``.

Generated text is deterministic (words from a fixed list, one token each);
prompt tokens are estimated at ~4 characters per token plus 4 per message.

Observation: ``GET /_mock/requests`` (recent requests: time, method, path,
query, headers as ``[name, value]`` pairs, parsed JSON body; a multipart form
as its fields, a file as ``{"filename", "content_type", "size"}``), ``DELETE
/_mock/requests`` (clear), ``GET /_mock/stats`` (counters, and the
wall-clock ``time.time()`` at which the mock noticed a client leave a stream),
``DELETE /_mock/stats`` (reset).

Fault knobs. Each is a ``MockSettings`` field (instance-wide; CLI flag
``--field-name``) and can be overridden per request with the header
``x-mock-field-name`` (the gateway forwards ordinary client headers). They
apply to the POST endpoints only (Responses API streams included: a cut one
ends without ``response.completed``); an unparsable header value is a 400.

====================  ===========================  ===================================================
setting               request header               effect
====================  ===========================  ===================================================
latency_ms            x-mock-latency-ms            wait this long before the first byte (status line)
tokens_per_second     x-mock-tokens-per-second     pace stream content deltas (0 = as fast as possible)
status                x-mock-status                answer every request with this error status 400..599
                                                   and an OpenAI-shaped error body (0 = off)
error_rate            x-mock-error-rate            fraction 0..1 of requests answered ``error_status``
                                                   (RNG seeded by ``seed`` when given)
error_status          x-mock-error-status          status used by ``error_rate`` (default 500)
retry_after           x-mock-retry-after           ``Retry-After`` seconds sent with a 429
cut_after             x-mock-cut-after             streams: close the connection abruptly after N SSE
                                                   events (no terminating chunk, no ``[DONE]``);
                                                   non-streams: close without answering
stall_after           x-mock-stall-after           streams: stop after N events, keep the connection
                                                   open until the client leaves; non-streams: never
                                                   answer
malformed_after       x-mock-malformed-after       streams: after N events send one event whose data
                                                   is not JSON, then carry on
completion_tokens     x-mock-completion-tokens     generate exactly this many tokens (ignores
                                                   ``max_tokens``)
usage_chunk_delta     x-mock-usage-chunk-delta     streams: the usage chunk carries ``choices:
                                                   [{"index": 0, "delta": {}}]`` (as some proxies send)
linger_after_done_ms  x-mock-linger-after-done-ms  streams: end the body this long after ``[DONE]``
====================  ===========================  ===================================================

Instance-only settings: ``seed``, ``default_tokens`` (length when the request
has no ``max_tokens``), ``max_tokens_cap``, ``tokens_per_chunk``,
``embedding_dim``, ``models`` (listed by ``/v1/models``), ``record`` (off for
benchmarks), ``record_limit`` (ring buffer size) and ``azure_api_key`` (the
``api-key`` Azure's paths expect; none: any key passes).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

from aiohttp import web

from tollgate.mock import anthropic, azure, media, responses
from tollgate.mock.endpoints import (
    chat_completions,
    clear_requests,
    completions,
    embeddings,
    get_model,
    list_models,
    recorded_requests,
    reset_stats,
    stats,
)
from tollgate.mock.settings import HEADER_PREFIX, MockSettings, add_arguments, settings_from_args
from tollgate.mock.state import MOCK_STATE, MockState

__all__ = [
    "HEADER_PREFIX",
    "MOCK_STATE",
    "MockSettings",
    "MockState",
    "add_arguments",
    "make_mock_app",
    "run_mock",
    "settings_from_args",
    "start_mock",
]


def make_mock_app(settings: MockSettings | None = None) -> web.Application:
    """The mock as an aiohttp application; serve it with ``handler_cancellation=True`` (:func:`start_mock` does), which ends a stalled answer when its client leaves."""
    app = web.Application()
    settings = settings or MockSettings()
    app[MOCK_STATE] = MockState(settings)
    if settings.azure_api_key is not None:
        app[azure.AZURE_API_KEY] = settings.azure_api_key
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", responses.create_response)
    app.router.add_get("/v1/responses/{response_id}", responses.retrieve_response)
    app.router.add_delete("/v1/responses/{response_id}", responses.delete_response)
    app.router.add_post("/v1/images/generations", media.image_generations)
    app.router.add_post("/v1/audio/speech", media.speech)
    app.router.add_post("/v1/audio/transcriptions", media.transcriptions)
    app.router.add_post("/v1/moderations", media.moderations)
    app.router.add_post("/v1/messages", anthropic.messages)
    app.router.add_post("/v1/messages/count_tokens", anthropic.count_tokens)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model}", get_model)
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", azure.deployment_chat_completions)
    app.router.add_post("/openai/deployments/{deployment}/completions", azure.deployment_completions)
    app.router.add_post("/openai/deployments/{deployment}/embeddings", azure.deployment_embeddings)
    app.router.add_post("/openai/deployments/{deployment}/images/generations", azure.deployment_image_generations)
    app.router.add_post("/openai/deployments/{deployment}/audio/speech", azure.deployment_speech)
    app.router.add_post("/openai/deployments/{deployment}/audio/transcriptions", azure.deployment_transcriptions)
    app.router.add_post("/openai/v1/chat/completions", azure.v1_chat_completions)
    app.router.add_post("/openai/v1/completions", azure.v1_completions)
    app.router.add_post("/openai/v1/embeddings", azure.v1_embeddings)
    app.router.add_post("/openai/v1/images/generations", azure.v1_image_generations)
    app.router.add_post("/openai/v1/audio/speech", azure.v1_speech)
    app.router.add_post("/openai/v1/audio/transcriptions", azure.v1_transcriptions)
    app.router.add_post("/openai/v1/responses", azure.v1_create_response)
    app.router.add_get("/openai/v1/responses/{response_id}", azure.v1_retrieve_response)
    app.router.add_delete("/openai/v1/responses/{response_id}", azure.v1_delete_response)
    app.router.add_get("/_mock/images/{name}", media.image_file)
    app.router.add_get("/_mock/requests", recorded_requests)
    app.router.add_delete("/_mock/requests", clear_requests)
    app.router.add_get("/_mock/stats", stats)
    app.router.add_delete("/_mock/stats", reset_stats)
    return app


async def start_mock(
    host: str = "127.0.0.1", port: int = 0, settings: MockSettings | None = None
) -> tuple[web.AppRunner, int]:
    """Start the mock on the running loop; returns the runner (``await runner.cleanup()`` to stop) and the bound port."""
    runner = web.AppRunner(make_mock_app(settings), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=2048).start()
    except BaseException:
        await runner.cleanup()
        raise
    for address in runner.addresses:
        if isinstance(address, tuple):
            return runner, int(address[1])
    await runner.cleanup()
    raise RuntimeError("mock upstream did not bind")


async def _serve(host: str, port: int, settings: MockSettings) -> None:
    runner, bound = await start_mock(host, port, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"mock upstream listening on http://{host}:{bound}/v1", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_mock(host: str = "127.0.0.1", port: int = 9000, settings: MockSettings | None = None) -> None:
    """Serve until SIGTERM/SIGINT (uvloop when installed); prints the bound URL once listening."""
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(host, port, settings or MockSettings()))
