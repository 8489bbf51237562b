"""Rule selection (union of global, plan, tenant, namespace rules), field checks, token estimates."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.config import config_from_dict
from tollgate.errors import BadRequest, ConfigError
from tollgate.policy.rules import RuleSet
from tollgate.upstream.estimates import estimate_prompt_tokens, requested_completion_tokens


def ruleset(rules: dict[str, Any], namespaces: dict[str, Any] | None = None) -> RuleSet:
    doc = {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:1/v1"}},
        "models": {"m": {"deployments": [{"upstream": "u"}]}},
        "namespaces": namespaces or {"support": {"matchers": [{"type": "header", "field": "x-ch", "op": "exists"}]}},
        "rules": rules,
    }
    return RuleSet(config_from_dict(doc, env={}).rules)


def limit(attach: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"type": "request_limit", "limit": 10, "per": "minute", "attach": attach, **kw}


def test_a_request_gets_the_union_of_global_plan_tenant_and_namespace_rules() -> None:
    rs = ruleset(
        {
            "g": limit({"global": True}),
            "p": limit({"plans": ["personal"]}),
            "t": limit({"tenants": ["acme"]}),
            "n": limit({"namespaces": ["support"]}),
            "other-plan": limit({"plans": ["enterprise"]}),
            "off": limit({"global": True}, enabled=False),
        }
    )
    _, rules = rs.applicable("personal", "acme", "support")
    assert {r.name for r in rules} == {"g", "p", "t", "n"}
    _, rules = rs.applicable("enterprise", "other", "default")
    assert {r.name for r in rules} == {"g", "other-plan"}


def test_rules_come_in_priority_order() -> None:
    rs = ruleset({"low": limit({"global": True}, priority=1), "high": limit({"global": True}, priority=5)})
    _, rules = rs.applicable(None, None, "default")
    assert [r.name for r in rules] == ["high", "low"]


def check(op: str, value: Any, **kw: Any) -> dict[str, Any]:
    return {
        "type": "field_check",
        "field": "max_tokens",
        "op": op,
        "value": value,
        "attach": {"global": True},
        "message": f"{op} failed",
        **kw,
    }


@pytest.mark.parametrize(
    ("op", "value", "body", "passes"),
    [
        ("lte", 20000, {"max_tokens": 100}, True),
        ("lte", 20000, {"max_tokens": 30000}, False),
        ("lte", 20000, {}, True),
        ("lt", 10, {"max_tokens": 10}, False),
        ("gt", 10, {"max_tokens": 11}, True),
        ("gte", 10, {"max_tokens": 10}, True),
        ("eq", 5, {"max_tokens": 5}, True),
        ("ne", 5, {"max_tokens": 5}, False),
        ("exists", True, {}, False),
        ("exists", True, {"max_tokens": 1}, True),
        ("max_length", 3, {"max_tokens": "abcd"}, False),
        ("contains", "x", {"max_tokens": "axb"}, True),
        ("regex", "^[0-9]+$", {"max_tokens": "12a"}, False),
        ("lte", 20000, {"max_tokens": "lots"}, False),
    ],
)
def test_field_check_operators(op: str, value: Any, body: dict[str, Any], passes: bool) -> None:
    rs = ruleset({"c": check(op, value)})
    checks, _ = rs.applicable(None, None, "default")
    if passes:
        assert rs.check_fields(checks, body) == []
    else:
        with pytest.raises(BadRequest) as info:
            rs.check_fields(checks, body)
        assert info.value.message == f"{op} failed"
        assert info.value.param == "max_tokens"


def test_shadow_field_check_reports_but_never_refuses() -> None:
    rs = ruleset({"c": check("lte", 10, shadow=True)})
    checks, _ = rs.applicable(None, None, "default")
    assert rs.check_fields(checks, {"max_tokens": 99}) == ["c"]


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (limit({"global": True}, scope=["tenant", "planet"]), "rules.r.scope: unknown scope 'planet'"),
        (limit({}), "rules.r.attach: must name at least one of"),
        (limit({"namespaces": ["nope"]}), "rules.r.attach.namespaces: unknown namespace 'nope'"),
        ({"type": "request_limit", "attach": {"global": True}}, "rules.r.limit: is required"),
        (
            check(
                "regex",
                "(",
            ),
            "rules.r.value: invalid regular expression",
        ),
        (check("lte", "x"), "rules.r.value: must be a number for op lte"),
        (
            {"type": "token_limit", "limit": 5, "on_exceed": "explode", "attach": {"global": True}},
            "rules.r.on_exceed: must be one of",
        ),
        ({"type": "bucket", "attach": {"global": True}}, "rules.r.type: must be one of"),
    ],
)
def test_invalid_rules_are_refused_at_load_with_their_field_path(rule: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        ruleset({"r": rule})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_prompt_estimate_counts_message_text_and_overhead() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "x" * 40},
            {"role": "user", "content": [{"type": "text", "text": "y" * 8}]},
        ]
    }
    assert estimate_prompt_tokens("chat", body) == 3 + 4 + 10 + 4 + 2
    assert estimate_prompt_tokens("embedding", {"input": ["abcd", "efgh"]}) == 2
    assert estimate_prompt_tokens("completion", {"prompt": [1, 2, 3]}) == 3


def test_completion_reservation_uses_max_tokens_times_n_or_the_default_cap() -> None:
    assert requested_completion_tokens("chat", {"max_tokens": 100, "n": 2}, 4096) == 200
    assert requested_completion_tokens("chat", {"max_completion_tokens": 50}, 4096) == 50
    assert requested_completion_tokens("chat", {}, 4096) == 4096
    assert requested_completion_tokens("embedding", {"max_tokens": 9}, 4096) == 0
