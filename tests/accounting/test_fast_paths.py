"""The flusher's fast paths give what the plain code gives: access-log lines in runs, seconds and floored times."""

from __future__ import annotations

import dataclasses
import random

import orjson
import pytest

from tollgate.accounting import Accounting
from tollgate.accounting.access_log import line_of, lines_of
from tollgate.accounting.records import Entry, entry_from
from tollgate.config import config_from_dict
from tollgate.pipeline.account import capture

from .test_flush_batching import DOC, WALL, varied_requests


def _entries(n: int, wall: float = WALL) -> list[Entry]:
    pricing = Accounting(config_from_dict(DOC)).pricing()
    return [entry_from(capture(ctx, end, wall), pricing) for ctx, end in varied_requests(n)]


def test_lines_of_shuffled_runs_and_times_are_the_line_by_line_ones() -> None:
    """A line's part from tenant to client_ip is found by comparing with the line before: runs that break and come
    back, equal values in other objects, wall times out of order across seconds and the epoch all render as
    line_of renders each one."""
    rng = random.Random(2222)
    base = _entries(60)
    for round_no in range(20):
        entries = []
        for i in range(400):
            e = base[rng.randrange(len(base))] if rng.random() < 0.3 else base[i % len(base)]
            wall = rng.choice((WALL, 0.0, 3.0)) + rng.choice((0.0, 0.9995, 0.999_999_9, rng.random() * 5))
            entries.append(
                dataclasses.replace(
                    e,
                    request_id=f"req_{round_no}_{i}",
                    wall=wall,
                    # an equal tenant in another string object: the run compares values, not identities
                    tenant="".join(e.tenant),
                )
            )
        assert lines_of(entries, "USD") == b"".join(line_of(e, "USD") for e in entries)


def test_lines_before_the_epoch_are_the_line_by_line_ones() -> None:
    entries = [dataclasses.replace(e, wall=-2.5 + i * 0.25) for i, e in enumerate(_entries(20))]
    assert lines_of(entries, "USD") == b"".join(line_of(e, "USD") for e in entries)


def test_an_infinite_time_is_rendered_as_before_not_refused() -> None:
    """floor() refuses infinity where the float division gave NaN (null in the line): the flush keeps its lines."""
    entries = _entries(3)
    entries[1] = dataclasses.replace(entries[1], total_s=float("inf"))
    lines = lines_of(entries, "USD").splitlines()
    assert len(lines) == 3 and orjson.loads(lines[1])["total_ms"] is None
    assert lines[0] + b"\n" == line_of(entries[0], "USD") and lines[2] + b"\n" == line_of(entries[2], "USD")


# A compiled Entry refuses an id that is not a str: those two run on the interpreted package only.
_NOT_STR_IDS = [pytest.param(7, marks=pytest.mark.interpreted), pytest.param(None, marks=pytest.mark.interpreted)]


@pytest.mark.parametrize(
    "rid",
    ['x",', 'a","b', "back\\slash", 'quo"te', "tab\there", "ünïcode", "", ",", '"', *_NOT_STR_IDS],
)
def test_request_ids_with_quotes_commas_backslashes_or_another_type_are_the_line_by_line_ones(rid: object) -> None:
    """The ids are rendered by one orjson call cut at '","': an id whose JSON has escapes, or an id that is not a
    string, must not be cut wrong (an id ending in '",' would otherwise eat the separator after it)."""
    base = _entries(22)
    for i in (0, 7, 21):  # first, inside, last
        entries = [dataclasses.replace(e, request_id=f"req_{j}") for j, e in enumerate(base)]
        entries[i] = dataclasses.replace(entries[i], request_id=rid)  # type: ignore[arg-type]
        assert lines_of(entries, "USD") == b"".join(line_of(e, "USD") for e in entries), rid


def test_counts_small_large_negative_or_absent_are_the_line_by_line_ones() -> None:
    """Token counts and attempts below 1024 come from a table rendered once, the others from orjson, usage_reported
    from its two values: every line as line_of renders it."""
    base = _entries(12)
    counts = (0, 5, 1023, 1024, 123_456, -3, 2**40)
    entries = [
        dataclasses.replace(
            e,
            prompt_tokens=counts[i % len(counts)],
            completion_tokens=counts[(i + 3) % len(counts)],
            attempts=(None, 1, 3, 70_000)[i % 4],
            usage_reported=i % 3 == 0,
        )
        for i, e in enumerate(base * 3)
    ]
    lines = lines_of(entries, "USD")
    assert lines == b"".join(line_of(e, "USD") for e in entries)
    first = orjson.loads(lines.splitlines()[0])
    assert first["prompt_tokens"] == 0 and first["completion_tokens"] == 1024 and first["attempts"] is None
