"""An upstream's provider: openai by default, unchanged; azure with its api_version, api-key and deployments; bad ones refused at load naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tollgate.config import config_from_dict, load_config
from tollgate.errors import ConfigError

RESOURCE = "https://myres.openai.azure.com"


def doc(upstream: dict[str, Any], *deployments: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstreams": {"u": {"api_key": "k", **upstream}, "plain": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"gpt-4o": {"deployments": list(deployments) or [{"upstream": "u"}]}},
    }


def problems(d: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(d, env={})
    return info.value.problems


def test_an_upstream_is_openai_by_default_and_keeps_todays_paths_and_bearer_credential() -> None:
    config = config_from_dict(doc({"base_url": "https://api.openai.com/v1/"}), env={})
    upstream = config.upstreams["u"]
    assert (upstream.provider, upstream.api_version, upstream.auth_header) == ("openai", None, "authorization")
    assert upstream.base_url == "https://api.openai.com/v1"
    (deployment,) = config.models["gpt-4o"].deployments
    assert deployment.paths is None and deployment.model == "gpt-4o"


def test_an_azure_deployment_url_names_the_deployment_and_the_api_version() -> None:
    d = doc(
        {"provider": "azure", "base_url": RESOURCE, "api_version": "2025-04-01-preview"},
        {"upstream": "u", "azure_deployment": "my-gpt4o"},
    )
    config = config_from_dict(d, env={})
    assert config.upstreams["u"].auth_header == "api-key"
    (deployment,) = config.models["gpt-4o"].deployments
    assert deployment.model == "gpt-4o"
    assert dict(deployment.paths or {}) == {
        "/chat/completions": "/openai/deployments/my-gpt4o/chat/completions?api-version=2025-04-01-preview",
        "/completions": "/openai/deployments/my-gpt4o/completions?api-version=2025-04-01-preview",
        "/embeddings": "/openai/deployments/my-gpt4o/embeddings?api-version=2025-04-01-preview",
        "/images/generations": "/openai/deployments/my-gpt4o/images/generations?api-version=2025-04-01-preview",
        "/audio/speech": "/openai/deployments/my-gpt4o/audio/speech?api-version=2025-04-01-preview",
        "/audio/transcriptions": "/openai/deployments/my-gpt4o/audio/transcriptions?api-version=2025-04-01-preview",
    }


def test_the_azure_deployment_defaults_to_the_model_name() -> None:
    d = doc(
        {"provider": "azure", "base_url": RESOURCE, "api_version": "2024-10-21"},
        {"upstream": "u", "model": "gpt-4o-2024-08-06"},
    )
    (deployment,) = config_from_dict(d, env={}).models["gpt-4o"].deployments
    assert (deployment.paths or {})["/chat/completions"] == (
        "/openai/deployments/gpt-4o-2024-08-06/chat/completions?api-version=2024-10-21"
    )


def test_without_api_version_the_v1_api_takes_the_deployment_as_the_bodys_model() -> None:
    d = doc({"provider": "azure", "base_url": RESOURCE}, {"upstream": "u", "azure_deployment": "my-gpt4o"})
    (deployment,) = config_from_dict(d, env={}).models["gpt-4o"].deployments
    assert deployment.model == "my-gpt4o"
    assert (deployment.paths or {})["/embeddings"] == "/openai/v1/embeddings"


def test_an_unquoted_yaml_api_version_is_read_as_its_text(tmp_path: Path) -> None:
    path = tmp_path / "azure.yaml"
    path.write_text(
        f"upstreams:\n  u: {{provider: azure, base_url: '{RESOURCE}', api_version: 2024-10-21}}\n"
        "models:\n  gpt-4o: {deployments: [{upstream: u}]}\n"
    )
    assert load_config(path, env={}).upstreams["u"].api_version == "2024-10-21"


@pytest.mark.parametrize(
    ("upstream", "deployment", "expected"),
    [
        (
            {"provider": "bedrock", "base_url": RESOURCE},
            {},
            "upstreams.u.provider: must be one of openai, azure, anthropic (got 'bedrock')",
        ),
        (
            {"base_url": "http://127.0.0.1:9/v1", "api_version": "2024-10-21"},
            {},
            "upstreams.u.api_version: applies only to provider: azure (this upstream's provider is openai)",
        ),
        (
            {"provider": "azure", "base_url": RESOURCE, "api_version": "2024-13-01"},
            {},
            "upstreams.u.api_version: '2024-13-01' is not an Azure api-version such as 2024-10-21 or 2025-04-01-preview",
        ),
        (
            {"provider": "azure", "base_url": RESOURCE, "api_version": "v1"},
            {},
            "upstreams.u.api_version: 'v1' is not an Azure api-version such as 2024-10-21 or 2025-04-01-preview",
        ),
        (
            {"provider": "azure", "base_url": RESOURCE, "auth_header": "authorization"},
            {},
            "upstreams.u.auth_header: an Azure upstream sends its key as api-key (leave auth_header out)",
        ),
        (
            {"provider": "azure", "base_url": f"{RESOURCE}/openai/v1"},
            {},
            "upstreams.u.base_url: is the Azure resource endpoint, such as https://myres.openai.azure.com: "
            "the gateway adds /openai/...",
        ),
        (
            {"base_url": "http://127.0.0.1:9/v1"},
            {"azure_deployment": "my-gpt4o"},
            "models.gpt-4o.deployments[0].azure_deployment: applies only to a provider: azure upstream ('u' is openai)",
        ),
        (
            {"provider": "azure", "base_url": RESOURCE},
            {"azure_deployment": "my/../deployment"},
            "models.gpt-4o.deployments[0].azure_deployment: 'my/../deployment' does not match "
            "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
        ),
    ],
    ids=[
        "unknown provider",
        "api_version off Azure",
        "api_version not a date",
        "api_version not dated",
        "Bearer on Azure",
        "Azure base_url with a path",
        "azure_deployment off Azure",
        "azure_deployment not a name",
    ],
)
def test_bad_provider_fields_fail_at_load_naming_the_field(
    upstream: dict[str, Any], deployment: dict[str, Any], expected: str
) -> None:
    assert problems(doc(upstream, {"upstream": "u", **deployment})) == [expected]
