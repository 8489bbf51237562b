"""on_limit: delay in a rule: what it compiles to, and the mistakes refused at load with their field path."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.config import config_from_dict
from tollgate.errors import ConfigError
from tollgate.policy.admission import limit_spec

UPSTREAM = {"u": {"base_url": "http://127.0.0.1:9/v1"}}
MODELS = {"m": {"deployments": [{"upstream": "u"}]}}


def load(rule: dict[str, Any]) -> Any:
    doc = {"upstreams": UPSTREAM, "models": MODELS, "rules": {"r": {"attach": {"global": True}, **rule}}}
    return config_from_dict(doc, env={})


def test_a_delayed_request_limit_is_a_shaping_limit_with_its_longest_wait() -> None:
    rule = load({"type": "request_limit", "limit": 10, "per": "second", "on_limit": "delay", "max_delay": "3s"})
    (spec_rule,) = rule.rules.rules
    assert (spec_rule.on_limit, spec_rule.max_delay) == ("delay", 3.0)
    spec = limit_spec(spec_rule, (), "t", 1)
    assert (spec.kind, spec.limit, spec.window_ms, spec.max_delay_ms) == ("shaping", 10, 1000, 3000)


def test_max_delay_defaults_to_10_s_and_refusing_stays_the_default() -> None:
    delayed = load({"type": "request_limit", "limit": 5, "on_limit": "delay"}).rules.rules[0]
    assert delayed.max_delay == 10.0 and limit_spec(delayed, (), "t", 1).max_delay_ms == 10_000
    plain = load({"type": "request_limit", "limit": 5}).rules.rules[0]
    assert plain.on_limit == "refuse" and limit_spec(plain, (), "t", 1).kind == "sliding_window"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (
            {"type": "request_limit", "limit": 5, "on_limit": "delay", "algorithm": "gcra"},
            "rules.r.algorithm: is not for on_limit: delay",
        ),
        ({"type": "request_limit", "limit": 5, "max_delay": "2s"}, "rules.r.max_delay: is for on_limit: delay only"),
        (
            {"type": "request_limit", "limit": 5, "on_limit": "delay", "max_delay": "10m"},
            "rules.r.max_delay: must be at most 5m",
        ),
        ({"type": "request_limit", "limit": 5, "on_limit": "wait"}, "rules.r.on_limit: must be one of refuse, delay"),
        ({"type": "token_limit", "limit": 5, "on_limit": "delay"}, "rules.r.on_limit: unknown key"),
    ],
)
def test_mistakes_are_refused_at_load_with_their_field_path(rule: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load(rule)
    assert any(p.startswith(problem) for p in refused.value.problems), refused.value.problems
