"""Whole answers translated both ways: the fixture table, round trips, and validation by both official SDKs' models."""

from __future__ import annotations

from typing import Any

import anthropic.types
import openai.types.chat
import pytest

from tests.upstream.translate_fixtures import case_ids, load
from tollgate.upstream.translate import anthropic_message_to_openai, openai_completion_to_anthropic

TABLE = load("responses.json")
TO_OPENAI = TABLE["anthropic_to_openai"]
TO_ANTHROPIC = TABLE["openai_to_anthropic"]
CREATED = 1700000000


@pytest.mark.parametrize("case", TO_OPENAI, ids=case_ids(TO_OPENAI))
def test_anthropic_message_becomes_the_openai_completion_of_the_table(case: dict[str, Any]) -> None:
    completion = anthropic_message_to_openai(case["anthropic"], created=CREATED)
    assert completion == case["openai"]
    openai.types.chat.ChatCompletion.model_validate(completion)


@pytest.mark.parametrize("case", TO_ANTHROPIC, ids=case_ids(TO_ANTHROPIC))
def test_openai_completion_becomes_the_anthropic_message_of_the_table(case: dict[str, Any]) -> None:
    message = openai_completion_to_anthropic(case["openai"])
    assert message == case["anthropic"]
    anthropic.types.Message.model_validate(message)


ROUND_TRIPS = [case for case in TO_OPENAI + TO_ANTHROPIC if case["round_trip"]]


@pytest.mark.parametrize("case", ROUND_TRIPS, ids=case_ids(ROUND_TRIPS))
def test_response_round_trips_exactly_both_ways(case: dict[str, Any]) -> None:
    assert (
        openai_completion_to_anthropic(anthropic_message_to_openai(case["anthropic"], created=CREATED))
        == case["anthropic"]
    )
    assert (
        anthropic_message_to_openai(openai_completion_to_anthropic(case["openai"]), created=CREATED) == case["openai"]
    )


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        (None, None),
    ],
)
def test_stop_reason_maps_to_finish_reason(stop_reason: str | None, finish_reason: str | None) -> None:
    message = {"id": "m", "model": "x", "content": [], "stop_reason": stop_reason, "usage": {}}
    assert anthropic_message_to_openai(message, created=0)["choices"][0]["finish_reason"] == finish_reason


def test_cache_tokens_stay_separate_numbers_through_both_directions() -> None:
    usage = {"input_tokens": 7, "output_tokens": 3, "cache_creation_input_tokens": 500, "cache_read_input_tokens": 4000}
    message = {"id": "m", "model": "x", "content": [], "stop_reason": "end_turn", "usage": usage}
    openai_usage = anthropic_message_to_openai(message, created=0)["usage"]
    assert openai_usage["prompt_tokens"] == 4507
    assert openai_usage["prompt_tokens_details"] == {"cached_tokens": 4000, "cache_creation_tokens": 500}
    back = openai_completion_to_anthropic({"choices": [{"message": {"content": ""}}], "usage": openai_usage})["usage"]
    assert back == usage


def test_truncated_tool_arguments_are_kept_rather_than_lost() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": '}}
    completion = {"id": "x", "model": "m", "choices": [{"message": {"tool_calls": [call]}, "finish_reason": "length"}]}
    block = openai_completion_to_anthropic(completion)["content"][0]
    assert block == {"type": "tool_use", "id": "c", "name": "f", "input": {"_raw_arguments": '{"a": '}}
