"""Request bodies: OpenAI chat completion request ↔ Anthropic Messages request.

Each direction keeps a list of the parameters it knows; anything else is
refused (or dropped and listed, with ``drop_unsupported``) through
:class:`~tollgate.upstream.translate.unsupported.Unsupported`, so nothing a
client asked for is lost without anyone saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from tollgate.errors import BadRequest
from tollgate.upstream.translate.unsupported import TranslationError, Unsupported

__all__ = ["TranslatedRequest", "anthropic_request_to_openai", "openai_request_to_anthropic"]

_ANTHROPIC = "Anthropic Messages"
_OPENAI = "OpenAI chat completions"
_MAX_ANTHROPIC_TEMPERATURE = 1.0
_DATA_URL_PREFIX = "data:"
_BASE64_MARK = ";base64,"


@dataclass(slots=True)
class TranslatedRequest:
    """A translated request body and the parameters dropped on the way (empty unless dropping was allowed)."""

    body: dict[str, Any]
    dropped: list[str] = field(default_factory=list)


# --- OpenAI → Anthropic -------------------------------------------------------------------------

# Parameters whose value changes nothing when it is the default: accepted at that value only.
_OPENAI_NEUTRAL: dict[str, object] = {"n": 1, "response_format": {"type": "text"}}
_OPENAI_HANDLED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "n",
        "response_format",
    }
)


def openai_request_to_anthropic(
    body: dict[str, Any], *, default_max_tokens: int | None, drop_unsupported: bool = False
) -> TranslatedRequest:
    """An Anthropic Messages request for an OpenAI chat completion request.

    ``max_tokens`` is required by Anthropic: it comes from ``max_completion_tokens`` or
    ``max_tokens``, else from ``default_max_tokens`` (the model's default); with neither the
    request is refused. System and developer messages, wherever they stand, become ``system``
    (a string for one string message, else text blocks). ``stream_options`` is not sent: Anthropic streams always carry usage,
    and the stream translator is told whether the client asked for it.
    """
    unsupported = Unsupported(drop_unsupported)
    for name, value in body.items():
        neutral = _OPENAI_NEUTRAL.get(name, value)
        if name not in _OPENAI_HANDLED or (value is not None and value != neutral):
            unsupported.refuse(name, _ANTHROPIC)

    out: dict[str, Any] = {"model": body.get("model")}
    system, messages = _openai_messages_to_anthropic(_require_list(body, "messages"), unsupported)
    if system is not None:
        out["system"] = system
    out["messages"] = messages

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens is None:
        raise BadRequest(
            "'max_tokens' is required by the Anthropic Messages API and this model has no default",
            param="max_tokens",
        )
    out["max_tokens"] = max_tokens

    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, int | float) and temperature > _MAX_ANTHROPIC_TEMPERATURE:
            if not drop_unsupported:
                raise TranslationError(
                    f"'temperature' {temperature} is above the Anthropic Messages API's maximum of 1",
                    param="temperature",
                )
            unsupported.dropped.append("temperature")
        else:
            out["temperature"] = temperature
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(_items(stop, "stop"))
    if body.get("stream") is not None:
        out["stream"] = body["stream"]
    if body.get("user") is not None:
        out["metadata"] = {"user_id": body["user"]}

    tools = body.get("tools")
    if tools is not None:
        out["tools"] = [
            _openai_tool_to_anthropic(i, tool, unsupported) for i, tool in enumerate(_items(tools, "tools"))
        ]
    tool_choice = _openai_tool_choice_to_anthropic(body.get("tool_choice"))
    if body.get("parallel_tool_calls") is False:
        tool_choice = tool_choice or {"type": "auto"}
        tool_choice["disable_parallel_tool_use"] = True
    if tool_choice is not None:
        out["tool_choice"] = tool_choice
    return TranslatedRequest(out, unsupported.dropped)


def _require_list(body: dict[str, Any], name: str) -> list[Any]:
    return _items(body.get(name), name)


def _items(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise BadRequest(f"{where!r} must be a list", param=where)
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where!r} must be an object", param=where)
    return value


def _openai_messages_to_anthropic(
    messages: list[Any], unsupported: Unsupported
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    system_blocks: list[dict[str, Any]] = []
    system_strings = 0
    out: list[dict[str, Any]] = []
    # The open user turn that tool results (and a user message right after them) merge into.
    tool_turn: list[dict[str, Any]] | None = None
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        role = message.get("role")
        for key in message:
            if key not in ("role", "content", "tool_calls", "tool_call_id", "refusal") or (
                key == "refusal" and message[key] is not None
            ):
                unsupported.refuse(f"{where}.{key}", _ANTHROPIC)
        content = message.get("content")
        if role in ("system", "developer"):
            if isinstance(content, str):
                system_strings += 1
                system_blocks.append({"type": "text", "text": content})
            else:
                system_blocks.extend(_openai_parts_to_blocks(content, where, unsupported, text_only=True))
            tool_turn = None
        elif role == "tool":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
            if isinstance(content, str):
                result["content"] = content
            else:
                result["content"] = _openai_parts_to_blocks(content, where, unsupported, text_only=True)
            if tool_turn is None:
                tool_turn = []
                out.append({"role": "user", "content": tool_turn})
            tool_turn.append(result)
        elif role == "user":
            if isinstance(content, str):
                blocks: str | list[dict[str, Any]] = content
            else:
                blocks = _openai_parts_to_blocks(content, where, unsupported, text_only=False)
            if tool_turn is not None:
                tool_turn.extend([{"type": "text", "text": blocks}] if isinstance(blocks, str) else blocks)
                tool_turn = None
            else:
                out.append({"role": "user", "content": blocks})
        elif role == "assistant":
            out.append({"role": "assistant", "content": _openai_assistant_to_anthropic(message, where, unsupported)})
            tool_turn = None
        else:
            raise BadRequest(f"{where}.role {role!r} is not a chat role", param=f"{where}.role")
    if not system_blocks:
        return None, out
    if system_strings == 1 and len(system_blocks) == 1:
        return system_blocks[0]["text"], out
    return system_blocks, out


def _openai_parts_to_blocks(
    parts: Any, where: str, unsupported: Unsupported, *, text_only: bool
) -> list[dict[str, Any]]:
    if parts is None:
        return []
    if not isinstance(parts, list):
        raise BadRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(parts):
        kind = _object(part, f"{where}.content[{j}]").get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url" and not text_only:
            image = part.get("image_url")
            if isinstance(image, dict) and image.get("detail") not in (None, "auto"):
                unsupported.refuse(f"{where}.content[{j}].image_url.detail", _ANTHROPIC)
            blocks.append(_image_block(image, f"{where}.content[{j}]"))
        else:
            unsupported.refuse(f"{where}.content[{j}].{kind}", _ANTHROPIC)
    return blocks


def _image_block(image: Any, where: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str):
        raise BadRequest(f"{where}.image_url.url must be a string", param=f"{where}.image_url")
    if url.startswith(_DATA_URL_PREFIX):
        head, mark, data = url[len(_DATA_URL_PREFIX) :].partition(_BASE64_MARK)
        if not mark:
            raise BadRequest(f"{where}: only base64 data URLs can be sent as images", param=f"{where}.image_url")
        return {"type": "image", "source": {"type": "base64", "media_type": head, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _openai_assistant_to_anthropic(
    message: dict[str, Any], where: str, unsupported: Unsupported
) -> str | list[dict[str, Any]]:
    content = message.get("content")
    tool_calls = _items(message.get("tool_calls") or [], f"{where}.tool_calls")
    if isinstance(content, str) and not tool_calls:
        return content
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    else:
        blocks.extend(_openai_parts_to_blocks(content, where, unsupported, text_only=True))
    for k, call in enumerate(tool_calls):
        call = _object(call, f"{where}.tool_calls[{k}]")
        function = _object(call.get("function") or {}, f"{where}.tool_calls[{k}].function")
        arguments = function.get("arguments") or "{}"
        if not isinstance(arguments, str):
            raise BadRequest(
                f"{where}.tool_calls[{k}].function.arguments must be a string", param=f"{where}.tool_calls[{k}]"
            )
        try:
            arguments_value = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            raise BadRequest(
                f"{where}.tool_calls[{k}].function.arguments is not JSON", param=f"{where}.tool_calls[{k}]"
            ) from None
        blocks.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments_value}
        )
    return blocks


def _openai_tool_to_anthropic(i: int, tool: Any, unsupported: Unsupported) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise BadRequest(f"{where}.type {kind!r} has no equivalent in the {_ANTHROPIC} API", param=where)
    function = _object(tool.get("function") or {}, f"{where}.function")
    out: dict[str, Any] = {"name": function.get("name")}
    if function.get("description") is not None:
        out["description"] = function["description"]
    out["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    if function.get("strict"):
        unsupported.refuse(f"{where}.function.strict", _ANTHROPIC)
    return out


def _openai_tool_choice_to_anthropic(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice == "auto":
        return {"type": "auto"}
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": _object(choice.get("function") or {}, "tool_choice.function").get("name")}
    raise BadRequest(f"'tool_choice' {choice!r} is not a known choice", param="tool_choice")


# --- Anthropic → OpenAI -------------------------------------------------------------------------

_ANTHROPIC_HANDLED = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
        "metadata",
    }
)


def anthropic_request_to_openai(
    body: dict[str, Any], *, drop_unsupported: bool = False, max_tokens_field: str = "max_tokens"
) -> TranslatedRequest:
    """An OpenAI chat completion request for an Anthropic Messages request.

    ``max_tokens_field`` names where the limit goes (``max_tokens``, which every OpenAI-compatible
    server reads, or ``max_completion_tokens``). A stream asks for usage in its last chunk, so the
    stream translator can report it in ``message_delta``.
    """
    unsupported = Unsupported(drop_unsupported)
    for name in body:
        if name not in _ANTHROPIC_HANDLED:
            unsupported.refuse(name, _OPENAI)

    out: dict[str, Any] = {"model": body.get("model")}
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str):
        messages.append({"role": "system", "content": system})
    elif system is not None:
        messages.append({"role": "system", "content": _anthropic_blocks_to_parts(system, "system", unsupported)})
    for i, message in enumerate(_require_list(body, "messages")):
        messages.extend(_anthropic_message_to_openai(message, f"messages[{i}]", unsupported))
    out["messages"] = messages
    if body.get("max_tokens") is not None:
        out[max_tokens_field] = body["max_tokens"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stop_sequences") is not None:
        out["stop"] = list(_items(body["stop_sequences"], "stop_sequences"))
    if body.get("stream") is not None:
        out["stream"] = body["stream"]
        if body["stream"]:
            out["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None:
        for key, value in _object(metadata, "metadata").items():
            if key == "user_id":
                if value is not None:
                    out["user"] = value
            else:
                unsupported.refuse(f"metadata.{key}", _OPENAI)

    tools = body.get("tools")
    if tools is not None:
        out["tools"] = [
            _anthropic_tool_to_openai(i, tool, unsupported) for i, tool in enumerate(_items(tools, "tools"))
        ]
    choice = body.get("tool_choice")
    if choice is not None:
        out["tool_choice"] = _anthropic_tool_choice_to_openai(choice)
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return TranslatedRequest(out, unsupported.dropped)


def _anthropic_blocks_to_parts(blocks: Any, where: str, unsupported: Unsupported) -> list[dict[str, Any]]:
    if not isinstance(blocks, list):
        raise BadRequest(f"{where} must be a string or a list of blocks", param=where)
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        here = f"{where}[{j}]" if where == "system" else f"{where}.content[{j}]"
        block = _object(block, here)
        _cache_hint(block, here, unsupported)
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append(
                {"type": "image_url", "image_url": {"url": _image_url(_object(block.get("source") or {}, here), here)}}
            )
        else:
            unsupported.refuse(f"{here}.{kind}", _OPENAI)
    return parts


def _cache_hint(block: dict[str, Any], where: str, unsupported: Unsupported) -> None:
    if block.get("cache_control") is not None:
        unsupported.hint(f"{where}.cache_control")


def _image_url(source: dict[str, Any], where: str) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if source.get("type") == "url":
        return str(source.get("url"))
    raise BadRequest(
        f"{where}: image source {source.get('type')!r} has no equivalent in the {_OPENAI} API", param=where
    )


def _anthropic_message_to_openai(message: Any, where: str, unsupported: Unsupported) -> list[dict[str, Any]]:
    if not isinstance(message, dict):
        raise BadRequest(f"{where} must be an object", param=where)
    role = message.get("role")
    content = message.get("content")
    if role not in ("user", "assistant"):
        raise BadRequest(f"{where}.role {role!r} is not a Messages role", param=f"{where}.role")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or a list of blocks", param=f"{where}.content")
    if role == "assistant":
        return [_anthropic_assistant_to_openai(content, where, unsupported)]
    # A user turn: its tool results become tool messages (first, as OpenAI wants them right after
    # the assistant's calls), the rest one user message.
    out: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        block = _object(block, f"{where}.content[{j}]")
        if block.get("type") == "tool_result":
            out.append(_tool_result_to_openai(block, f"{where}.content[{j}]", unsupported))
        else:
            rest.append(block)
    if rest or not out:
        out.append({"role": "user", "content": _anthropic_blocks_to_parts(rest, where, unsupported)})
    return out


def _tool_result_to_openai(block: dict[str, Any], where: str, unsupported: Unsupported) -> dict[str, Any]:
    _cache_hint(block, where, unsupported)
    if block.get("is_error"):
        unsupported.refuse(f"{where}.is_error", _OPENAI)
    content = block.get("content")
    if content is None:
        content = ""
    elif not isinstance(content, str):
        parts = _anthropic_blocks_to_parts(content, where, unsupported)
        for k, part in enumerate(parts):
            if part["type"] != "text":
                unsupported.refuse(f"{where}.content[{k}].{part['type']}", _OPENAI)
        content = [part for part in parts if part["type"] == "text"]
    return {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content}


def _anthropic_assistant_to_openai(blocks: list[Any], where: str, unsupported: Unsupported) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        here = f"{where}.content[{j}]"
        block = _object(block, here)
        _cache_hint(block, here, unsupported)
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        else:
            unsupported.refuse(f"{here}.{kind}", _OPENAI)
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    return out


def _anthropic_tool_to_openai(i: int, tool: Any, unsupported: Unsupported) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "custom") != "custom":
        kind = tool.get("type") if isinstance(tool, dict) else None
        raise BadRequest(f"{where}: tool type {kind!r} has no equivalent in the {_OPENAI} API", param=where)
    _cache_hint(tool, where, unsupported)
    function: dict[str, Any] = {"name": tool.get("name")}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    function["parameters"] = tool.get("input_schema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _anthropic_tool_choice_to_openai(choice: Any) -> str | dict[str, Any]:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind == "auto":
        return "auto"
    if kind == "none":
        return "none"
    if kind == "any":
        return "required"
    if kind == "tool":
        return {"type": "function", "function": {"name": choice.get("name")}}
    raise BadRequest(f"'tool_choice' {choice!r} is not a known choice", param="tool_choice")
