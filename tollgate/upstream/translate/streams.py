"""Streams, event by event: Anthropic SSE events ↔ OpenAI ``chat.completion.chunk`` frames.

A translator is fed one parsed SSE event at a time (the JSON of its ``data:``) and returns the
complete SSE frames to send for it, at once: nothing is held back, so a text delta in is a frame
out. A translator keeps only the little state the other dialect needs (ids, the open content
block, tool indexes, usage so far).
"""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.upstream.translate.errors import (
    anthropic_error_to_openai,
    anthropic_status_for,
    openai_error_to_anthropic,
)
from tollgate.upstream.translate.vocabulary import (
    anthropic_usage_to_openai,
    finish_reason_for,
    openai_usage_to_anthropic,
    stop_reason_for,
)

__all__ = ["DONE_FRAME", "AnthropicToOpenAIStream", "OpenAIToAnthropicStream"]

DONE_FRAME = b"data: [DONE]\n\n"


def _data_frame(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _event_frame(name: bytes, payload: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class AnthropicToOpenAIStream:
    """Anthropic stream events in, OpenAI chunk frames out, ending with ``data: [DONE]``.

    ``include_usage`` is the client's ``stream_options.include_usage``: when set, a last chunk
    with empty ``choices`` carries the usage (input from ``message_start``, output from
    ``message_delta``). ``created`` is the caller's clock, in seconds; ``model``, when given, is the
    name the client asked for, otherwise the upstream's is passed on.
    """

    __slots__ = ("_created", "_id", "_include_usage", "_model", "_tools", "_usage", "finished")

    def __init__(self, *, created: int, include_usage: bool, model: str | None = None) -> None:
        self._created = created
        self._include_usage = include_usage
        self._model = model
        self._id = ""
        self._tools: dict[int, int] = {}  # Anthropic block index → OpenAI tool call index
        self._usage: dict[str, Any] = {}
        self.finished = False

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return _data_frame(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
        )

    def feed(self, event: dict[str, Any]) -> bytes:
        """The frames for one Anthropic event (``b""`` for one with nothing to say: ping, a block's stop)."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            delta_kind = delta.get("type")
            if delta_kind == "text_delta":
                return self._chunk({"content": delta.get("text", "")})
            if delta_kind == "input_json_delta":
                tool = self._tools.get(event.get("index", -1))
                partial = delta.get("partial_json", "")
                if tool is None or not partial:
                    return b""
                return self._chunk({"tool_calls": [{"index": tool, "function": {"arguments": partial}}]})
            return b""  # thinking, signature and citation deltas have no OpenAI field
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                tool = len(self._tools)
                self._tools[event.get("index", tool)] = tool
                call = {
                    "index": tool,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return self._chunk({"tool_calls": [call]})
            if block.get("type") == "text" and block.get("text"):
                return self._chunk({"content": block["text"]})
            return b""
        if kind == "message_start":
            message = event.get("message") or {}
            self._id = message.get("id") or ""
            self._model = self._model or message.get("model")
            self._merge_usage(message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "message_delta":
            self._merge_usage(event.get("usage"))
            stop_reason = (event.get("delta") or {}).get("stop_reason")
            return self._chunk({}, finish_reason_for(stop_reason) or "stop")
        if kind == "message_stop":
            self.finished = True
            if not self._include_usage:
                return DONE_FRAME
            usage_chunk = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": anthropic_usage_to_openai(self._usage),
            }
            return _data_frame(usage_chunk) + DONE_FRAME
        if kind == "error":
            self.finished = True
            error = event.get("error") or {}
            status = anthropic_status_for(str(error.get("type")))
            return _data_frame(anthropic_error_to_openai(status, event)[1])
        return b""  # ping, content_block_stop, and event types added later

    def done(self) -> bytes:
        """Anthropic streams have no ``[DONE]``: the frame was sent at ``message_stop``."""
        return b""

    def _merge_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            for name, value in usage.items():
                if value is not None:
                    self._usage[name] = value


class OpenAIToAnthropicStream:
    """OpenAI chunks in, Anthropic events (with their ``event:`` lines) out.

    ``message_start`` goes out with the first chunk; a content block opens for the text and for
    each tool call and closes before the next opens; ``message_delta`` (stop reason and usage)
    and ``message_stop`` go out once both the finish reason and the usage are known, or at
    ``data: [DONE]`` (:meth:`done`) when the upstream sent no usage. An error chunk becomes
    ``event: error``.
    """

    __slots__ = ("_block", "_blocks", "_id", "_model", "_open", "_started", "_stop_reason", "_usage", "finished")

    def __init__(self, *, model: str | None = None, message_id: str | None = None) -> None:
        self._model = model
        self._id = message_id
        self._started = False
        self._blocks = 0  # content blocks opened so far
        self._open: str | int | None = None  # "text", an OpenAI tool index, or None
        self._block: dict[int, int] = {}  # OpenAI tool index → Anthropic block index
        self._stop_reason: str | None = None
        self._usage: dict[str, Any] | None = None
        self.finished = False

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """The events for one OpenAI chunk (the JSON of one ``data:`` line other than ``[DONE]``)."""
        if self.finished:
            return b""
        error = chunk.get("error")
        if isinstance(error, dict):
            self.finished = True
            code = error.get("code")
            status = code if isinstance(code, int) else 500
            return _event_frame(b"error", openai_error_to_anthropic(status, chunk)[1])
        out = b"" if self._started else self._start(chunk)
        choices = chunk.get("choices") or ()
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._open != "text":
                    out += self._close() + self._open_block("text", {"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or ():
                out += self._tool_delta(call)
            if choice.get("finish_reason") is not None:
                out += self._close()
                self._stop_reason = stop_reason_for(choice["finish_reason"])
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = openai_usage_to_anthropic(usage)
        if self._stop_reason is not None and self._usage is not None:
            out += self._finish()
        return out

    def done(self) -> bytes:
        """The events for ``data: [DONE]``: whatever of ``message_delta`` and ``message_stop`` is still owed."""
        if self.finished:
            return b""
        out = b"" if self._started else self._start({})
        return out + self._close() + self._finish()

    def _start(self, chunk: dict[str, Any]) -> bytes:
        self._started = True
        self._id = self._id or chunk.get("id") or ""
        self._model = self._model or chunk.get("model")
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event_frame(b"message_start", {"type": "message_start", "message": message})

    def _open_block(self, which: str | int, block: dict[str, Any]) -> bytes:
        self._open = which
        index = self._blocks
        self._blocks += 1
        if isinstance(which, int):
            self._block[which] = index
        return _event_frame(
            b"content_block_start", {"type": "content_block_start", "index": index, "content_block": block}
        )

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        where = self._blocks - 1 if index is None else index
        return _event_frame(b"content_block_delta", {"type": "content_block_delta", "index": where, "delta": delta})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event_frame(b"content_block_stop", {"type": "content_block_stop", "index": self._blocks - 1})

    def _tool_delta(self, call: dict[str, Any]) -> bytes:
        tool = call.get("index", 0)
        function = call.get("function") or {}
        out = b""
        if tool not in self._block:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": {},
            }
            out += self._close() + self._open_block(tool, block)
        arguments = function.get("arguments")
        if arguments:
            out += self._delta({"type": "input_json_delta", "partial_json": arguments}, self._block[tool])
        return out

    def _finish(self) -> bytes:
        self.finished = True
        usage = self._usage or {"output_tokens": 0}
        message_delta = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_reason or "end_turn", "stop_sequence": None},
            "usage": usage,
        }
        return _event_frame(b"message_delta", message_delta) + _event_frame(b"message_stop", {"type": "message_stop"})
