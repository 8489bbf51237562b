"""Identity micro-benchmarks: per-request identification cost, and loading 100,000 tenants.

    PYTHONPATH=. python benchmarks/identity_bench.py [--tenants 100000] [--record benchmarks/RESULTS.md]

Figures are medians of interleaved batches, in-process (no HTTP), so they show
the identify stage alone: one SHA-256, one dict lookup and one constant-time
compare for an API key (the hash an HMAC-SHA256 with identity.key_secret set); a dict hit for a
cached JWT.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDict

from tollgate.config import config_from_dict
from tollgate.config.identity import hash_key
from tollgate.identity import Directory, IdentityRuntime, authenticate
from tollgate.registry.stores import FileStore

__all__ = ["build", "main", "per_call_us", "tenant_records"]


def tenant_records(n: int, secret: bytes | None = None) -> tuple[dict[str, Any], list[str]]:
    """Registry records for ``n`` tenants with one key each, and the keys (hashed under ``secret`` when given, as
    with ``identity.key_secret``)."""
    records: dict[str, Any] = {}
    keys: list[str] = []
    for i in range(n):
        tid = f"t{i:06d}"
        key = f"tg_bench-key-{i:06d}-0123456789abcdefghijklmnop"
        keys.append(key)
        records[f"t:{tid}"] = {"name": tid, "plan": "personal", "status": "active", "created": 0}
        records[f"k:k{i:06d}"] = {
            "id": f"k{i:06d}",
            "tenant": tid,
            "key_hash": hash_key(key, secret),
            "name": "",
            "created": 0,
        }
    return records, keys


def build(doc_extra: dict[str, Any] | None = None) -> Any:
    doc: dict[str, Any] = {
        "upstreams": {"mock": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"gpt-4o-mini": {"deployments": [{"upstream": "mock"}]}},
        "identity": {"chain": ["api_key", "header"]},
        "tenants": {},
    }
    doc.update(doc_extra or {})
    return config_from_dict(doc, env={})


def per_call_us(fn: Callable[[], Any], *, calls: int = 20_000, rounds: int = 7) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


def _request(headers: dict[str, str]) -> Any:
    return make_mocked_request("POST", "/v1/chat/completions", headers=CIMultiDict(headers))


def run(tenants: int) -> dict[str, float]:
    out: dict[str, float] = {}
    config = build()
    identity = IdentityRuntime(config)
    records, keys = tenant_records(tenants)
    small = Directory(config, dict(list(records.items())[:20]))
    started = time.perf_counter()
    big = Directory(config, records)
    out["directory_build_s"] = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp) / "registry.json")
        started = time.perf_counter()
        asyncio.run(store.write(records))
        out["file_write_s"] = time.perf_counter() - started
        started = time.perf_counter()
        loaded = asyncio.run(FileStore(Path(tmp) / "registry.json").load())
        Directory(config, loaded.records)
        out["file_load_and_build_s"] = time.perf_counter() - started

    req_small = _request({"Authorization": f"Bearer {keys[5]}"})
    req_big = _request({"Authorization": f"Bearer {keys[tenants // 2]}"})
    req_wrong = _request({"Authorization": "Bearer tg_bench-key-wrong-0123456789abcdefghijklmnopq"})
    out["api_key_us_20_tenants"] = per_call_us(lambda: authenticate(req_small, identity, small))
    out[f"api_key_us_{tenants}_tenants"] = per_call_us(lambda: authenticate(req_big, identity, big))

    def wrong() -> None:
        try:
            authenticate(req_wrong, identity, big)
        except Exception:
            pass

    out["wrong_key_us"] = per_call_us(wrong)

    # identity.key_secret set: the stored hashes are HMAC-SHA256 under it, and so is each request's key
    secret = "bench-secret-0123456789abcdefghijklmnop"
    keyed_config = build({"identity": {"chain": ["api_key", "header"], "key_secret": secret}})
    keyed_records, keyed_keys = tenant_records(20, secret.encode())
    keyed = Directory(keyed_config, keyed_records)
    req_keyed = _request({"Authorization": f"Bearer {keyed_keys[5]}"})
    keyed_identity = IdentityRuntime(keyed_config)
    assert authenticate(req_keyed, keyed_identity, keyed).tenant == "t000005"
    out["api_key_hmac_us_20_tenants"] = per_call_us(lambda: authenticate(req_keyed, keyed_identity, keyed))

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    jwt_config = build(
        {
            "identity": {
                "chain": ["jwt"],
                "jwt": {"keys": [{"kid": "rs", "algorithm": "RS256", "public_key": pem}], "audience": "tollgate"},
            }
        }
    )
    jwt_identity = IdentityRuntime(jwt_config)
    token = jwt.encode(
        {"tenant": "t000005", "sub": "u", "aud": "tollgate", "exp": int(time.time()) + 3600},
        private,
        algorithm="RS256",
        headers={"kid": "rs"},
    )
    jwt_dir = Directory(jwt_config, dict(list(records.items())[:20]))
    req_jwt = _request({"Authorization": f"Bearer {token}"})
    out["jwt_cached_us"] = per_call_us(lambda: authenticate(req_jwt, jwt_identity, jwt_dir))
    assert jwt_identity.jwt is not None

    def uncached() -> None:
        jwt_identity.jwt.cache.clear()  # type: ignore[union-attr]
        authenticate(req_jwt, jwt_identity, jwt_dir)

    out["jwt_uncached_rs256_us"] = per_call_us(uncached, calls=500, rounds=5)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--record", help="append an Identity section to this RESULTS.md")
    args = parser.parse_args(argv)
    figures = run(args.tenants)
    for name, value in figures.items():
        print(f"{name:32} {value:10.3f}")
    if args.record:
        lines = [
            "",
            f"## Identity, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            "",
            f"- Machine: {platform.machine()}, {platform.processor() or 'cpu'}; Python {sys.version.split()[0]}; in-process, `python benchmarks/identity_bench.py --tenants {args.tenants}`",
            "",
            "| figure | value |",
            "|---|---:|",
            *[f"| {k} | {v:.3f} |" for k, v in figures.items()],
        ]
        with open(args.record, "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
