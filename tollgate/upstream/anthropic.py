"""An Anthropic upstream behind the OpenAI dialect: what the forward stage swaps in for one (built once per upstream).

The pure translation is tollgate/upstream/translate/; this module puts it on the wire:

* :meth:`AnthropicDialect.request` turns a chat completion request into the bytes of a Messages
  request for one deployment (its model, its ``max_tokens`` default, the upstream's
  ``drop_unsupported``), raising :class:`~tollgate.upstream.translate.TranslationError` for what
  has no equivalent;
* :meth:`AnthropicDialect.answer` turns a whole answer back into an OpenAI chat completion, and an
  error into OpenAI's shape and status (529 ``overloaded_error`` answers 503), so the gateway's
  usage extraction, retry and fallback judge it as they judge an OpenAI answer;
* :class:`TranslatedStream` reads Anthropic's SSE events as they arrive and hands out OpenAI chunk
  frames in their place, with the ``readany``/``close`` the stream relay calls, so the relay
  (usage monitor, budget cut, ``[DONE]``) runs unchanged. An ``event: error`` raises
  :class:`StreamErrorEvent` (an ``HttpError``): before the first event that is a failed attempt,
  after it the relay's usual end of a broken stream.

The stream translator is always asked for the usage chunk: the gateway asks every upstream for usage
(tollgate/upstream/usage.py) and the usage monitor hides the chunk from a client that did not ask.
"""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.upstream.client import HttpError, UpstreamResponse
from tollgate.upstream.sse import MAX_EVENT_BYTES
from tollgate.upstream.translate import (
    AnthropicToOpenAIStream,
    anthropic_error_to_openai,
    anthropic_message_to_openai,
    openai_request_to_anthropic,
)

__all__ = ["MESSAGES_PATH", "AnthropicDialect", "StreamErrorEvent", "TranslatedStream"]

# Where Messages requests go, under the upstream's base URL (the API root).
MESSAGES_PATH = "/v1/messages"
_JSON = "application/json"


class StreamErrorEvent(HttpError):
    """The upstream's stream said ``event: error`` (or sent an event that is not JSON)."""


class AnthropicDialect:
    """The translation settings of one Anthropic upstream."""

    __slots__ = ("drop_unsupported",)

    path = MESSAGES_PATH

    def __init__(self, drop_unsupported: bool) -> None:
        self.drop_unsupported = drop_unsupported

    def request(self, body: dict[str, Any], model: str, max_tokens: int | None) -> bytes:
        """The Messages request for a chat completion request, sent as ``model`` (raises ``TranslationError``)."""
        translated = openai_request_to_anthropic(
            {**body, "model": model}, default_max_tokens=max_tokens, drop_unsupported=self.drop_unsupported
        )
        return orjson.dumps(translated.body)

    def answer(self, status: int, data: bytes, created: int) -> tuple[int, bytes]:
        """The OpenAI status and body for an Anthropic answer: a chat completion, or an error in OpenAI's shape."""
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if status >= 400:
            openai_status, error = anthropic_error_to_openai(status, doc)
            return openai_status, orjson.dumps(error)
        if not isinstance(doc, dict):
            return 502, orjson.dumps(
                {
                    "error": {
                        "message": "upstream answered something that is not a JSON message",
                        "type": "server_error",
                        "code": "upstream_bad_response",
                        "param": None,
                    }
                }
            )
        return status, orjson.dumps(anthropic_message_to_openai(doc, created=created))

    def stream(self, upstream: UpstreamResponse, created: int) -> TranslatedStream:
        return TranslatedStream(upstream, AnthropicToOpenAIStream(created=created, include_usage=True))


class TranslatedStream:
    """An Anthropic SSE body read as an OpenAI one: each complete event translated the moment it is read."""

    __slots__ = ("_error", "_pending", "_translator", "upstream")

    def __init__(self, upstream: UpstreamResponse, translator: AnthropicToOpenAIStream) -> None:
        self.upstream = upstream
        self._translator = translator
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
        if b"\r" in buf:
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
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                self._error = "upstream sent a malformed stream event"
                break
            if not isinstance(payload, dict):
                continue
            if payload.get("type") == "error":
                error = payload.get("error")
                error = error if isinstance(error, dict) else {}
                self._error = f"upstream sent an error event: {error.get('type')}: {error.get('message')}"
                break
            out.append(translator.feed(payload))
        return b"".join(out)
