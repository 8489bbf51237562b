"""The resilience config: defaults, every field, and the cross-checks refused at load with their field paths."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.config import ConfigError, config_from_dict


def _doc(models: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:1/v1"}, "v": {"base_url": "http://127.0.0.1:2/v1"}},
        "models": models,
        **extra,
    }


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc)
    return info.value.problems


def test_model_and_deployment_fields_are_read() -> None:
    config = config_from_dict(
        _doc(
            {
                "a": {
                    "strategy": "least_inflight",
                    "fallbacks": ["b"],
                    "context_window_fallbacks": ["c"],
                    "fallback_on_status": [429],
                    "queue": True,
                    "deployments": [{"upstream": "u", "weight": 3, "rpm": 60, "tpm": 1000, "max_concurrency": 4}],
                },
                "b": {"deployments": [{"upstream": "v"}]},
                "c": {"deployments": [{"upstream": "v"}]},
            },
            resilience={
                "retries": {"max": 3, "statuses": [500, 503], "budget_ratio": 0.1},
                "breaker": {"half_open_probes": 5},
            },
        )
    )
    a = config.models["a"]
    assert a.routing.strategy == "least_inflight" and a.routing.fallbacks == ("b",) and a.routing.queue
    assert a.routing.fallback_on_status == frozenset({429})
    assert a.deployments[0].limits.rpm == 60 and a.deployments[0].limits.max_concurrency == 4
    assert config.resilience.retries.max == 3 and config.resilience.retries.statuses == frozenset({500, 503})
    assert config.resilience.breaker.half_open_probes == 5


def test_unknown_fallback_model_is_refused_with_its_path() -> None:
    problems = _problems(_doc({"a": {"deployments": [{"upstream": "u"}], "fallbacks": ["nope"]}}))
    assert any(p.startswith("models.a.fallbacks[0]: unknown model 'nope'") for p in problems)


def test_fallback_cycle_is_refused() -> None:
    problems = _problems(
        _doc(
            {
                "a": {"deployments": [{"upstream": "u"}], "fallbacks": ["b"]},
                "b": {"deployments": [{"upstream": "u"}], "fallbacks": ["c"]},
                "c": {"deployments": [{"upstream": "u"}], "context_window_fallbacks": ["a"], "fallbacks": ["a"]},
            }
        )
    )
    assert any("fallback cycle: a -> b -> c -> a" in p for p in problems)


def test_context_window_fallback_to_itself_is_refused() -> None:
    problems = _problems(_doc({"a": {"deployments": [{"upstream": "u"}], "context_window_fallbacks": ["a"]}}))
    assert "models.a.context_window_fallbacks[0]: a model cannot fall back to itself" in problems


def test_bad_values_are_each_reported() -> None:
    problems = _problems(
        _doc(
            {"a": {"deployments": [{"upstream": "u", "rpm": 0}, {"upstream": "u"}], "strategy": "random"}},
            resilience={
                "retries": {"statuses": [200], "backoff_base": "2s", "backoff_cap": "1s"},
                "breaker": {"error_rate": 1.5, "cool_down": "10s", "cool_down_max": "5s"},
                "queue": {"status": 502},
                "typo": 1,
            },
        )
    )
    joined = "\n".join(problems)
    for path in (
        "models.a.deployments[0].rpm",
        "models.a.deployments[1]: duplicates",
        "models.a.strategy",
        "resilience.retries.statuses",
        "resilience.retries.backoff_cap",
        "resilience.breaker.error_rate",
        "resilience.breaker.cool_down_max",
        "resilience.queue.status",
        "resilience.typo: unknown key",
    ):
        assert path in joined, path


@pytest.mark.parametrize("path", ["/health check", "/health\r\nX-Evil: 1", "/h\x00"])
def test_a_health_probe_path_that_would_break_the_request_line_is_refused(path: str) -> None:
    problems = _problems(_doc({"a": {"deployments": [{"upstream": "u"}]}}, resilience={"health": {"path": path}}))
    assert problems == [
        "resilience.health.path: must not contain spaces or control characters (it goes into the request line)"
    ]
