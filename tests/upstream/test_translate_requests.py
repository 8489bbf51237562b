"""Request bodies translated both ways: the fixture table, round trips, and what has no equivalent."""

from __future__ import annotations

from typing import Any

import pytest

from tests.upstream.translate_fixtures import case_ids, load
from tollgate.errors import BadRequest
from tollgate.upstream.translate import TranslationError, anthropic_request_to_openai, openai_request_to_anthropic

TABLE = load("requests.json")
TO_ANTHROPIC = TABLE["openai_to_anthropic"]
TO_OPENAI = TABLE["anthropic_to_openai"]


def _to_anthropic(body: dict[str, Any], **options: Any) -> dict[str, Any]:
    return openai_request_to_anthropic(body, default_max_tokens=options.pop("default_max_tokens", None), **options).body


@pytest.mark.parametrize("case", TO_ANTHROPIC, ids=case_ids(TO_ANTHROPIC))
def test_openai_request_becomes_the_anthropic_request_of_the_table(case: dict[str, Any]) -> None:
    translated = openai_request_to_anthropic(case["openai"], default_max_tokens=case.get("default_max_tokens"))
    assert translated.body == case["anthropic"]
    assert translated.dropped == []


@pytest.mark.parametrize("case", TO_OPENAI, ids=case_ids(TO_OPENAI))
def test_anthropic_request_becomes_the_openai_request_of_the_table(case: dict[str, Any]) -> None:
    translated = anthropic_request_to_openai(case["anthropic"])
    assert translated.body == case["openai"]
    assert translated.dropped == []


ROUND_TRIPS = [case for case in TO_ANTHROPIC + TO_OPENAI if case["round_trip"]]


@pytest.mark.parametrize("case", ROUND_TRIPS, ids=case_ids(ROUND_TRIPS))
def test_request_round_trips_exactly_both_ways(case: dict[str, Any]) -> None:
    assert anthropic_request_to_openai(_to_anthropic(case["openai"])).body == case["openai"]
    assert _to_anthropic(anthropic_request_to_openai(case["anthropic"]).body) == case["anthropic"]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, {"type": "tool", "name": "f"}),
    ],
)
def test_tool_choice_maps_each_openai_form_and_back(choice: Any, expected: dict[str, Any]) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "tool_choice": choice}
    translated = _to_anthropic(body)
    assert translated["tool_choice"] == expected
    assert anthropic_request_to_openai(translated).body["tool_choice"] == choice


BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"seed": 7}, "seed"),
        ({"n": 2}, "n"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}
                ]
            },
            "messages[0].content[0].input_audio",
        ),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages[0].name"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}],
                    }
                ]
            },
            "messages[0].content[0].image_url.detail",
        ),
    ],
)
def test_openai_parameter_without_equivalent_is_refused_by_name_or_dropped_and_listed(
    extra: dict[str, Any], param: str
) -> None:
    body = {**BASE, **extra}
    with pytest.raises(TranslationError) as refused:
        openai_request_to_anthropic(body, default_max_tokens=None)
    assert refused.value.param == param
    assert refused.value.http_status == 400
    assert param in refused.value.message

    translated = openai_request_to_anthropic(body, default_max_tokens=None, drop_unsupported=True)
    assert translated.dropped == [param]
    assert "logprobs" not in translated.body and "seed" not in translated.body


def test_openai_neutral_values_of_unsupported_parameters_are_accepted() -> None:
    body = {**BASE, "n": 1, "response_format": {"type": "text"}, "parallel_tool_calls": True, "stream_options": None}
    translated = openai_request_to_anthropic(body, default_max_tokens=None)
    assert translated.dropped == []
    assert translated.body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def test_openai_temperature_above_anthropics_range_is_refused_or_dropped() -> None:
    body = {**BASE, "temperature": 1.5}
    with pytest.raises(TranslationError) as refused:
        openai_request_to_anthropic(body, default_max_tokens=None)
    assert refused.value.param == "temperature"
    translated = openai_request_to_anthropic(body, default_max_tokens=None, drop_unsupported=True)
    assert "temperature" not in translated.body and translated.dropped == ["temperature"]


def test_missing_max_tokens_without_a_default_is_refused_naming_it() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(BadRequest) as refused:
        openai_request_to_anthropic(body, default_max_tokens=None)
    assert refused.value.param == "max_tokens"
    assert openai_request_to_anthropic(body, default_max_tokens=2048).body["max_tokens"] == 2048


def test_assistant_tool_call_arguments_that_are_not_json_are_refused() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}
    body = {**BASE, "messages": [{"role": "assistant", "content": None, "tool_calls": [call]}]}
    with pytest.raises(BadRequest) as refused:
        openai_request_to_anthropic(body, default_max_tokens=None)
    assert refused.value.param == "messages[0].tool_calls[0]"


ANTHROPIC_BASE = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_k": 40}, "top_k"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"metadata": {"user_id": "u", "trace": "t"}}, "metadata.trace"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": True}],
                    }
                ]
            },
            "messages[0].content[0].is_error",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}
                        ],
                    }
                ]
            },
            "messages[0].content[0].document",
        ),
    ],
)
def test_anthropic_parameter_without_equivalent_is_refused_by_name_or_dropped_and_listed(
    extra: dict[str, Any], param: str
) -> None:
    body = {**ANTHROPIC_BASE, **extra}
    with pytest.raises(TranslationError) as refused:
        anthropic_request_to_openai(body)
    assert refused.value.param == param
    translated = anthropic_request_to_openai(body, drop_unsupported=True)
    assert translated.dropped == [param]


def test_anthropic_cache_control_is_dropped_and_listed_without_the_flag() -> None:
    body = {
        **ANTHROPIC_BASE,
        "system": [{"type": "text", "text": "long prompt", "cache_control": {"type": "ephemeral"}}],
    }
    translated = anthropic_request_to_openai(body)
    assert translated.dropped == ["system[0].cache_control"]
    assert translated.body["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "long prompt"}]}


def test_anthropic_request_can_put_its_limit_in_max_completion_tokens() -> None:
    body = anthropic_request_to_openai(ANTHROPIC_BASE, max_tokens_field="max_completion_tokens").body
    assert body["max_completion_tokens"] == 10 and "max_tokens" not in body
