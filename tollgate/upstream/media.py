"""What an image, audio or moderation answer used: its reported tokens where it has them, else the request's estimate.

gpt-image answers and gpt-4o transcriptions (``json`` format) report ``usage``
in ``input_tokens`` and ``output_tokens``; dall-e images, whisper
transcriptions, speech (the answer is audio, never parsed) and moderations
report none, and are counted at the prompt the request carried, with no
completion (tollgate/upstream/estimates.py).
"""

from __future__ import annotations

from typing import Any

import orjson

from tollgate.upstream.estimates import estimate_prompt_tokens
from tollgate.upstream.usage import Usage, usage_from_io_tokens

__all__ = ["MEDIA_KINDS", "media_usage"]

MEDIA_KINDS = frozenset({"image", "speech", "transcription", "moderation"})
"""The endpoint kinds whose usage :func:`media_usage` reads."""

# The kinds whose JSON answers may carry input/output token usage.
_REPORTING = frozenset({"image", "transcription"})


def media_usage(kind: str, body: dict[str, Any], data: bytes, content_type: str) -> Usage:
    """The usage of a successful answer of ``kind``: as reported, else estimated from the request ``body``."""
    if kind in _REPORTING and content_type.startswith("application/json"):
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            found = usage_from_io_tokens(doc.get("usage"))
            if found is not None:
                return found
    return Usage(estimate_prompt_tokens(kind, body), 0)
