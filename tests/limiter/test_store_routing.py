"""Store routing by tier: a routed tenant's counters live on its own Redis, everyone else's on the shared one."""

from __future__ import annotations

from tests.support.redis import RedisServer, redis_server
from tollgate.clock import SystemClock
from tollgate.config.store import parse_store
from tollgate.config.validation import Problems
from tollgate.limiter import LimitSpec, build_limiter


async def test_a_tenant_routed_to_a_dedicated_store_keeps_its_counters_there(redis_standalone: RedisServer) -> None:
    redis_standalone.flushall()
    with redis_server() as dedicated:
        problems = Problems()
        config = parse_store(
            {
                "stores": {
                    "shared": {"backend": "redis", "url": redis_standalone.url},
                    "dedicated-acme": {"backend": "redis", "url": dedicated.url},
                },
                "default": "shared",
                "routing": {"tenants": {"acme": "dedicated-acme"}, "plans": {"enterprise": "dedicated-acme"}},
            },
            problems,
        )
        assert problems.lines == []
        limiter = build_limiter(config, clock=SystemClock())
        try:
            for tenant, plan in (("acme", "free"), ("globex", "free"), ("initech", "enterprise")):
                spec = LimitSpec(name="rpm", kind="sliding_window", limit=10, tenant=tenant)
                d = await limiter.admit([spec], store=limiter.store_for(tenant=tenant, plan=plan))
                assert d.allowed and not d.degraded
        finally:
            await limiter.close()
        with dedicated.client() as c:
            on_dedicated = sorted(k.decode() for k in c.scan_iter())
        with redis_standalone.client() as c:
            on_shared = sorted(k.decode() for k in c.scan_iter())
    assert [k.split("}")[0] for k in on_dedicated] == ["tg:{t.acme", "tg:{t.initech"]
    assert [k.split("}")[0] for k in on_shared] == ["tg:{t.globex"]
