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
