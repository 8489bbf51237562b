"""Anthropic's Messages API on the wire: the bridges between a client's dialect and an upstream's where one is Anthropic's.

The pure translation is tollgate/upstream/translate/; this module puts it on the wire. A bridge is
built once per upstream (tollgate/upstream/pool.py) and has the same four parts whatever it joins:
``request`` (the bytes to send for one deployment, and the parameters dropped on the way; raises a
``RequestError`` for what has no equivalent), ``path``, ``answer`` (a whole answer or an error, in the
client's dialect) and ``stream`` (a body with the ``readany``/``close`` the stream relay calls, whose
events are in the client's dialect). The bridges:

* :class:`AnthropicDialect`: an OpenAI chat client served by an Anthropic upstream. ``max_tokens``
  defaults per deployment, errors come back in OpenAI's shape and status (529 ``overloaded_error``
  answers 503), so the gateway's retry and fallback judge them as OpenAI's; the stream translator is
  always asked for the usage chunk (the usage monitor hides it from a client that did not ask).
* :class:`AnthropicNative`: an Anthropic client served by an Anthropic upstream: the request as it
  came, under the deployment's model name; the answer and the stream as they are.
* :class:`ChatForMessages`: an Anthropic client served by an OpenAI-dialect upstream: the request as
  a chat completion, the answer, errors and stream back in Anthropic's dialect. ``count_tokens`` has
  no OpenAI equivalent: the gateway answers it with its own estimate (:meth:`ChatForMessages.count`).

:class:`TranslatedStream` reads a body's SSE events as they arrive and hands out the other dialect's
frames in their place. An Anthropic upstream's ``event: error`` raises :class:`StreamErrorEvent` (an
``HttpError``): before the first event that is a failed attempt, after it the relay's usual end of a
broken stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson

from tollgate.config.model import Deployment
from tollgate.errors import BadRequest
from tollgate.upstream.client import HttpError, UpstreamResponse
from tollgate.upstream.estimates import estimate_messages_tokens
from tollgate.upstream.sse import MAX_EVENT_BYTES
from tollgate.upstream.translate import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_error_to_openai,
    anthropic_message_to_openai,
    anthropic_request_to_openai,
    openai_completion_to_anthropic,
    openai_error_to_anthropic,
    openai_request_to_anthropic,
)

__all__ = [
    "COUNT_TOKENS_PATH",
    "MESSAGES_PATH",
    "AnthropicDialect",
    "AnthropicNative",
    "Bridge",
    "ChatForMessages",
    "StreamErrorEvent",
    "TranslatedStream",
]

# Where Messages requests go, under the upstream's base URL (the API root).
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
_DONE = b"[DONE]"
_CHAT = "/chat/completions"  # an OpenAI-dialect upstream's path (its Azure form in the deployment's paths)


# What an Anthropic client gets for an OpenAI-dialect upstream's answer that is not JSON.
_NOT_A_COMPLETION = orjson.dumps(
    {"type": "error", "error": {"type": "api_error", "message": "upstream answered something that is not JSON"}}
)


def _translated(
    status: int,
    data: bytes,
    error: Callable[[int, Any], tuple[int, dict[str, Any]]],
    message: Callable[[dict[str, Any]], dict[str, Any]],
    unreadable: bytes,
) -> tuple[int, bytes]:
    """A whole answer in the other dialect: an error through ``error``, a 2xx JSON object through ``message``,
    anything else a 502 with ``unreadable``."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if status >= 400:
        translated_status, body = error(status, doc)
        return translated_status, orjson.dumps(body)
    if not isinstance(doc, dict):
        return 502, unreadable
    return status, orjson.dumps(message(doc))


class Bridge(Protocol):
    """How one upstream serves one client dialect (see the module docstring); the forward stage calls it."""

    def prepare(
        self, body: dict[str, Any], raw: bytes, deployment: Deployment, kind: str
    ) -> tuple[str, bytes, list[str]]:
        """The path and bytes to send for a request of ``kind``, and the parameters dropped on the way."""
        ...

    def local(self, body: dict[str, Any], kind: str) -> bytes | None:
        """The answer the gateway gives itself, where this upstream has no equivalent; None to ask the upstream."""
        ...

    def answer(self, status: int, data: bytes, created: int) -> tuple[int, bytes]: ...

    def stream(self, upstream: UpstreamResponse, created: int) -> UpstreamResponse | TranslatedStream: ...


class _StreamTranslator(Protocol):
    def feed(self, event: dict[str, Any]) -> bytes: ...

    def done(self) -> bytes: ...


def _not_json(what: str) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": f"upstream answered something that is not {what}",
                "type": "server_error",
                "code": "upstream_bad_response",
                "param": None,
            }
        }
    )


class StreamErrorEvent(HttpError):
    """The upstream's stream said ``event: error`` (or sent an event that is not JSON)."""


class AnthropicDialect:
    """The translation settings of one Anthropic upstream."""

    __slots__ = ("drop_unsupported",)

    path = MESSAGES_PATH

    def __init__(self, drop_unsupported: bool) -> None:
        self.drop_unsupported = drop_unsupported

    def prepare(
        self, body: dict[str, Any], raw: bytes, deployment: Deployment, kind: str
    ) -> tuple[str, bytes, list[str]]:
        """The Messages request for a chat completion request (raises a ``RequestError`` for what it cannot say)."""
        if kind != "chat":
            raise BadRequest(
                "this model is served by an Anthropic upstream, which answers chat completions and messages only",
                code="unsupported_endpoint",
                param="model",
            )
        translated = openai_request_to_anthropic(
            {**body, "model": deployment.model},
            default_max_tokens=deployment.max_tokens,
            drop_unsupported=self.drop_unsupported,
        )
        return MESSAGES_PATH, orjson.dumps(translated.body), translated.dropped

    def local(self, body: dict[str, Any], kind: str) -> bytes | None:
        return None

    def answer(self, status: int, data: bytes, created: int) -> tuple[int, bytes]:
        """The OpenAI status and body for an Anthropic answer: a chat completion, or an error in OpenAI's shape."""
        return _translated(
            status,
            data,
            anthropic_error_to_openai,
            lambda message: anthropic_message_to_openai(message, created=created),
            _not_json("a JSON message"),
        )

    def stream(self, upstream: UpstreamResponse, created: int) -> TranslatedStream:
        return TranslatedStream(upstream, AnthropicToOpenAIStream(created=created, include_usage=True), True)


class AnthropicNative:
    """An Anthropic client's request to an Anthropic upstream: as it came, under the deployment's model name."""

    __slots__ = ()

    def prepare(
        self, body: dict[str, Any], raw: bytes, deployment: Deployment, kind: str
    ) -> tuple[str, bytes, list[str]]:
        """The client's own bytes when nothing changes; else its body under the deployment's model (and ``max_tokens``)."""
        path = COUNT_TOKENS_PATH if kind == "count_tokens" else MESSAGES_PATH
        max_tokens = deployment.max_tokens
        fill = kind == "messages" and body.get("max_tokens") is None and max_tokens is not None
        if body.get("model") == deployment.model and not fill:
            return path, raw, []
        out = {**body, "model": deployment.model}
        if fill:
            out["max_tokens"] = max_tokens
        return path, orjson.dumps(out), []

    def local(self, body: dict[str, Any], kind: str) -> bytes | None:
        return None

    def answer(self, status: int, data: bytes, created: int) -> tuple[int, bytes]:
        return status, data

    def stream(self, upstream: UpstreamResponse, created: int) -> UpstreamResponse:
        return upstream


class ChatForMessages:
    """An Anthropic client's request to an OpenAI-dialect upstream, as a chat completion, and its answer back."""

    __slots__ = ("drop_unsupported",)

    def __init__(self, drop_unsupported: bool) -> None:
        self.drop_unsupported = drop_unsupported

    def prepare(
        self, body: dict[str, Any], raw: bytes, deployment: Deployment, kind: str
    ) -> tuple[str, bytes, list[str]]:
        """The chat completion request for a Messages request (raises ``TranslationError`` naming what has no equivalent)."""
        translated = anthropic_request_to_openai(
            {**body, "model": deployment.model}, drop_unsupported=self.drop_unsupported
        )
        path = _CHAT if deployment.paths is None else deployment.paths[_CHAT]
        return path, orjson.dumps(translated.body), translated.dropped

    def local(self, body: dict[str, Any], kind: str) -> bytes | None:
        """A ``count_tokens`` answer from the gateway's estimate: an OpenAI-dialect upstream cannot count for it."""
        if kind != "count_tokens":
            return None
        return orjson.dumps({"input_tokens": estimate_messages_tokens(body)})

    def answer(self, status: int, data: bytes, created: int) -> tuple[int, bytes]:
        """The Anthropic status and body for an OpenAI answer: a message, or an error in Anthropic's shape."""
        return _translated(status, data, openai_error_to_anthropic, openai_completion_to_anthropic, _NOT_A_COMPLETION)

    def stream(self, upstream: UpstreamResponse, created: int) -> TranslatedStream:
        return TranslatedStream(upstream, OpenAIToAnthropicStream(), False)


class TranslatedStream:
    """An SSE body read in the other dialect: each complete event translated the moment it is read.

    ``raise_errors``: an Anthropic upstream's ``error`` event raises :class:`StreamErrorEvent` (an
    OpenAI upstream's error chunk is translated into Anthropic's ``event: error`` instead).
    """

    __slots__ = ("_error", "_pending", "_raise_errors", "_translator", "upstream")

    def __init__(self, upstream: UpstreamResponse, translator: _StreamTranslator, raise_errors: bool) -> None:
        self.upstream = upstream
        self._translator = translator
        self._raise_errors = raise_errors
        self._pending = b""
        self._error: str | None = None

    async def readany(self) -> bytes:
        """The OpenAI frames of the next upstream chunk(s) with a complete event; ``b""`` at the body's end."""
        while True:
            if self._error is not None:
                raise StreamErrorEvent(self._error)
            chunk = await self.upstream.readany()
            if not chunk:
                return self._frames(self._pending + b"\n\n") if self._pending.strip() else b""
            out = self._frames(self._pending + chunk)
            if out:
                return out

    def close(self) -> None:
        self.upstream.close()

    def _frames(self, buf: bytes) -> bytes:
        if 13 in buf:  # CR as an integer: a bytes operand is first tried as one, at the cost of a TypeError
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            if len(buf) > MAX_EVENT_BYTES:
                self._error = "upstream sent an event larger than the gateway accepts"
            self._pending = buf
            return b""
        self._pending = buf[end + 2 :]
        out: list[bytes] = []
        translator = self._translator
        for event in buf[:end].split(b"\n\n"):
            data = b"\n".join(line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
            if not data:
                continue
            if data == _DONE:
                out.append(translator.done())
                continue
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                self._error = "upstream sent a malformed stream event"
                break
            if not isinstance(payload, dict):
                continue
            if self._raise_errors and payload.get("type") == "error":
                error = payload.get("error")
                error = error if isinstance(error, dict) else {}
                self._error = f"upstream sent an error event: {error.get('type')}: {error.get('message')}"
                break
            out.append(translator.feed(payload))
        return b"".join(out)
