"""The words both dialects share under different names: stop reasons and token usage."""

from __future__ import annotations

from typing import Any

__all__ = [
    "anthropic_usage_to_openai",
    "finish_reason_for",
    "openai_usage_to_anthropic",
    "stop_reason_for",
]

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def finish_reason_for(stop_reason: str | None) -> str | None:
    """OpenAI's ``finish_reason`` for an Anthropic ``stop_reason`` (an unknown one ends as ``stop``)."""
    if stop_reason is None:
        return None
    return _FINISH_REASONS.get(stop_reason, "stop")


def stop_reason_for(finish_reason: str | None) -> str | None:
    """Anthropic's ``stop_reason`` for an OpenAI ``finish_reason`` (an unknown one ends as ``end_turn``)."""
    if finish_reason is None:
        return None
    return _STOP_REASONS.get(finish_reason, "end_turn")


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) else 0


def anthropic_usage_to_openai(usage: dict[str, Any]) -> dict[str, Any]:
    """OpenAI usage from Anthropic's, cache reads and cache writes kept apart so each is billed at its own price.

    Anthropic's ``input_tokens`` leave out both kinds of cached tokens; OpenAI's ``prompt_tokens``
    count them all, with the reads in ``prompt_tokens_details.cached_tokens``. The writes have no
    OpenAI field: they go in ``prompt_tokens_details.cache_creation_tokens``.
    """
    read = _count(usage, "cache_read_input_tokens")
    created = _count(usage, "cache_creation_input_tokens")
    prompt = _count(usage, "input_tokens") + read + created
    completion = _count(usage, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": created},
    }


def openai_usage_to_anthropic(usage: dict[str, Any]) -> dict[str, Any]:
    """Anthropic usage from OpenAI's: the inverse of :func:`anthropic_usage_to_openai`."""
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    read = _count(details, "cached_tokens")
    created = _count(details, "cache_creation_tokens")
    return {
        "input_tokens": max(_count(usage, "prompt_tokens") - read - created, 0),
        "output_tokens": _count(usage, "completion_tokens"),
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    }
