"""Namespaces and matchers: every operator, priority order, the default namespace, load-time refusals."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict

from tollgate.config import config_from_dict
from tollgate.errors import ConfigError
from tollgate.policy.matchers import MISSING, NamespaceTable, compile_path, lookup


def table(namespaces: dict[str, Any]) -> NamespaceTable:
    doc = {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:1/v1"}},
        "models": {"m": {"deployments": [{"upstream": "u"}]}},
        "namespaces": namespaces,
    }
    return NamespaceTable(config_from_dict(doc, env={}).rules.namespaces)


def ns(*matchers: dict[str, Any], priority: int = 0) -> dict[str, Any]:
    return {"priority": priority, "matchers": list(matchers)}


BODY = {
    "model": "m",
    "metadata": {"channel": "support", "tier": 3},
    "messages": [{"role": "system", "content": "be nice"}],
}


@pytest.mark.parametrize(
    ("matcher", "headers", "hit"),
    [
        ({"type": "header", "field": "X-Channel", "op": "equals", "value": "web"}, {"x-channel": "web"}, True),
        ({"type": "header", "field": "X-Channel", "op": "equals", "value": "web"}, {"x-channel": "app"}, False),
        ({"type": "header", "field": "X-Channel", "op": "not_equals", "value": "web"}, {"x-channel": "app"}, True),
        ({"type": "header", "field": "X-Channel", "op": "not_equals", "value": "web"}, {}, True),
        (
            {"type": "header", "field": "User-Agent", "op": "contains", "value": "python"},
            {"user-agent": "OpenAI/python 1.0"},
            True,
        ),
        ({"type": "header", "field": "User-Agent", "op": "regex", "value": "^curl/"}, {"user-agent": "curl/8.0"}, True),
        ({"type": "header", "field": "User-Agent", "op": "regex", "value": "^curl/"}, {"user-agent": "wget"}, False),
        ({"type": "header", "field": "X-Team", "op": "in", "value": ["a", "b"]}, {"x-team": "b"}, True),
        ({"type": "header", "field": "X-Team", "op": "in", "value": ["a", "b"]}, {"x-team": "c"}, False),
        ({"type": "header", "field": "X-Team", "op": "exists"}, {"x-team": ""}, True),
        ({"type": "header", "field": "X-Team", "op": "exists"}, {}, False),
        ({"type": "header", "field": "X-Team", "op": "exists", "value": False}, {}, True),
        ({"type": "body", "field": "metadata.channel", "op": "equals", "value": "support"}, {}, True),
        ({"type": "body", "field": "metadata.tier", "op": "equals", "value": 3}, {}, True),
        ({"type": "body", "field": "metadata.tier", "op": "in", "value": [1, 2]}, {}, False),
        ({"type": "body", "field": "messages.0.role", "op": "equals", "value": "system"}, {}, True),
        ({"type": "body", "field": "messages.5.role", "op": "exists"}, {}, False),
        ({"type": "body", "field": "messages.0.content", "op": "contains", "value": "nice"}, {}, True),
        (
            {
                "type": "header_and_body",
                "header": "X-Channel",
                "field": "metadata.channel",
                "op": "equals",
                "value": "support",
            },
            {"x-channel": "support"},
            True,
        ),
        (
            {
                "type": "header_and_body",
                "header": "X-Channel",
                "field": "metadata.channel",
                "op": "equals",
                "value": "support",
            },
            {"x-channel": "web"},
            False,
        ),
    ],
)
def test_each_operator_on_headers_and_body_paths(matcher: dict[str, Any], headers: dict[str, str], hit: bool) -> None:
    t = table({"chan": ns(matcher)})
    assert t.match(CIMultiDict(headers), BODY) == ("chan" if hit else "default")


def test_higher_priority_namespace_wins_when_both_match() -> None:
    m = {"type": "body", "field": "metadata.channel", "op": "equals", "value": "support"}
    t = table({"low": ns(m, priority=1), "high": ns(m, priority=9)})
    assert t.match(CIMultiDict(), BODY) == "high"


def test_all_matchers_of_a_namespace_must_hold() -> None:
    t = table(
        {
            "both": ns(
                {"type": "body", "field": "metadata.channel", "op": "equals", "value": "support"},
                {"type": "header", "field": "X-Env", "op": "equals", "value": "prod"},
                priority=5,
            ),
            "any-support": ns({"type": "body", "field": "metadata.channel", "op": "equals", "value": "support"}),
        }
    )
    assert t.match(CIMultiDict({"X-Env": "prod"}), BODY) == "both"
    assert t.match(CIMultiDict({"X-Env": "dev"}), BODY) == "any-support"


def test_path_lookup_handles_lists_dicts_and_absence() -> None:
    assert lookup(BODY, compile_path("messages.0.role")) == "system"
    assert lookup(BODY, compile_path("metadata.nope")) is MISSING
    assert lookup(BODY, compile_path("model.x")) is MISSING


@pytest.mark.parametrize(
    ("matcher", "problem"),
    [
        (
            {"type": "header", "field": "X", "op": "regex", "value": "(unclosed"},
            "namespaces.bad.matchers[0].value: invalid regular expression",
        ),
        ({"type": "header", "field": "X", "op": "like", "value": "a"}, "namespaces.bad.matchers[0].op: must be one of"),
        (
            {"type": "cookie", "field": "X", "op": "equals", "value": "a"},
            "namespaces.bad.matchers[0].type: must be one of",
        ),
        (
            {"type": "header", "field": "X", "op": "in", "value": "a"},
            "namespaces.bad.matchers[0].value: must be a list for op in",
        ),
        (
            {"type": "header", "field": "X", "op": "equals"},
            "namespaces.bad.matchers[0].value: is required for op equals",
        ),
        ({"type": "header_and_body", "field": "x", "op": "exists"}, "namespaces.bad.matchers[0].header: is required"),
    ],
)
def test_invalid_matchers_are_refused_at_load_with_their_field_path(matcher: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        table({"bad": ns(matcher)})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems
