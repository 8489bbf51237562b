"""Leader failover on a real Redis, the history over the admin API, the signed webhook and the Kubernetes scale call."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from tollgate.admin import Probes, make_admin_app
from tollgate.clock import ManualClock
from tollgate.config import config_from_dict
from tollgate.config.scaling import Actuator as ActuatorConfig
from tollgate.process.public import healthz, public_lifecycle, readyz
from tollgate.process.server import reload_here
from tollgate.runtime.state import GatewayState
from tollgate.scaling.actuators import SIGNATURE_HEADER, KubernetesScale, Webhook
from tollgate.scaling.board import RedisBoard
from tollgate.scaling.lease import RedisLease

from ..support.processes import gateway_config
from .support import Harness, pool

TOKEN = "admin-token-for-the-scaling-tests-0123"


async def test_a_second_decider_takes_over_within_one_lease_when_the_leader_stops_renewing(redis_url: str) -> None:
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    try:
        clock = ManualClock()
        ttl = 1.0  # real seconds: the lease lives in Redis
        deciders = [
            Harness(
                {"p": pool(cooldown_up=0.001)},
                board=RedisBoard(c, "t"),
                lease=RedisLease(c, "t:scaling:leader", f"process-{i}", ttl),
                clock=clock,
            )
            for i, c in enumerate(clients)
        ]
        a, b = deciders
        await a.load("p", inflight=40)
        await a.scaler.tick()
        await b.scaler.tick()
        assert a.scaler.leader and not b.scaler.leader
        assert a.scaler.pools["p"].replicas == 2 and "p" not in b.scaler.pools
        # The leader stops (never renews, never releases): b takes over once the lease expired, and carries on
        # from the replicas a left in Redis.
        for _ in range(40):
            await asyncio.sleep(0.1)
            clock.advance(1)
            await b.load("p", inflight=40)
            await b.scaler.tick()
            if b.scaler.leader:
                break
        assert b.scaler.leader
        assert b.scaler.pools["p"].replicas == 3  # 2 (from a) * 1.5
        # a comes back: it does not decide while b holds the lease.
        await a.scaler.tick()
        assert not a.scaler.leader
        # b gives the lease up on close (compare-and-delete): a takes it at once.
        await b.scaler.close()
        await a.scaler.tick()
        assert a.scaler.leader
        # Samples of both processes were aggregated by the leader.
        samples = await a.board.collect("p", clock.time(), 30)
        assert {s.inflight for s in samples} >= {40}
    finally:
        for c in clients:
            await c.aclose()


async def test_the_admin_api_serves_the_pool_state_and_its_history_newest_first(
    aiohttp_client: Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]],
) -> None:
    doc = gateway_config(
        "http://127.0.0.1:9/v1",
        listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": TOKEN}},
        scaling={
            "pools": {"chat": {"model": "gpt-4o-mini", "targets": {"inflight_per_replica": 1}, "cooldown_up": "1s"}}
        },
    )
    clock = ManualClock()
    state = GatewayState(config_from_dict(doc), clock=clock)
    async with public_lifecycle(state):
        client = await aiohttp_client(make_admin_app(state, probes=Probes(healthz, readyz), reload=reload_here))
        scaler = state.scaler
        for dstate in state.runtime.routes["gpt-4o-mini"].states:
            dstate.inflight = 5  # five requests in flight on the pool's one deployment
        for _ in range(3):
            clock.advance(2)
            await scaler.tick()
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with client.get("/admin/scaling", headers=auth) as r:
            assert r.status == 200
            body = await r.json()
        assert body["leader"] is True
        [chat] = body["pools"]
        assert chat["replicas"] == 5 and chat["last_decision"]["signals"]["inflight"] == 5  # 1 -> 2 -> 3 -> 5
        async with client.get("/admin/scaling/chat/history?limit=2", headers=auth) as r:
            page = await r.json()
        assert [(d["from"], d["to"]) for d in page["data"]] == [(3, 5), (2, 3)] and page["has_more"] is True
        async with client.get(f"/admin/scaling/chat/history?cursor={page['next_cursor']}", headers=auth) as r:
            rest = await r.json()
        assert [(d["from"], d["to"]) for d in rest["data"]] == [(1, 2)]
        async with client.get("/admin/scaling/nope/history", headers=auth) as r:
            assert r.status == 404


async def test_the_webhook_is_signed_over_its_body_with_a_timestamp_and_retried() -> None:
    secret = "webhook-secret-0123456789"
    clock = ManualClock(wall=1_800_000_000)
    seen: list[dict[str, Any]] = []

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        parts = dict(p.split("=", 1) for p in request.headers[SIGNATURE_HEADER].split(","))
        expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(parts["v1"], expected) or abs(int(parts["t"]) - 1_800_000_000) > 300:
            return web.Response(status=401)
        seen.append(orjson.loads(body))
        return web.Response(status=503 if len(seen) == 1 else 204)  # the first delivery fails: retried

    app = web.Application()
    app.router.add_post("/scale", receive)
    async with TestServer(app) as server:
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        config = ActuatorConfig(type="webhook", url=str(server.make_url("/scale")), secret=secret, backoff=0.5)
        hook = Webhook(config, clock, sleep)
        await hook.apply("chat", 6, {"from": 4, "to": 6, "reason": "load"})
        await hook.close()
    assert [d["replicas"] for d in seen] == [6, 6] and seen[1]["pool"] == "chat" and seen[1]["from"] == 4
    assert sleeps == [0.5]


async def test_the_kubernetes_scale_subresource_gets_the_patch_with_the_service_account_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("sa-token-abc\n")
    (tmp_path / "namespace").write_text("models\n")
    patches: list[tuple[str, str, dict[str, Any]]] = []

    async def scale(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer sa-token-abc":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        assert request.content_type == "application/merge-patch+json"
        patches.append((request.match_info["ns"], request.match_info["name"], await request.json()))
        return web.json_response({"kind": "Scale", "spec": {"replicas": 7}})

    app = web.Application()
    app.router.add_patch("/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale", scale)
    async with TestServer(app) as server:
        config = ActuatorConfig(
            type="kubernetes",
            deployment="vllm-llama",
            api_server=str(server.make_url("")).rstrip("/"),
            token_path=str(tmp_path / "token"),
            namespace_path=str(tmp_path / "namespace"),
        )
        actuator = KubernetesScale(config)
        await actuator.apply("llama", 7, {})
        await actuator.close()
    assert patches == [("models", "vllm-llama", {"spec": {"replicas": 7}})]
