"""Translation between OpenAI chat completions and Anthropic Messages, both ways: requests, responses, streams, errors.

Pure code: dicts in, dicts (or SSE bytes) out, no I/O and no clock. A request
parameter with no equivalent raises :class:`TranslationError` naming it, unless
the caller passes ``drop_unsupported=True``; then it is dropped and listed.
"""

from tollgate.upstream.translate.errors import (
    anthropic_error_to_openai,
    anthropic_status_for,
    openai_error_to_anthropic,
)
from tollgate.upstream.translate.requests import (
    TranslatedRequest,
    anthropic_request_to_openai,
    openai_request_to_anthropic,
)
from tollgate.upstream.translate.responses import anthropic_message_to_openai, openai_completion_to_anthropic
from tollgate.upstream.translate.streams import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from tollgate.upstream.translate.unsupported import TranslationError

__all__ = [
    "AnthropicToOpenAIStream",
    "OpenAIToAnthropicStream",
    "TranslatedRequest",
    "TranslationError",
    "anthropic_error_to_openai",
    "anthropic_message_to_openai",
    "anthropic_request_to_openai",
    "anthropic_status_for",
    "openai_completion_to_anthropic",
    "openai_error_to_anthropic",
    "openai_request_to_anthropic",
]
