"""Key hygiene: encoded tenant and scope values never collide, never escape their hash tag, never move slots."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from tollgate.clock import SystemClock
from tollgate.limiter import KeyBuilder, Limiter, LimitSpec, encode_value, tenant_key_pattern
from tollgate.limiter.store import RedisEngine

NASTY = [
    "acme",
    "{acme}",
    "a}b{c",
    "a:b",
    "*",
    "a*b?[c]",
    "\x00",
    "a\x00b",
    "ü",
    "租户",
    "🦊",
    "",
    " ",
    "%41",
    "A",
    "~x",
    "=",
    ",",
    "x" * 10_240,
]


def spec(tenant: str | None = None, value: str = "v", name: str = "rpm", kind: str = "sliding_window") -> LimitSpec:
    return LimitSpec(
        name=name, kind=kind, limit=10, window_ms=60_000, tenant=tenant or None, scope_key=(("key", value),)
    )  # type: ignore[arg-type]


def tag_of(key: str) -> str:
    return key[key.index("{") + 1 : key.index("}")]


def test_encoded_values_contain_no_braces_colons_globs_or_control_bytes() -> None:
    for value in NASTY:
        enc = encode_value(value)
        assert not set(enc) & set("{}:*?[]\x00 =,"), (value, enc)
        assert enc.isascii() and len(enc) <= 64


def test_distinct_nasty_values_give_distinct_keys() -> None:
    keys = KeyBuilder()
    tenant_keys = {keys.key(spec(tenant=v)) for v in NASTY if v}
    scope_keys = {keys.key(spec(value=v)) for v in NASTY}
    assert len(tenant_keys) == len([v for v in NASTY if v])
    assert len(scope_keys) == len(NASTY)


def test_every_key_has_exactly_one_hash_tag_and_hashes_to_its_slot() -> None:
    keys = KeyBuilder()
    for v in NASTY:
        for s in ([spec(tenant=v)] if v else []) + [spec(value=v)]:
            key, tag = keys.key_and_tag(s)
            assert key.count("{") == 1 and key.count("}") == 1
            assert tag_of(key) == tag
            assert key_slot(key.encode()) == key_slot(f"{{{tag}}}".encode())
            assert len(key) < 300


def test_a_tenants_limits_all_share_one_slot_whatever_their_scope() -> None:
    keys = KeyBuilder()
    slots = {
        key_slot(keys.key(LimitSpec(name=n, kind=k, limit=5, tenant="a}{:*", scope_key=(("key", v),))).encode())  # type: ignore[arg-type]
        for n in ("rpm", "tpm")
        for k in ("sliding_window", "gcra", "concurrency")
        for v in NASTY
    }
    assert len(slots) == 1


def test_a_changed_window_gets_a_fresh_key_so_old_counters_are_never_misread() -> None:
    keys = KeyBuilder()
    a = LimitSpec(name="rpm", kind="sliding_window", limit=5, window_ms=60_000, tenant="t")
    b = LimitSpec(name="rpm", kind="sliding_window", limit=5, window_ms=1_000, tenant="t")
    c = LimitSpec(name="rpm", kind="gcra", limit=5, window_ms=60_000, tenant="t")
    assert len({keys.key(a), keys.key(b), keys.key(c)}) == 3


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1), st.text(min_size=1))
def test_encoding_is_injective_and_slot_safe_for_any_text(a: str, b: str) -> None:
    keys = KeyBuilder()
    ka, kb = keys.key(spec(tenant=a)), keys.key(spec(tenant=b))
    assert (ka == kb) == (a == b)
    assert key_slot(ka.encode()) == key_slot(f"{{t.{encode_value(a)}}}".encode())


async def test_nasty_tenants_and_scopes_are_admitted_on_a_cluster_without_crossslot(redis_cluster_nodes) -> None:  # type: ignore[no-untyped-def]
    engine = RedisEngine(redis_cluster_nodes.url, clock=SystemClock(), cluster=True, timeout=2.0)
    limiter = Limiter({"c": engine}, clock=SystemClock())
    try:
        for v in NASTY:
            specs = [
                spec(tenant=v or None, value=v),
                spec(tenant=v or None, value=v, name="tpm", kind="gcra"),
                spec(value=v, name="ip"),
            ]
            d = await limiter.admit(specs)
            assert d.allowed and not d.degraded, v
        assert engine.stats.failures == 0
    finally:
        await limiter.close()


def test_the_tenant_pattern_matches_every_key_of_that_tenant_and_no_other() -> None:
    import fnmatch

    keys = KeyBuilder()
    mine = [keys.key(spec(tenant="a*b", value=v)) for v in ("1", "2")]
    other = keys.key(spec(tenant="a*bc", value="1"))
    pattern = tenant_key_pattern("a*b")
    assert all(fnmatch.fnmatchcase(k, pattern) for k in mine)
    assert not fnmatch.fnmatchcase(other, pattern)
