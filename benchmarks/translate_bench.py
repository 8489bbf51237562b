"""Translation cost between OpenAI chat and Anthropic Messages: CPU µs per translated request, answer and stream event.

    PYTHONPATH=. python benchmarks/translate_bench.py [--rounds 5] [--ops 20000]

In-process, no HTTP: process CPU time ÷ operations, median of interleaved rounds. A request
is a realistic agent turn (a system prompt, six messages, two tools, a tool call and its result),
translated and serialised with orjson; a stream event is one event of a text-and-tool-call
stream, fed to the translator as the relay would, its frames returned as bytes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson

from tollgate.upstream.translate import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
    anthropic_message_to_openai,
    anthropic_request_to_openai,
    openai_completion_to_anthropic,
    openai_request_to_anthropic,
)

__all__ = ["main"]

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} tool",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
    for name in ("search", "fetch")
]
OPENAI_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "messages": [
        {"role": "system", "content": "You are a careful research assistant. " * 20},
        {"role": "user", "content": "Find the population of Oslo."},
        {
            "role": "assistant",
            "content": "Searching.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "search", "arguments": '{"q":"Oslo population"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Oslo has about 720,000 inhabitants. " * 10},
        {"role": "assistant", "content": "About 720,000."},
        {"role": "user", "content": "And Bergen?"},
    ],
    "tools": _TOOLS,
    "tool_choice": "auto",
    "max_tokens": 1024,
    "temperature": 0.2,
    "stream": True,
    "stream_options": {"include_usage": True},
}
ANTHROPIC_REQUEST = openai_request_to_anthropic(OPENAI_REQUEST, default_max_tokens=None).body
ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "text", "text": "Let me look that up. " * 5},
        {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": "Bergen population"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 900,
        "output_tokens": 40,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 300,
    },
}
OPENAI_COMPLETION = anthropic_message_to_openai(ANTHROPIC_MESSAGE, created=1700000000)


def _anthropic_events(text_deltas: int) -> list[dict[str, Any]]:
    start = {key: value for key, value in ANTHROPIC_MESSAGE.items() if key != "content"}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**start, "content": [], "stop_reason": None}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    events += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " word"}}
    ] * text_deltas
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"q": "Bergen'},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ' population"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 40},
        },
        {"type": "message_stop"},
    ]
    return events


def _openai_chunks(text_deltas: int) -> list[dict[str, Any] | None]:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks: list[dict[str, Any] | None] = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": " word"})] * text_deltas
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": ""}}
    chunks += [
        chunk({"tool_calls": [call]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": "Bergen population"}'}}]}),
        chunk({}, "tool_calls"),
        {**head, "choices": [], "usage": {"prompt_tokens": 1200, "completion_tokens": 40, "total_tokens": 1240}},
        None,  # data: [DONE]
    ]
    return chunks


ANTHROPIC_EVENTS = _anthropic_events(40)
OPENAI_CHUNKS = _openai_chunks(40)


def _stream_to_openai() -> None:
    stream = AnthropicToOpenAIStream(created=1700000000, include_usage=True)
    for event in ANTHROPIC_EVENTS:
        stream.feed(event)


def _stream_to_anthropic() -> None:
    stream = OpenAIToAnthropicStream()
    for chunk in OPENAI_CHUNKS:
        if chunk is None:
            stream.done()
        else:
            stream.feed(chunk)


# name, what one call does, operations per call
CASES: list[tuple[str, Callable[[], object], int]] = [
    (
        "request  OpenAI → Anthropic (translate + serialise)",
        lambda: orjson.dumps(openai_request_to_anthropic(OPENAI_REQUEST, default_max_tokens=None).body),
        1,
    ),
    (
        "request  Anthropic → OpenAI (translate + serialise)",
        lambda: orjson.dumps(anthropic_request_to_openai(ANTHROPIC_REQUEST).body),
        1,
    ),
    (
        "answer   Anthropic → OpenAI (translate + serialise)",
        lambda: orjson.dumps(anthropic_message_to_openai(ANTHROPIC_MESSAGE, created=1)),
        1,
    ),
    (
        "answer   OpenAI → Anthropic (translate + serialise)",
        lambda: orjson.dumps(openai_completion_to_anthropic(OPENAI_COMPLETION)),
        1,
    ),
    ("stream event  Anthropic → OpenAI chunk frame", _stream_to_openai, len(ANTHROPIC_EVENTS)),
    ("stream event  OpenAI chunk → Anthropic event frames", _stream_to_anthropic, len(OPENAI_CHUNKS)),
]


def _cpu_us_per_op(work: Callable[[], object], calls: int, ops_per_call: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        work()
    return (time.process_time() - started) * 1e6 / (calls * ops_per_call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=20000, help="operations per case and round")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {name: [] for name, _, _ in CASES}
    for _ in range(args.rounds):  # rounds interleave the cases, so drift in the machine touches them all alike
        for name, work, per_call in CASES:
            samples[name].append(_cpu_us_per_op(work, max(args.ops // per_call, 1), per_call))
    print(f"CPU µs per operation, median of {args.rounds} rounds (process CPU time ÷ operations):")
    for name, values in samples.items():
        print(f"  {name:<55} {statistics.median(values):7.2f} µs")


if __name__ == "__main__":
    main()
