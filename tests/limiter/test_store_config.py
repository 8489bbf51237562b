"""The store section: short and named forms, routing, validation with field paths, and the built limiter."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.clock import ManualClock
from tollgate.config.store import StoreConfig, parse_store
from tollgate.config.validation import Problems
from tollgate.limiter import build_limiter
from tollgate.limiter.store import EmbeddedEngine, RedisEngine


def parse(doc: Any) -> tuple[StoreConfig, list[str]]:
    problems = Problems()
    config = parse_store(doc, problems)
    return config, problems.lines


def test_no_store_section_means_one_embedded_store() -> None:
    config, problems = parse(None)
    assert problems == []
    assert config.backend == "embedded" and list(config.stores) == ["default"] and config.instances == 1


def test_short_form_names_a_single_default_store() -> None:
    config, problems = parse(
        {
            "backend": "redis",
            "url": "redis://127.0.0.1:6379/0",
            "timeout": "30ms",
            "breaker": {"failures": 5, "open_for": "2s"},
            "instances": 4,
        }
    )
    assert problems == []
    s = config.stores["default"]
    assert (s.backend, s.url, s.timeout, s.breaker.failures, s.breaker.open_for) == (
        "redis",
        "redis://127.0.0.1:6379/0",
        0.03,
        5,
        2.0,
    )
    assert config.instances == 4 and config.timeout == 0.03


def test_named_stores_with_routing_by_plan_and_tenant() -> None:
    config, problems = parse(
        {
            "stores": {
                "shared": {"backend": "redis", "url": "redis://10.0.0.5:6379/0"},
                "dedicated-acme": {"backend": "redis", "url": "redis://10.0.0.9:6379", "cluster": True},
            },
            "default": "shared",
            "routing": {"plans": {"enterprise": "dedicated-acme"}, "tenants": {"acme": "dedicated-acme"}},
        }
    )
    assert problems == []
    assert config.default == "shared" and config.stores["dedicated-acme"].cluster
    assert dict(config.routing.tenants) == {"acme": "dedicated-acme"}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"backend": "redis"}, "store.url: is required when backend is redis"),
        ({"backend": "redis", "url": "http://x"}, "store.url: must be a redis://, rediss:// or unix:// URL"),
        ({"backend": "embedded", "cluster": True}, "store.cluster: is only for backend: redis"),
        ({"backend": "redis", "url": "redis://x", "timeout": "1m"}, "store.timeout: must be at most 10s"),
        ({"backend": "mongo"}, "store.backend: must be one of embedded, redis"),
        ({"instances": 0}, "store.instances: must be >= 1"),
        ({"stores": {"a": {}, "b": {}}}, "store.default: is required when several stores are named"),
        ({"stores": {"a": {}}, "default": "b"}, "store.default: names no store"),
        (
            {"stores": {"a": {}}, "routing": {"tenants": {"acme": "nowhere"}}},
            "store.routing.tenants.acme: names no store 'nowhere'",
        ),
        (
            {"stores": {"a": {"backend": "redis", "url": "redis://x", "breaker": {"failures": 0}}}},
            "store.stores.a.breaker.failures: must be >= 1",
        ),
        ({"stores": {"a": {}}, "url": "redis://x"}, "store.url: belongs inside a named store"),
        ({"stores": {"a": {"bogus": 1}}}, "store.stores.a.bogus: unknown key"),
        ({"key_prefix": "a:b"}, "store.key_prefix:"),
        ({"backend": "redis", "url": "redis://x", "queue_timeout": "1m"}, "store.queue_timeout: must be at most 10s"),
        (
            {"backend": "redis", "url": "redis://x", "queue_timeout": "0s"},
            "store.queue_timeout: must be a positive duration",
        ),
        (
            {"backend": "redis", "url": "redis://x", "breaker": {"open_for": "1s", "open_for_max": "500ms"}},
            "store.breaker.open_for_max: must be at least open_for",
        ),
    ],
)
def test_invalid_store_sections_name_the_offending_field(doc: dict[str, Any], expected: str) -> None:
    _, problems = parse(doc)
    assert any(p.startswith(expected) for p in problems), problems


def test_the_queue_bound_and_the_breaker_backoff_have_defaults_and_can_be_set() -> None:
    config, problems = parse({"backend": "redis", "url": "redis://127.0.0.1:6379/0"})
    assert problems == []
    s = config.stores["default"]
    assert (s.timeout, s.queue_timeout, s.breaker.failures, s.breaker.open_for, s.breaker.open_for_max) == (
        0.05,
        2.0,
        3,
        0.1,
        2.0,
    )
    config, problems = parse(
        {
            "backend": "redis",
            "url": "redis://127.0.0.1:6379/0",
            "queue_timeout": "500ms",
            "breaker": {"open_for": "50ms", "open_for_max": "5s"},
        }
    )
    assert problems == []
    s = config.stores["default"]
    assert (s.queue_timeout, s.breaker.open_for, s.breaker.open_for_max) == (0.5, 0.05, 5.0)
    config, problems = parse({"backend": "redis", "url": "redis://x", "breaker": {"open_for": "3s"}})
    assert problems == [] and config.stores["default"].breaker.open_for_max == 3.0  # a longer open_for: no backoff


async def test_the_factory_passes_the_queue_bound_and_the_breaker_backoff_to_the_redis_engine() -> None:
    config, _ = parse(
        {
            "backend": "redis",
            "url": "redis://127.0.0.1:1/0",
            "queue_timeout": "300ms",
            "breaker": {"open_for": "20ms", "open_for_max": "80ms"},
        }
    )
    clock = ManualClock()
    limiter = build_limiter(config, clock=clock)
    try:
        engine = limiter.engine()
        assert isinstance(engine, RedisEngine)
        assert engine.queue_timeout == 0.3 and engine.breaker.open_for == 0.02
        for _ in range(3):
            engine.breaker.failure()
        for expected in (0.02, 0.04, 0.08, 0.08):  # each failed probe doubles the wait, up to the cap
            assert engine.breaker.open_for == expected
            clock.advance(expected + 0.001)
            assert engine.breaker.acquire()  # the probe, which fails
            engine.breaker.failure()
    finally:
        await limiter.close()


async def test_the_factory_builds_one_engine_per_store_and_routes_tenants() -> None:
    config, problems = parse(
        {
            "stores": {"shared": {}, "big": {"backend": "redis", "url": "redis://127.0.0.1:1/0"}},
            "default": "shared",
            "routing": {"plans": {"enterprise": "big"}, "tenants": {"acme": "big"}},
        }
    )
    assert problems == []
    limiter = build_limiter(config, clock=ManualClock())
    try:
        assert isinstance(limiter.engine("shared"), EmbeddedEngine)
        assert isinstance(limiter.engine("big"), RedisEngine)
        assert limiter.store_for(tenant="acme") == "big"
        assert limiter.store_for(tenant="other", plan="enterprise") == "big"
        assert limiter.store_for(tenant="other", plan="free") == "shared"
    finally:
        await limiter.close()


def test_the_whole_config_parser_uses_the_store_section() -> None:
    from tollgate.config.document import parse_config

    problems = Problems()
    doc = {
        "upstreams": {"u": {"base_url": "http://127.0.0.1:9"}},
        "models": {"m": {"deployments": [{"upstream": "u"}]}},
        "store": {"stores": {"shared": {}}, "instances": 3},
    }
    config = parse_config(doc, problems)
    assert problems.lines == [] and config.store.instances == 3 and config.store.default == "shared"
