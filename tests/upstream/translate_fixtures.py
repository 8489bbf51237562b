"""Loading the translation fixtures (tests/upstream/fixtures/*.json) and reading SSE frames back into JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

FIXTURES = Path(__file__).parent / "fixtures"


def load(name: str) -> Any:
    return orjson.loads((FIXTURES / name).read_bytes())


def case_ids(cases: list[dict[str, Any]]) -> list[str]:
    return [case["name"] for case in cases]


def frames(data: bytes) -> list[tuple[str | None, Any]]:
    """The SSE frames of ``data`` as (event name or None, parsed data or "[DONE]"); every frame must be complete."""
    assert data == b"" or data.endswith(b"\n\n"), f"an incomplete frame: {data!r}"
    out: list[tuple[str | None, Any]] = []
    for frame in data.split(b"\n\n")[:-1]:
        name: str | None = None
        payload: Any = None
        for line in frame.split(b"\n"):
            field, _, value = line.partition(b": ")
            if field == b"event":
                name = value.decode()
            elif field == b"data":
                payload = "[DONE]" if value == b"[DONE]" else orjson.loads(value)
            else:
                raise AssertionError(f"unexpected line in frame: {line!r}")
        out.append((name, payload))
    return out
