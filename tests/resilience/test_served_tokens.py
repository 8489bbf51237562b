"""A deployment counts the tokens it served as its answers reported them: the autoscaler's tokens-per-second signal
and the deployment's tpm window, where a request's rough prompt estimate was all they counted."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from .helpers import MSG, chat, config_doc, gateway


def _usage(raw: bytes, stream: bool) -> dict[str, int]:
    if not stream:
        return dict(orjson.loads(raw)["usage"])
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
    return dict(next(orjson.loads(e)["usage"] for e in reversed(events) if orjson.loads(e).get("usage")))


async def test_the_tokens_a_deployment_served_are_its_answers_prompt_and_completion(mock_url: str) -> None:
    doc = config_doc(mock_url, {"m": {"deployments": [{"upstream": "mock"}]}})
    async with gateway(doc) as (url, state), aiohttp.ClientSession() as s:
        answers: list[tuple[dict[str, int], bool]] = []
        for stream, tokens in ((False, 50), (True, 30), (False, 7)):
            body: dict[str, Any] = {"stream": stream}
            if stream:
                body["stream_options"] = {"include_usage": True}
            status, _, raw = await chat(s, url, "m", {"x-mock-completion-tokens": str(tokens)}, **body)
            assert status == 200
            answers.append((_usage(raw, stream), stream))
        (deployment,) = state.deployments.states.values()
        served = sum(u["prompt_tokens"] + u["completion_tokens"] for u, _ in answers)
        assert [u["completion_tokens"] for u, _ in answers] == [50, 30, 7]
        assert deployment.tokens == served
        assert deployment.calls == 3


async def test_a_tpm_window_counts_the_completion_and_holds_the_next_request_back(mock_url: str) -> None:
    """tpm 120: the first answer's 100 completion tokens fill the window its prompt estimate (a few tokens) left
    nearly empty, so the next request finds no room on the model's only deployment."""
    doc = config_doc(mock_url, {"m": {"deployments": [{"upstream": "mock", "tpm": 120}]}})
    async with gateway(doc) as (url, _), aiohttp.ClientSession() as s:
        first, _, raw = await chat(s, url, "m", {"x-mock-completion-tokens": "100"})
        assert first == 200 and orjson.loads(raw)["usage"]["completion_tokens"] == 100
        assert len(orjson.dumps({"model": "m", "messages": MSG})) // 4 < 20  # what the window counted before
        second, _, raw = await chat(s, url, "m")
    error = orjson.loads(raw)["error"]
    assert (second, error["code"]) == (503, "no_healthy_deployment")
    assert "at its tpm limit" in error["message"]
