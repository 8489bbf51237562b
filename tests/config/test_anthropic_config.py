"""provider: anthropic: its version, x-api-key, drop_unsupported and max_tokens defaults; fields of other providers refused at load, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.config import config_from_dict
from tollgate.errors import ConfigError

ROOT = "https://api.anthropic.com"


def doc(upstream: dict[str, Any], *deployments: dict[str, Any], **model: Any) -> dict[str, Any]:
    return {
        "upstreams": {"u": {"api_key": "k", **upstream}, "plain": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"claude": {"deployments": list(deployments) or [{"upstream": "u"}], **model}},
    }


def problems(d: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(d, env={})
    return info.value.problems


def test_an_anthropic_upstream_sends_x_api_key_the_default_version_and_refuses_untranslatable_parameters() -> None:
    config = config_from_dict(doc({"provider": "anthropic", "base_url": f"{ROOT}/"}), env={})
    upstream = config.upstreams["u"]
    assert (upstream.provider, upstream.auth_header, upstream.base_url) == ("anthropic", "x-api-key", ROOT)
    assert (upstream.anthropic_version, upstream.drop_unsupported) == ("2023-06-01", False)
    (deployment,) = config.models["claude"].deployments
    assert (deployment.paths, deployment.max_tokens, deployment.model) == (None, 4096, "claude")


def test_the_version_and_drop_unsupported_are_configurable() -> None:
    d = doc({"provider": "anthropic", "base_url": ROOT, "anthropic_version": "2024-01-01", "drop_unsupported": True})
    upstream = config_from_dict(d, env={}).upstreams["u"]
    assert (upstream.anthropic_version, upstream.drop_unsupported) == ("2024-01-01", True)


def test_max_tokens_comes_from_the_deployment_else_the_model_else_4096() -> None:
    d = doc(
        {"provider": "anthropic", "base_url": ROOT},
        {"upstream": "u", "model": "claude-a", "max_tokens": 1000},
        {"upstream": "u", "model": "claude-b"},
        max_tokens=2000,
    )
    deployments = config_from_dict(d, env={}).models["claude"].deployments
    assert [dep.max_tokens for dep in deployments] == [1000, 2000]


def test_openai_upstreams_are_unchanged_and_have_no_max_tokens_default() -> None:
    config = config_from_dict(doc({"base_url": "https://api.openai.com/v1"}), env={})
    upstream = config.upstreams["u"]
    assert (upstream.anthropic_version, upstream.drop_unsupported, upstream.auth_header) == (
        None,
        False,
        "authorization",
    )
    assert config.models["claude"].deployments[0].max_tokens is None


@pytest.mark.parametrize(
    ("upstream", "where"),
    [
        ({"anthropic_version": "latest"}, "upstreams.u.anthropic_version"),
        ({"anthropic_version": "2023-06-01", "drop_unsupported": "yes"}, "upstreams.u.drop_unsupported"),
        ({"auth_header": "authorization"}, "upstreams.u.auth_header"),
        ({"base_url": f"{ROOT}/v1"}, "upstreams.u.base_url"),
        ({"headers": {"Anthropic-Version": "2023-06-01"}}, "upstreams.u.headers.Anthropic-Version"),
        ({"api_version": "2024-10-21"}, "upstreams.u.api_version"),
    ],
)
def test_bad_anthropic_fields_are_refused_naming_them(upstream: dict[str, Any], where: str) -> None:
    found = problems(doc({"provider": "anthropic", "base_url": ROOT, **upstream}))
    assert any(p.startswith(f"{where}:") for p in found), found


@pytest.mark.parametrize("provider", ["openai", "azure"])
def test_anthropic_version_is_refused_on_other_providers(provider: str) -> None:
    base = "https://myres.openai.azure.com" if provider == "azure" else "https://api.openai.com/v1"
    found = problems(doc({"provider": provider, "base_url": base, "anthropic_version": "2023-06-01"}))
    assert any(p.startswith("upstreams.u.anthropic_version:") and "provider: anthropic" in p for p in found), found


@pytest.mark.parametrize("provider", ["openai", "azure"])
def test_drop_unsupported_applies_to_every_provider_that_translates(provider: str) -> None:
    """OpenAI-dialect upstreams translate Anthropic clients' requests, so they take drop_unsupported too."""
    base = "https://myres.openai.azure.com" if provider == "azure" else "https://api.openai.com/v1"
    extra = {"api_version": "2024-10-21"} if provider == "azure" else {}
    config = config_from_dict(doc({"provider": provider, "base_url": base, "drop_unsupported": True, **extra}))
    assert config.upstreams["u"].drop_unsupported is True


def test_max_tokens_is_refused_on_deployments_and_models_without_an_anthropic_upstream() -> None:
    d = doc({"base_url": "https://api.openai.com/v1"}, {"upstream": "u", "max_tokens": 100}, max_tokens=200)
    found = problems(d)
    assert any(p.startswith("models.claude.deployments[0].max_tokens:") for p in found), found
    assert any(p.startswith("models.claude.max_tokens:") for p in found), found


def test_an_azure_deployment_name_is_refused_on_an_anthropic_upstream() -> None:
    found = problems(doc({"provider": "anthropic", "base_url": ROOT}, {"upstream": "u", "azure_deployment": "d"}))
    assert any(p.startswith("models.claude.deployments[0].azure_deployment:") for p in found), found
