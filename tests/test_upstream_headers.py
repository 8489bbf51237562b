"""Which client headers an upstream gets: the allow-list, what never passes whatever it says, and what the gateway adds."""

from __future__ import annotations

from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from tollgate.config import config_from_dict
from tollgate.upstream.pool import UpstreamClient, upstream_headers

# What the official openai SDK sends, plus what a tenant could try to steer the upstream with.
CLIENT = [
    ("Host", "gateway.example"),
    ("Accept", "application/json"),
    ("Accept-Language", "fr"),
    ("User-Agent", "OpenAI/Python 1.0"),
    ("X-Stainless-Lang", "python"),
    ("Content-Type", "application/json"),
    ("Content-Length", "42"),
    ("Accept-Encoding", "gzip"),
    ("Authorization", "Bearer tg_client_key"),
    ("OpenAI-Organization", "org-of-the-client"),
    ("OpenAI-Project", "proj-of-the-client"),
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Real-IP", "203.0.113.9"),
    ("Forwarded", "for=203.0.113.9"),
    ("X-Request-Id", "client-chosen"),
    ("X-Tollgate-Priority", "9"),
    ("X-Trace", "t-1"),
]


def sent(upstream: dict[str, Any], client: list[tuple[str, str]] = CLIENT) -> list[tuple[str, str]]:
    doc = {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-upstream", **upstream}},
        "models": {"m": {"deployments": [{"upstream": "u"}]}},
    }
    upstream = UpstreamClient(config_from_dict(doc, env={}).upstreams["u"])
    return upstream_headers(upstream, CIMultiDictProxy(CIMultiDict(client)), "198.51.100.7", "req_ours")


OURS = [
    ("Content-Type", "application/json"),
    ("Accept-Encoding", "identity"),
    ("Authorization", "Bearer sk-upstream"),
    ("X-Forwarded-For", "198.51.100.7"),  # the address the gateway settled on, never the client's claim
    ("x-request-id", "req_ours"),
]


def test_by_default_only_content_negotiation_and_the_user_agent_pass_then_the_gateways_own() -> None:
    assert sent({}) == [
        ("Accept", "application/json"),
        ("Accept-Language", "fr"),
        ("User-Agent", "OpenAI/Python 1.0"),
        *OURS,
    ]


def test_an_empty_allow_list_passes_nothing_of_the_client() -> None:
    assert sent({"forward_headers": []}) == OURS


def test_a_prefix_passes_its_names_but_never_one_that_never_comes_from_a_client() -> None:
    names = [name for name, _ in sent({"forward_headers": ["x-*"]})]
    assert names == ["X-Stainless-Lang", "X-Trace", *(name for name, _ in OURS)]


def test_organisation_and_feature_headers_come_from_the_config_only() -> None:
    headers = {"OpenAI-Organization": "org-of-the-operator", "anthropic-version": "2023-06-01"}
    client = [*CLIENT, ("anthropic-version", "1999-01-01"), ("anthropic-beta", "tools")]
    out = sent({"headers": headers, "forward_headers": ["anthropic-*"]}, client)
    assert [v for k, v in out if k.lower() == "openai-organization"] == ["org-of-the-operator"]
    assert [v for k, v in out if k.lower() == "anthropic-version"] == ["2023-06-01"]
    assert ("anthropic-beta", "tools") in out


def test_headers_named_in_connection_or_in_the_connection_nginx_relays_do_not_pass_even_when_allowed() -> None:
    client = [*CLIENT, ("Connection", "keep-alive, Accept-Language"), ("X-Tollgate-Connection", "close, user-agent")]
    assert sent({}, client) == [("Accept", "application/json"), *OURS]
