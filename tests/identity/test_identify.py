"""The identify stage in-process: who a request is attributed to, and every way a client might try to move that."""

from __future__ import annotations

import pytest

from tollgate.errors import Forbidden, Unauthenticated
from tollgate.identity import client_ip

from .conftest import ACME_KEY, GLOBEX_KEY, SCOPED_KEY, SLEEPY_KEY, identity_doc
from .helpers import Identified, mocked_request


@pytest.fixture
def ident() -> Identified:
    return Identified(identity_doc())


@pytest.fixture
def trusted() -> Identified:
    doc = identity_doc()
    doc["listeners"]["public"]["trusted"] = True
    return Identified(doc)


def test_api_key_in_each_header_identifies_its_tenant_key_and_plan(ident: Identified) -> None:
    for headers in ({"Authorization": f"Bearer {ACME_KEY}"}, {"x-api-key": ACME_KEY}, {"api-key": ACME_KEY}):
        p = ident.principal(headers)
        assert (p.tenant, p.key_id, p.plan, p.via) == ("acme", "acme-main", "enterprise", "api_key")
        assert p.limits.monthly_requests == 1_000_000 and p.limits.concurrency == 50


def test_plaintext_declared_key_is_hashed_at_load_and_carries_its_model_scope(ident: Identified) -> None:
    p = ident.principal({"Authorization": f"Bearer {SCOPED_KEY}"})
    assert (p.tenant, p.key_id) == ("acme", "acme-scoped")
    assert p.allowed_models == frozenset({"gpt-4o-mini"})
    assert all(SCOPED_KEY not in repr(k) for k in ident.config.api_keys.values())


@pytest.mark.parametrize("header", ["X-Tenant-ID", "x-tenant-id"])
def test_spoofed_tenant_header_never_moves_a_key_to_another_tenant(ident: Identified, header: str) -> None:
    with pytest.raises(Forbidden) as exc:
        ident.principal({"Authorization": f"Bearer {GLOBEX_KEY}", header: "acme"})
    assert exc.value.code == "tenant_mismatch"
    assert ident.principal({"Authorization": f"Bearer {GLOBEX_KEY}", header: "globex"}).tenant == "globex"


def test_spoofed_subdomain_never_moves_a_key_to_another_tenant(ident: Identified) -> None:
    with pytest.raises(Forbidden):
        ident.principal({"Authorization": f"Bearer {GLOBEX_KEY}", "Host": "acme.llm.example.com"})
    with pytest.raises(Forbidden):
        ident.principal({"Authorization": f"Bearer {GLOBEX_KEY}", "Host": "ACME.llm.example.com:443"})
    assert (
        ident.principal({"Authorization": f"Bearer {ACME_KEY}", "Host": "acme.llm.example.com:8080"}).tenant == "acme"
    )
    # A host outside the base domains makes no claim at all.
    assert ident.principal({"Authorization": f"Bearer {GLOBEX_KEY}", "Host": "acme.example.org"}).tenant == "globex"


def test_spoofed_query_parameter_never_moves_a_key_to_another_tenant(ident: Identified) -> None:
    with pytest.raises(Forbidden):
        ident.principal({"Authorization": f"Bearer {GLOBEX_KEY}"}, path="/v1/chat/completions?tenant=acme")
    assert (
        ident.principal({"Authorization": f"Bearer {GLOBEX_KEY}"}, path="/v1/chat/completions?tenant=globex").tenant
        == "globex"
    )


def test_claims_alone_are_refused_on_an_untrusted_listener(ident: Identified) -> None:
    for kwargs in (
        {"headers": {"X-Tenant-ID": "acme"}},
        {"headers": {"Host": "acme.llm.example.com"}},
        {"path": "/v1/chat/completions?tenant=acme"},
    ):
        with pytest.raises(Unauthenticated):
            ident.principal(**kwargs)


def test_claims_alone_identify_on_a_trusted_listener_and_must_agree(trusted: Identified) -> None:
    p = trusted.principal({"X-Tenant-ID": "globex"})
    assert (p.tenant, p.key_id, p.plan) == ("globex", None, "personal")
    assert trusted.principal({"Host": "acme.llm.example.com"}).tenant == "acme"
    with pytest.raises(Forbidden):
        trusted.principal({"X-Tenant-ID": "globex", "Host": "acme.llm.example.com"})
    with pytest.raises(Unauthenticated):
        trusted.principal({"X-Tenant-ID": "nobody"})
    with pytest.raises(Forbidden):
        trusted.principal({"X-Tenant-ID": "sleepy"})
    # Even trusted, a credential's tenant beats nothing: a contradicting claim is refused.
    with pytest.raises(Forbidden):
        trusted.principal({"Authorization": f"Bearer {GLOBEX_KEY}", "X-Tenant-ID": "acme"})


def test_suspended_tenant_is_forbidden_with_a_clear_message(ident: Identified) -> None:
    with pytest.raises(Forbidden) as exc:
        ident.principal({"Authorization": f"Bearer {SLEEPY_KEY}"})
    assert exc.value.code == "tenant_suspended" and "suspended" in exc.value.message


def test_missing_and_malformed_credentials_are_unauthenticated(ident: Identified) -> None:
    for headers in ({}, {"Authorization": "Basic Zm9vOmJhcg=="}, {"Authorization": "Bearer"}, {"x-api-key": ""}):
        with pytest.raises(Unauthenticated):
            ident.principal(headers)


def test_error_messages_never_echo_the_key(ident: Identified) -> None:
    wrong = ACME_KEY[:-1] + "X"
    with pytest.raises(Unauthenticated) as exc:
        ident.principal({"Authorization": f"Bearer {wrong}"})
    assert wrong not in exc.value.message and ACME_KEY[:12] not in exc.value.message


def test_expired_key_is_unauthenticated_by_the_injected_clock() -> None:
    doc = identity_doc(
        tenants={"acme": {"plan": "personal", "keys": [{"id": "k", "key": ACME_KEY, "expires": 1_000_000}]}}
    )
    now = [999_999.0]
    ident = Identified(doc, clock=lambda: now[0])
    assert ident.principal({"x-api-key": ACME_KEY}).tenant == "acme"
    now[0] = 1_000_000.0
    with pytest.raises(Unauthenticated):
        ident.principal({"x-api-key": ACME_KEY})


def test_tenant_limit_overrides_and_model_list_replace_the_plans() -> None:
    doc = identity_doc(
        tenants={
            "acme": {
                "plan": "small_business",
                "limits": {"concurrency": 25, "tokens_per_minute": 90000},
                "allowed_models": ["gpt-4o"],
                "keys": [{"key": ACME_KEY}],
            }
        },
        plans={"small_business": {"monthly_requests": 150_000, "concurrency": 12, "allowed_models": ["gpt-4o-mini"]}},
    )
    p = Identified(doc).principal({"x-api-key": ACME_KEY})
    assert (p.limits.monthly_requests, p.limits.concurrency, p.limits.tokens_per_minute) == (150_000, 25, 90000)
    assert p.allowed_models == frozenset({"gpt-4o"}) and p.key_id == "acme-0"


def test_without_identity_sections_every_request_is_the_anonymous_principal() -> None:
    doc = identity_doc()
    del doc["identity"], doc["tenants"]
    ident = Identified(doc)
    assert ident.principal({"Authorization": "Bearer anything"}).tenant == "anonymous"


def test_client_ip_ignores_x_forwarded_for_from_an_untrusted_peer() -> None:
    req = mocked_request({"X-Forwarded-For": "198.51.100.7"}, peer="203.0.113.9")
    assert client_ip(req, ()) == "203.0.113.9"
    nets = Identified(_with_proxies(["10.0.0.0/8"])).identity.proxies
    assert client_ip(req, nets) == "203.0.113.9"


def test_client_ip_takes_the_first_untrusted_hop_behind_trusted_proxies() -> None:
    nets = Identified(_with_proxies(["10.0.0.0/8", "192.0.2.1"])).identity.proxies
    # The client wrote the first entry itself; only what our proxies appended counts.
    req = mocked_request(
        [("X-Forwarded-For", "1.2.3.4, 198.51.100.7"), ("X-Forwarded-For", "192.0.2.1")], peer="10.1.2.3"
    )
    assert client_ip(req, nets) == "198.51.100.7"
    garbled = mocked_request({"X-Forwarded-For": "1.2.3.4, not-an-ip"}, peer="10.1.2.3")
    assert client_ip(garbled, nets) == "10.1.2.3"


def test_spoofed_x_forwarded_for_does_not_change_the_tenant_or_the_client_ip(ident: Identified) -> None:
    req = mocked_request({"Authorization": f"Bearer {GLOBEX_KEY}", "X-Forwarded-For": "10.9.9.9"}, peer="203.0.113.9")
    from tollgate.identity import authenticate

    assert authenticate(req, ident.identity, ident.directory).tenant == "globex"
    assert client_ip(req, ident.identity.proxies) == "203.0.113.9"


def _with_proxies(proxies: list[str]) -> dict:  # type: ignore[type-arg]
    doc = identity_doc()
    doc["listeners"]["public"]["trusted_proxies"] = proxies
    return doc
