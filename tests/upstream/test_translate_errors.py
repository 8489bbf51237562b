"""Error answers translated both ways: Anthropic's error types and statuses against OpenAI's vocabulary."""

from __future__ import annotations

from typing import Any

import pytest

from tests.upstream.translate_fixtures import case_ids, load
from tollgate.upstream.translate import anthropic_error_to_openai, anthropic_status_for, openai_error_to_anthropic

TABLE = load("errors.json")


@pytest.mark.parametrize("case", TABLE, ids=case_ids(TABLE))
def test_anthropic_error_becomes_the_openai_error_of_the_table(case: dict[str, Any]) -> None:
    status, body = case["anthropic"]
    assert list(anthropic_error_to_openai(status, body)) == case["openai"]


@pytest.mark.parametrize("case", TABLE, ids=case_ids(TABLE))
def test_openai_error_becomes_the_anthropic_error_of_the_table(case: dict[str, Any]) -> None:
    status, body = case["openai"]
    assert list(openai_error_to_anthropic(status, body)) == case["anthropic"]


@pytest.mark.parametrize("case", TABLE, ids=case_ids(TABLE))
def test_anthropic_status_for_each_type_is_the_documented_one(case: dict[str, Any]) -> None:
    status, body = case["anthropic"]
    assert anthropic_status_for(body["error"]["type"]) == status


def test_a_body_in_neither_shape_keeps_its_status_and_gets_a_message() -> None:
    assert anthropic_error_to_openai(502, b"<html>bad gateway</html>") == (
        502,
        {"error": {"message": "upstream answered 502", "type": "server_error", "code": None, "param": None}},
    )
    assert openai_error_to_anthropic(418, {"detail": "teapot"}) == (
        418,
        {"type": "error", "error": {"type": "invalid_request_error", "message": "upstream answered 418"}},
    )
    assert openai_error_to_anthropic(502, None) == (
        502,
        {"type": "error", "error": {"type": "api_error", "message": "upstream answered 502"}},
    )


def test_an_undocumented_anthropic_type_keeps_the_upstream_status() -> None:
    body = {"type": "error", "error": {"type": "brand_new_error", "message": "what"}}
    status, translated = anthropic_error_to_openai(409, body)
    assert status == 409 and translated["error"]["type"] == "invalid_request_error"
    assert anthropic_status_for("brand_new_error") == 500
