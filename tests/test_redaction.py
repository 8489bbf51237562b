"""Credentials taken out of upstream text before a tenant reads it; ordinary words left alone."""

from __future__ import annotations

import orjson
import pytest

from tollgate.upstream.redaction import redact, secrets_of


@pytest.mark.parametrize(
    "credential",
    [
        "sk-proj-AbCdEf0123456789xyz",
        "sk-ant-api03-AbCdEf0123456789",
        "sk-abc1*****************wxyz",  # as a provider masks it
        "AIzaSyA1234567890abcdefghijklmnopqrs",
    ],
)
def test_anything_shaped_like_a_key_is_redacted_and_the_json_stays_json(credential: str) -> None:
    body = orjson.dumps(
        {"error": {"message": f"Incorrect API key provided: {credential}.", "type": "invalid_request_error"}}
    )
    out = redact(body)
    assert orjson.loads(out)["error"]["message"] == "Incorrect API key provided: [redacted]."


def test_a_bearer_token_loses_its_value_not_its_scheme() -> None:
    assert redact(b"you sent 'Authorization: Bearer abc.def-ghi_jkl'") == b"you sent 'Authorization: Bearer [redacted]'"


def test_the_upstreams_own_secrets_are_redacted_whatever_their_shape_and_only_those_with_shapes_false() -> None:
    secrets = secrets_of(
        "plain-hex-0123456789abcdef", [("X-Org-Token", "tok_0123456789"), ("OpenAI-Organization", "org-visible-123")]
    )
    assert secrets == (b"plain-hex-0123456789abcdef", b"tok_0123456789")
    text = b"key plain-hex-0123456789abcdef, token tok_0123456789, org org-visible-123, masked sk-abc****wxyz"
    assert redact(text, secrets) == b"key [redacted], token [redacted], org org-visible-123, masked [redacted]"
    assert (
        redact(text, secrets, shapes=False)
        == b"key [redacted], token [redacted], org org-visible-123, masked sk-abc****wxyz"
    )


def test_ordinary_words_and_short_secrets_are_left_alone() -> None:
    text = b"a risk-free desk-top task-oriented Bearer of news; value 1234"
    assert redact(text, secrets_of("1234", [])) == text
