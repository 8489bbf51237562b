"""The mock's state per instance: counters, the recorded requests, stored responses, the RNG, and payloads built once."""

from __future__ import annotations

import os
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from tollgate.mock.generation import GeneratedText, embedding_base64, embedding_vector
from tollgate.mock.settings import MockSettings

__all__ = ["MOCK_STATE", "STORED_RESPONSES", "MockState", "StoredResponse"]

STORED_RESPONSES = 1000
"""How many Responses API responses the mock keeps for ``GET``/``DELETE`` and ``previous_response_id`` (the oldest go)."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A stored Responses API response: its JSON as answered, and the tokens of the conversation up to its end.

    ``context_tokens`` (its input tokens plus its output tokens but the reasoning
    ones) is what a follow-up naming it as ``previous_response_id`` adds to its
    own input, as cached tokens. Nothing else of the request is kept.
    """

    response: dict[str, Any]
    context_tokens: int


class MockState:
    """Per-instance mutable state: counters, the request ring buffer, the RNG and prebuilt payloads."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.rng = random.Random(settings.seed)
        self.id_prefix = os.urandom(4).hex()
        self.sequence = 0
        self.requests: deque[dict[str, Any]] = deque(maxlen=settings.record_limit)
        self.text = GeneratedText(settings.max_tokens_cap)
        vector = embedding_vector(settings.embedding_dim)
        self.vector = vector
        self.vector_json = orjson.dumps(vector)
        self.vector_b64 = embedding_base64(vector)
        self.responses: dict[str, StoredResponse] = {}
        self.stats: dict[str, Any] = {}
        self.reset_stats()

    def reset_stats(self) -> None:
        self.stats = {
            "requests": 0,
            "errors_injected": 0,
            "streams_started": 0,
            "streams_completed": 0,
            "streams_aborted": 0,
            "streams_cut": 0,
            "streams_stalled": 0,
            "client_disconnects": [],
            "last_client_disconnect_at": None,
        }

    def next_id(self, prefix: str) -> str:
        self.sequence += 1
        return f"{prefix}-{self.id_prefix}{self.sequence:08x}"

    def next_object_id(self, prefix: str) -> str:
        """An id as OpenAI's newer objects have them: ``prefix``, an underscore, hex (``resp_...``, ``msg_...``)."""
        self.sequence += 1
        return f"{prefix}_{self.id_prefix}{self.sequence:08x}"

    def store_response(self, stored: StoredResponse) -> None:
        """Keep a response under its id, dropping the oldest past :data:`STORED_RESPONSES`."""
        self.responses[stored.response["id"]] = stored
        while len(self.responses) > STORED_RESPONSES:
            del self.responses[next(iter(self.responses))]

    def client_left(self, chunks_sent: int) -> None:
        now = time.time()
        self.stats["streams_aborted"] += 1
        self.stats["last_client_disconnect_at"] = now
        disconnects = self.stats["client_disconnects"]
        disconnects.append({"at": now, "chunks_sent": chunks_sent})
        del disconnects[:-100]


MOCK_STATE = web.AppKey("mock_state", MockState)
