"""What the mock generates: deterministic text, prompt token counts, completion lengths, tool arguments, the embedding vector."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson

from tollgate.mock.settings import MockSettings
from tollgate.token_estimate import estimate_tokens

__all__ = [
    "GeneratedText",
    "completion_length",
    "embedding_base64",
    "embedding_vector",
    "input_count",
    "prompt_tokens_chat",
    "prompt_tokens_inputs",
    "sample_arguments",
    "text_tokens",
]

_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "pack",
    "boxes",
    "of",
    "liquor",
    "jugs",
    "and",
    "every",
    "sphinx",
    "of",
    "black",
    "quartz",
    "judges",
    "my",
    "vow",
    "to",
    "keep",
    "the",
    "gateway",
    "fast",
]
_SAMPLE_VALUES: Mapping[str, Any] = MappingProxyType(
    {"string": "mock", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}, "null": None}
)
_PER_MESSAGE_TOKENS = 4
_REPLY_PRIMING_TOKENS = 3


class GeneratedText:
    """The deterministic generated text, prebuilt once: any prefix of N tokens is a slice."""

    __slots__ = ("text", "ends", "pieces")

    def __init__(self, cap: int) -> None:
        words = [_WORDS[i % len(_WORDS)] for i in range(cap)]
        self.pieces = tuple(w if i == 0 else " " + w for i, w in enumerate(words))
        self.text = "".join(self.pieces)
        ends = [0]
        for piece in self.pieces:
            ends.append(ends[-1] + len(piece))
        self.ends = tuple(ends)

    def prefix(self, tokens: int) -> str:
        return self.text[: self.ends[tokens]]

    def pieces_of(self, tokens: int, per_chunk: int) -> list[str]:
        """The text of each stream delta of a ``tokens``-long reply, ``per_chunk`` tokens each."""
        ends = self.ends
        return [self.text[ends[i] : ends[min(i + per_chunk, tokens)]] for i in range(0, tokens, per_chunk)]

    def deltas(self, tokens: int, per_chunk: int) -> list[bytes]:
        """The JSON-encoded content of each stream delta."""
        return [
            orjson.dumps(self.text[self.ends[i] : self.ends[min(i + per_chunk, tokens)]])
            for i in range(0, tokens, per_chunk)
        ]


def embedding_vector(dim: int) -> list[float]:
    """The one embedding the mock answers, of ``dim`` values."""
    return [round(math.sin(i * 0.7 + 1.0) / math.sqrt(dim / 2), 6) for i in range(dim)]


def embedding_base64(vector: list[float]) -> bytes:
    """``vector`` as ``encoding_format: base64`` answers it: little-endian float32s, base64, as a JSON string."""
    return orjson.dumps(base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode())


def text_tokens(text: str) -> int:
    """Tokens of a text as the mock counts them: about four characters a token, at least one."""
    return max(1, estimate_tokens(len(text)))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, {"type": "image_url", ...}]
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_tokens_chat(messages: list[Any]) -> int:
    total = _REPLY_PRIMING_TOKENS
    for message in messages:
        if isinstance(message, dict):
            total += _PER_MESSAGE_TOKENS + text_tokens(_content_text(message.get("content")))
    return total


def prompt_tokens_inputs(inputs: Any) -> int:
    """Prompt tokens of a completions ``prompt`` or embeddings ``input``: a string, token ids, or a list of either."""
    if isinstance(inputs, str):
        return text_tokens(inputs)
    if isinstance(inputs, list):
        if inputs and all(isinstance(x, int) for x in inputs):
            return len(inputs)
        return sum(prompt_tokens_inputs(x) for x in inputs) or 1
    return 1


def input_count(inputs: Any) -> int:
    if isinstance(inputs, list) and inputs and not all(isinstance(x, int) for x in inputs):
        return len(inputs)
    return 1


def completion_length(body: dict[str, Any], knobs: MockSettings, cap: int) -> tuple[int, str]:
    """How many tokens to generate, and the finish_reason that goes with it."""
    if knobs.completion_tokens is not None:
        return min(knobs.completion_tokens, cap), "stop"
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and limit >= 0:
        return min(limit, cap), "length"
    return min(knobs.default_tokens, cap), "stop"


def sample_arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a tool call: a value for each required property of a JSON schema (every property when none is required).

    The value is the property's first ``enum`` value, else one by type: ``"mock"``,
    ``1``, ``1.5``, ``true``, ``[]``, ``{}``.
    """
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return {}
    properties: dict[str, Any] = schema["properties"]
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else list(properties)
    sample: dict[str, Any] = {}
    for name in names:
        spec = properties.get(name)
        spec = spec if isinstance(spec, dict) else {}
        enum = spec.get("enum")
        if isinstance(enum, list) and enum:
            sample[name] = enum[0]
            continue
        kind = spec.get("type")
        kind = kind[0] if isinstance(kind, list) and kind else kind
        sample[name] = _SAMPLE_VALUES.get(kind, "mock") if isinstance(kind, str) else "mock"
    return sample
