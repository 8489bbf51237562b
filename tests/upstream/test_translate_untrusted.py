"""A client's request body is untrusted: any JSON shape is either translated or refused with a 400, never a crash."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate.errors import BadRequest
from tollgate.upstream.translate import anthropic_request_to_openai, openai_request_to_anthropic

# Field names and values of both dialects, so the generated bodies reach deep into the translators.
KEYS = st.sampled_from(
    [
        "role", "content", "type", "text", "tool_calls", "function", "arguments", "name", "id", "tool_call_id",
        "image_url", "url", "source", "data", "media_type", "tool_use_id", "input", "is_error", "system",
        "messages", "tools", "tool_choice", "stop", "stop_sequences", "metadata", "user", "max_tokens",
        "parameters", "input_schema", "detail", "disable_parallel_tool_use", "temperature", "cache_control",
    ]
)  # fmt: skip
WORDS = st.sampled_from(
    [
        "user", "assistant", "tool", "system", "developer", "text", "image_url", "image", "tool_use",
        "tool_result", "function", "auto", "any", "none", "required", "base64", "url",
        "data:image/png;base64,AA", "data:text/plain,x", "{}", "{bad", "x",
    ]
)  # fmt: skip
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.floats(0, 3) | WORDS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, JSON, max_size=6))
def test_any_request_body_is_translated_or_refused_with_a_bad_request(body: dict[str, Any]) -> None:
    body = {"model": "m", **body}
    for drop in (False, True):
        _translated_or_refused(
            lambda d=drop: openai_request_to_anthropic(body, default_max_tokens=16, drop_unsupported=d)
        )
        _translated_or_refused(lambda d=drop: anthropic_request_to_openai(body, drop_unsupported=d))


def _translated_or_refused(translate: Any) -> None:
    try:
        translate()
    except BadRequest as refused:
        assert refused.http_status == 400
