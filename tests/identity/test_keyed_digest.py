"""The API-key digest under identity.key_secret: the same HMAC-SHA256 the stored key hashes were made with."""

from __future__ import annotations

import hmac
import os

import pytest

from tollgate.config.identity import hash_key
from tollgate.identity.chain import KeyedSha256


@pytest.mark.parametrize("secret_size", [0, 1, 31, 32, 63, 64, 65, 200])
def test_the_keyed_digest_is_hmac_sha256_for_secrets_shorter_and_longer_than_a_block(secret_size: int) -> None:
    secret = os.urandom(secret_size)
    keyed = KeyedSha256(secret)
    for data in (b"", b"tg_x", os.urandom(64), os.urandom(1000)):
        assert keyed.digest(data) == hmac.digest(secret, data, "sha256")


def test_a_digest_leaves_the_states_as_they_were_for_the_next_key() -> None:
    keyed = KeyedSha256(b"server-secret")
    first = keyed.digest(b"tg_first")
    keyed.digest(b"tg_second")
    assert keyed.digest(b"tg_first") == first


def test_a_key_stored_under_the_secret_matches_the_runtime_digest_of_that_key() -> None:
    secret = b"example-only-secret-change-me-0123456789"
    stored = hash_key("tg_live-key", secret)
    assert stored == "hmac-sha256:" + KeyedSha256(secret).digest(b"tg_live-key").hex()
