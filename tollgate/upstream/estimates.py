"""Token estimates: what a request may cost before it runs, and what streamed text cost when no usage came back."""

from __future__ import annotations

from typing import Any, Final, TypeGuard

from tollgate.token_estimate import estimate_tokens

__all__ = [
    "completion_cap",
    "estimate_messages_tokens",
    "estimate_prompt_tokens",
    "requested_completion_tokens",
]

# Text is counted by tollgate.token_estimate; a message and the request add a few tokens of framing.
_PER_MESSAGE = 4
_PER_REQUEST = 3
# Image, audio and moderation requests reserve no completion tokens: what an image or a transcript costs in output
# comes back in the answer's usage, and speech and moderations have none.
_MEDIA_KINDS = frozenset({"image", "speech", "transcription", "moderation"})
# Those whose text is ``prompt`` (a transcription's: its optional text guide; its audio is known only from the
# answer's usage); speech and moderations have theirs in ``input``.
_MEDIA_PROMPTED = frozenset({"image", "transcription"})


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return estimate_tokens(len(content))
    if isinstance(content, list):  # multi-part content: count the text parts, a flat charge for others
        total = 0
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                total += estimate_tokens(len(text)) if isinstance(text, str) else 85
            elif isinstance(part, str):
                total += estimate_tokens(len(part))
        return total
    return 0


def _input_tokens(value: Any) -> int:
    """``prompt`` / ``input``: a string, a list of strings, a token array, or a list of token arrays."""
    if isinstance(value, str):
        return estimate_tokens(len(value))
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return len(value)
        return sum(_input_tokens(v) for v in value)
    if isinstance(value, dict):  # a moderation's part: its text counts (an image part: nothing)
        return _input_tokens(value.get("text"))
    return 0


def _block_tokens(blocks: Any) -> int:
    """An Anthropic ``system`` or message ``content``: a string, or blocks (text, tool use and results, images)."""
    if isinstance(blocks, str):
        return estimate_tokens(len(blocks))
    if not isinstance(blocks, list):
        return 0
    total = 0
    for block in blocks:
        if not isinstance(block, dict):
            continue
        text = block.get("text")
        if isinstance(text, str):
            total += estimate_tokens(len(text))
        elif "content" in block:  # tool_result
            total += _block_tokens(block["content"])
        elif "input" in block:  # tool_use: its arguments, as JSON
            total += estimate_tokens(len(str(block["input"])))
        else:  # an image or a document: a flat charge
            total += 85
    return total


def estimate_messages_tokens(body: dict[str, Any]) -> int:
    """The input tokens of an Anthropic Messages request: system, messages and tool definitions."""
    total = _PER_REQUEST + _block_tokens(body.get("system"))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                total += _PER_MESSAGE + _block_tokens(message.get("content"))
    tools = body.get("tools")
    if isinstance(tools, list):
        total += estimate_tokens(len(str(tools)))
    return total


def _responses_tokens(body: dict[str, Any]) -> int:
    """A Responses API request: its ``instructions`` and ``input`` (a string, or items: messages, tool calls and outputs)."""
    total = _PER_REQUEST + _content_tokens(body.get("instructions"))
    items = body.get("input")
    if isinstance(items, str):
        return total + _PER_MESSAGE + estimate_tokens(len(items))
    if isinstance(items, list):
        for item in items:
            if not isinstance(item, dict):
                continue
            total += _PER_MESSAGE
            if "content" in item:
                total += _content_tokens(item["content"])
            else:  # a function call's arguments, a tool's output
                for name in ("arguments", "output"):
                    text = item.get(name)
                    if isinstance(text, str):
                        total += estimate_tokens(len(text))
    return total


def estimate_prompt_tokens(kind: str, body: dict[str, Any]) -> int:
    """The prompt tokens a request will spend (none for a ``count_tokens`` request: it only asks)."""
    if kind == "messages":
        return estimate_messages_tokens(body)
    if kind == "count_tokens":
        return 0
    if kind == "responses":
        return _responses_tokens(body)
    if kind == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list):
            return _PER_REQUEST
        total = _PER_REQUEST
        for message in messages:
            if isinstance(message, dict):
                total += _PER_MESSAGE + _content_tokens(message.get("content"))
        return total
    if kind == "completion":
        return max(1, _input_tokens(body.get("prompt")))
    if kind in _MEDIA_PROMPTED:
        return max(1, _input_tokens(body.get("prompt")))
    return max(1, _input_tokens(body.get("input")))


def requested_completion_tokens(kind: str, body: dict[str, Any], default_cap: int) -> int:
    """The most completion tokens the request may produce: its own cap, else the configured default."""
    if kind == "embedding" or kind == "count_tokens":
        return 0
    if kind in _MEDIA_KINDS:
        return 0
    for name in _CAP_FIELDS:
        value = body.get(name)
        if _count(value):
            return value * _choices(body)
    return default_cap


def completion_cap(body: dict[str, Any]) -> int:
    """The most completion tokens the request's own cap lets the model produce (its provider stops the output
    there), or 0 when it names none. Where it names more than one cap, the largest counts: whichever the provider
    reads, the output stays under it."""
    cap = 0
    for name in _CAP_FIELDS:
        value = body.get(name)
        if _count(value) and value > cap:
            cap = value
    return cap * _choices(body)


_CAP_FIELDS: Final = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def _count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _choices(body: dict[str, Any]) -> int:
    """The answers asked for (``n``), each held to the cap."""
    n = body.get("n")
    return n if _count(n) else 1
