"""An API key's remembered digest (tollgate/identity/chain.py, ``_by_key``) answers exactly what hashing it again
answers: the same principal, the same refusals, and wrong keys are never kept."""

from __future__ import annotations

import hashlib

import pytest

from tollgate.errors import Unauthenticated
from tollgate.identity import chain

from .conftest import ACME_KEY, GLOBEX_KEY, identity_doc
from .helpers import Identified


def _counting(ident: Identified) -> list[bytes]:
    """Count the identifier chain's hashes: each hashed key is appended."""
    hashed: list[bytes] = []
    digest = ident.identity.digest

    def counted(data: bytes) -> bytes:
        hashed.append(data)
        return digest(data)

    ident.identity.digest = counted
    return hashed


def test_a_key_that_authenticated_is_not_hashed_again_and_names_the_same_principal() -> None:
    ident = Identified(identity_doc())
    hashed = _counting(ident)
    first = ident.principal({"Authorization": f"Bearer {ACME_KEY}"})
    again = ident.principal({"x-api-key": ACME_KEY})
    assert again is first
    assert hashed == [ACME_KEY.encode()]


def test_a_wrong_key_is_never_kept_and_is_hashed_and_refused_every_time() -> None:
    ident = Identified(identity_doc())
    hashed = _counting(ident)
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            ident.principal({"Authorization": f"Bearer {ACME_KEY}x"})
    assert len(hashed) == 3
    assert ident.identity.digests == {}


def test_a_remembered_key_gone_from_the_directory_is_refused() -> None:
    ident = Identified(identity_doc())
    assert ident.principal({"Authorization": f"Bearer {ACME_KEY}"}).tenant == "acme"
    assert ACME_KEY in ident.identity.digests
    del ident.directory.keys[hashlib.sha256(ACME_KEY.encode()).digest()]
    with pytest.raises(Unauthenticated):
        ident.principal({"Authorization": f"Bearer {ACME_KEY}"})


def test_past_the_bound_the_remembered_keys_are_dropped_and_still_authenticate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chain, "DIGESTS_KEPT", 1)
    ident = Identified(identity_doc())
    for key, tenant in [(ACME_KEY, "acme"), (GLOBEX_KEY, "globex"), (ACME_KEY, "acme"), (ACME_KEY, "acme")]:
        assert ident.principal({"Authorization": f"Bearer {key}"}).tenant == tenant
        assert len(ident.identity.digests) <= 1
