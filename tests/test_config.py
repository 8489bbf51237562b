"""Config validation: every problem reported with its field path; secrets from the environment; examples valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tollgate.config import config_from_dict, load_config
from tollgate.config.values import parse_duration, parse_size
from tollgate.errors import ConfigError

from .support.processes import REPO

BROKEN = """
listeners:
  public: {port: 70000}
  admin: {token: short}
guard:
  max_body_bytes: lots
upstreams:
  openai:
    base_url: ftp://example.com
    timeouts:
      connect: -1s
      first_byte: soon
    pool: {max_connections: 0}
    surprise: true
models:
  gpt-4o:
    deployments:
      - upstream: azure
        weight: -2
  empty: {}
typo_section: 1
"""


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollgate", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


@pytest.mark.process
def test_check_config_lists_every_error_with_its_field_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = run_check(path)
    assert result.returncode == 1
    out = result.stderr
    expected = [
        "listeners.public.port: must be <= 65535",
        "listeners.admin.token: must be at least 16 characters",
        "guard.max_body_bytes: must be a size",
        "upstreams.openai.base_url: must be an absolute http:// or https:// URL",
        "upstreams.openai.timeouts.connect: must be a positive duration",
        "upstreams.openai.timeouts.first_byte: must be a positive duration",
        "upstreams.openai.pool.max_connections: must be >= 1",
        "upstreams.openai.surprise: unknown key",
        "models.gpt-4o.deployments[0].upstream: unknown upstream 'azure'",
        "models.gpt-4o.deployments[0].weight: must be >= 0",
        "models.empty.deployments: at least one deployment is required",
        "typo_section: unknown key",
    ]
    for line in expected:
        assert line in out, f"missing {line!r} in:\n{out}"


@pytest.mark.process
def test_check_config_accepts_a_valid_file_and_exits_zero(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "upstreams: {u: {base_url: 'http://127.0.0.1:1/v1'}}\nmodels: {m: {deployments: [{upstream: u}]}}\n"
    )
    result = run_check(path)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


@pytest.mark.parametrize("name", ["demo.yaml", "gateway.example.yaml"])
def test_shipped_example_configs_are_valid(name: str) -> None:
    load_config(REPO / "config" / name, env={})


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("upstreams:\n  u: {base_url: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "not valid YAML (line" in info.value.problems[0]


def test_missing_file_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read" in info.value.problems[0]


def minimal(**extra: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:1/v1", "api_key": "${UPSTREAM_KEY}"}},
        "models": {"m": {"deployments": [{"upstream": "u"}]}},
    }
    doc.update(extra)
    return doc


def test_env_var_substitution_fills_secrets() -> None:
    config = config_from_dict(minimal(), env={"UPSTREAM_KEY": "sk-from-env"})
    assert config.upstreams["u"].api_key == "sk-from-env"


def test_unset_env_var_is_an_error_naming_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(), env={})
    assert info.value.problems == ["upstreams.u.api_key: environment variable UPSTREAM_KEY is not set"]


def test_env_var_default_is_used_when_unset() -> None:
    doc = minimal()
    doc["upstreams"]["u"]["api_key"] = "${UPSTREAM_KEY:-sk-default}"  # type: ignore[index]
    assert config_from_dict(doc, env={}).upstreams["u"].api_key == "sk-default"


def test_env_value_cannot_change_document_structure() -> None:
    doc = minimal()
    doc["models"]["m"]["owned_by"] = "${OWNER}"  # type: ignore[index]
    config = config_from_dict(doc, env={"UPSTREAM_KEY": "k", "OWNER": "x\nmodels: {}"})
    assert config.models["m"].owned_by == "x\nmodels: {}"
    assert list(config.models) == ["m"]


def test_an_upstream_secret_with_a_trailing_newline_is_refused_not_sent() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(), env={"UPSTREAM_KEY": "sk-from-a-file\n"})
    assert info.value.problems == [
        "upstreams.u.api_key: must not contain CR, LF or NUL (check for a trailing newline in the secret)"
    ]


def test_upstream_headers_must_be_valid_names_with_values_that_cannot_break_the_request() -> None:
    doc = minimal()
    doc["upstreams"]["u"]["headers"] = {"X-Org": "a\r\nX-Evil: 1", "Bad Name": "v", "X-Ok": "fine"}  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, env={"UPSTREAM_KEY": "k"})
    assert sorted(info.value.problems) == [
        "upstreams.u.headers.Bad Name: is not a valid header name",
        "upstreams.u.headers.X-Org: must not contain CR, LF or NUL (it would break the request sent upstream)",
    ]


def test_forward_headers_default_to_content_negotiation_and_the_user_agent_and_are_kept_lower_case() -> None:
    env = {"UPSTREAM_KEY": "k"}
    assert config_from_dict(minimal(), env=env).upstreams["u"].forward_headers == (
        "accept",
        "accept-language",
        "user-agent",
    )
    doc = minimal()
    doc["upstreams"]["u"]["forward_headers"] = ["Accept", "anthropic-beta", "X-Stainless-*", "accept"]  # type: ignore[index]
    assert config_from_dict(doc, env=env).upstreams["u"].forward_headers == (
        "accept",
        "anthropic-beta",
        "x-stainless-*",
    )
    doc["upstreams"]["u"]["forward_headers"] = []  # type: ignore[index]
    assert config_from_dict(doc, env=env).upstreams["u"].forward_headers == ()


def test_forward_headers_refuse_what_never_comes_from_a_client_naming_each_entry() -> None:
    doc = minimal()
    doc["upstreams"]["u"]["headers"] = {"X-Org": "o"}  # type: ignore[index]
    doc["upstreams"]["u"]["forward_headers"] = [  # type: ignore[index]
        "authorization",
        "OpenAI-Organization",
        "openai-beta",
        "x-forwarded-*",
        "Proxy-*",
        "X-Real-IP",
        "connection",
        "x-request-id",
        "*",
        "bad name",
        "x-org",
        "x-mock-*",
    ]
    with pytest.raises(ConfigError) as info:
        config_from_dict(doc, env={"UPSTREAM_KEY": "k"})
    at = "upstreams.u.forward_headers"
    assert info.value.problems == [
        f"{at}[0]: authorization never comes from a client: it is a client credential",
        f"{at}[1]: OpenAI-Organization comes only from this upstream's headers, never from a client",
        f"{at}[2]: openai-beta comes only from this upstream's headers, never from a client",
        f"{at}[3]: x-forwarded-* names only headers that never come from a client",
        f"{at}[4]: Proxy-* names only headers that never come from a client",
        f"{at}[5]: X-Real-IP never comes from a client: it claims the client's address or route (the gateway sends X-Forwarded-For itself)",
        f"{at}[6]: connection never comes from a client: it is hop-by-hop",
        f"{at}[7]: x-request-id never comes from a client: it is set by the gateway",
        f"{at}[8]: '*' is not a header name, or a name prefix ending in * (such as x-mock-*)",
        f"{at}[9]: 'bad name' is not a header name, or a name prefix ending in * (such as x-mock-*)",
        f"{at}[10]: x-org is set by this upstream's headers: a client's value would never be sent",
    ]


def test_admin_token_is_kept_only_as_its_hash() -> None:
    config = config_from_dict(
        minimal(listeners={"admin": {"token": "a-long-admin-token-123"}}), env={"UPSTREAM_KEY": "k"}
    )
    assert config.listeners.admin.token_sha256 is not None
    assert "a-long-admin-token-123" not in repr(config)


@pytest.mark.parametrize(
    ("text", "seconds"), [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), (3, 3.0), ("1.5s", 1.5)]
)
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("64KiB", 65536), ("1MiB", 1048576), ("1kb", 1000), (512, 512)])
def test_sizes_parse_to_bytes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_budget_and_token_count_mistakes_are_named_by_field() -> None:
    rules = {
        "no-amount": {"type": "budget", "attach": {"global": True}},
        "zero": {"type": "budget", "amount": 0, "attach": {"global": True}},
        "as-limit": {
            "type": "budget",
            "limit": 5,
            "amount": 1,
            "per": "week",
            "window": "sliding",
            "attach": {"global": True},
        },
        "bad-count": {"type": "token_limit", "limit": 10, "count": "prompt", "attach": {"global": True}},
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(minimal(rules=rules), env={"UPSTREAM_KEY": "k"})
    problems = info.value.problems
    assert any(p.startswith("rules.no-amount.amount:") for p in problems), problems
    assert any(p.startswith("rules.zero.amount:") for p in problems), problems
    assert any(p.startswith("rules.as-limit.per:") for p in problems), problems
    assert any(p.startswith("rules.as-limit.window:") for p in problems), problems
    assert any(p.startswith("rules.as-limit.limit:") for p in problems), problems  # a budget takes an amount
    assert any(p.startswith("rules.bad-count.count:") for p in problems), problems


def test_a_budget_amount_is_kept_exactly_in_nanos() -> None:
    rules = {"spend": {"type": "budget", "amount": 12.34, "per": "month", "attach": {"plans": ["p"]}}}
    config = config_from_dict(minimal(rules=rules), env={"UPSTREAM_KEY": "k"})
    [rule] = config.rules.rules
    assert (rule.limit, rule.per, rule.window, rule.algorithm) == (12_340_000_000, "month", "calendar", "fixed_window")


def test_a_rule_without_fail_mode_falls_back_to_the_local_engine() -> None:
    config = config_from_dict(
        {
            "upstreams": {"u": {"base_url": "http://127.0.0.1:9"}},
            "models": {"m": {"deployments": [{"upstream": "u"}]}},
            "rules": {
                "rpm": {"type": "request_limit", "limit": 10, "attach": {"global": True}},
                "open": {"type": "request_limit", "limit": 10, "fail_mode": "fail_open", "attach": {"global": True}},
            },
        }
    )
    assert {r.name: r.fail_mode for r in config.rules.rules} == {"rpm": "local", "open": "fail_open"}
