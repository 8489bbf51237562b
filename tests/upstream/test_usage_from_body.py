"""usage_from_body reads the answer's last member alone when it is ``usage``: the same usage as parsing the whole body."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tollgate.upstream.usage import Usage, usage_from_body, usage_from_json

_USAGE = {"prompt_tokens": 24, "completion_tokens": 16, "total_tokens": 40}
_CHOICES = [{"index": 0, "message": {"role": "assistant", "content": 'say "usage": {"prompt_tokens": 9}}'}}]


def _whole(body: bytes) -> Usage | None:
    try:
        return usage_from_json(orjson.loads(body))
    except orjson.JSONDecodeError:
        return None


@pytest.mark.parametrize(
    "body",
    [
        orjson.dumps({"id": "c1", "choices": _CHOICES, "usage": _USAGE}),  # usage last: read from the tail
        orjson.dumps({"id": "c1", "choices": _CHOICES, "usage": _USAGE}, option=orjson.OPT_INDENT_2) + b"\n",
        orjson.dumps({"usage": _USAGE, "choices": _CHOICES}),  # usage first: the whole body
        orjson.dumps({"choices": _CHOICES, "usage": None}),
        orjson.dumps({"choices": _CHOICES, "meta": {"usage": _USAGE}}),  # a nested usage is not the answer's
        orjson.dumps({"choices": _CHOICES, "note": "usage"}),
        orjson.dumps([{"usage": _USAGE}]),
        b'{"usage": {"prompt_tokens": 1}, "usage": {"prompt_tokens": 2, "completion_tokens": 3}}',  # the last wins
        b'{"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}',  # cut short: not JSON
        b'"usage"',
        b"",
    ],
)
def test_usage_from_the_tail_is_the_usage_of_the_whole_answer(body: bytes) -> None:
    assert usage_from_body(body) == _whole(body)


def test_an_answer_ending_in_usage_is_not_parsed_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    body = orjson.dumps({"id": "c1", "choices": _CHOICES, "usage": _USAGE})
    parsed: list[int] = []
    real = orjson.loads

    def loads(data: Any) -> Any:
        parsed.append(len(data))
        return real(data)

    monkeypatch.setattr(orjson, "loads", loads)
    assert usage_from_body(body) == Usage(24, 16, True)
    assert parsed and max(parsed) < len(body) // 2


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 24, "completion_tokens": 16, "total_tokens": 40},
        {"prompt_tokens": 24},  # no completion count: 0
        {"prompt_tokens": 0, "completion_tokens": 0},
        {"prompt_tokens": True, "completion_tokens": 3},  # a bool is no count
        {"prompt_tokens": 5, "completion_tokens": False},
        {"prompt_tokens": -1, "completion_tokens": 3},
        {"prompt_tokens": 5, "completion_tokens": -2},
        {"prompt_tokens": 5.0, "completion_tokens": 3},
        {"prompt_tokens": 5, "completion_tokens": None},
        {"prompt_tokens": 9, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 20}},  # capped
        {"prompt_tokens": 9, "completion_tokens": 4, "completion_tokens_details": {"reasoning_tokens": 3}},
        {"prompt_tokens": 9, "completion_tokens": 4, "prompt_tokens_details": None},
    ],
)
def test_plain_counts_read_at_once_give_what_the_parts_checks_give(usage: dict[str, Any]) -> None:
    found = usage_from_json({"usage": usage})
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not (count(prompt) and count(completion)):
        assert found is None
        return
    details = usage.get("prompt_tokens_details") or {}
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0)
    assert found == Usage(prompt, completion, True, min(details.get("cached_tokens", 0), prompt), 0, reasoning)
