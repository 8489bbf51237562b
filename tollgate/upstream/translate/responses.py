"""Whole (non-streamed) answers: Anthropic message ↔ OpenAI chat completion."""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.upstream.translate.vocabulary import (
    anthropic_usage_to_openai,
    finish_reason_for,
    openai_usage_to_anthropic,
    stop_reason_for,
)

__all__ = ["anthropic_message_to_openai", "openai_completion_to_anthropic"]


def anthropic_message_to_openai(message: dict[str, Any], *, created: int) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` for an Anthropic message; ``created`` is the caller's clock, in seconds.

    Text blocks are joined into ``content``; each ``tool_use`` block becomes a tool call whose
    ``arguments`` are its ``input`` encoded as JSON. Blocks OpenAI has no place for (thinking) are left out.
    """
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    out: dict[str, Any] = {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": finish_reason_for(message.get("stop_reason")),
                "logprobs": None,
            }
        ],
    }
    usage = message.get("usage")
    if isinstance(usage, dict):
        out["usage"] = anthropic_usage_to_openai(usage)
    return out


def openai_completion_to_anthropic(completion: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic message for an OpenAI ``chat.completion`` (its first choice: a translated request asks for one).

    OpenAI does not say which stop sequence ended the text, so ``stop_sequence`` stays null and
    the stop reason is ``end_turn``. A refusal comes back as text with the stop reason ``refusal``.
    """
    choices = completion.get("choices") or [{}]
    choice = choices[0]
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    text = reply.get("content")
    if isinstance(text, list):
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    if text:
        content.append({"type": "text", "text": text})
    refusal = reply.get("refusal")
    if refusal:
        content.append({"type": "text", "text": refusal})
    for call in reply.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            # A model can end mid-arguments (finish_reason length): keep what it wrote, under one key.
            arguments = {"_raw_arguments": function.get("arguments")}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    usage = completion.get("usage")
    return {
        "id": completion.get("id"),
        "type": "message",
        "role": "assistant",
        "model": completion.get("model"),
        "content": content,
        "stop_reason": "refusal" if refusal else stop_reason_for(choice.get("finish_reason")),
        "stop_sequence": None,
        "usage": openai_usage_to_anthropic(usage if isinstance(usage, dict) else {}),
    }
