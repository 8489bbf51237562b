"""Usage per end user through real processes: the admin API's breakdown, one end user's figures, the cap on how many are kept,
and no end user in the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ..support.processes import Proc
from ..support.redis import RedisServer
from .conftest import ACME_KEY, ADMIN_TOKEN, PRICES, Admin, accounting_doc, gateway, wait_until

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

AMOUNTS = ("requests", "errors", "prompt_tokens", "completion_tokens")


async def _chat(
    s: aiohttp.ClientSession, proc: Proc, user: str | None, content: str, **headers: str
) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
    if user is not None:
        body["user"] = user
    async with s.post(
        f"{proc.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {ACME_KEY}", **headers}
    ) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize("backend", ["redis", "file"])
async def test_usage_is_broken_down_per_end_user_and_past_the_cap_added_up_as_other(
    mock: Proc, redis: RedisServer, tmp_path: Path, backend: str
) -> None:
    usage: dict[str, Any] = {"flush_interval": "200ms", "max_end_users": 2}
    if backend == "redis":
        usage |= {"backend": "redis", "url": redis.url, "key_prefix": f"eu{tmp_path.name[-12:]}"}
    else:
        usage |= {"backend": "file", "path": str(tmp_path / "usage.json")}
    doc = accounting_doc(f"{mock.url}/v1", identity={"chain": ["api_key"], "end_user": {"from": ["body"]}}, usage=usage)
    sent: dict[str | None, dict[str, int]] = {}
    with gateway(doc) as proc:
        async with aiohttp.ClientSession() as s:
            traffic = [
                ("alice", "hi"),
                ("bob", "hello there"),
                ("alice", "a longer question for the model"),
                (None, "nobody"),
            ]
            traffic += [("carol", "third end user"), ("dave", "fourth end user")]
            for user, content in traffic:
                status, body = await _chat(s, proc, user, content)
                assert status == 200, body
                mine = sent.setdefault(user, dict.fromkeys(AMOUNTS, 0))
                mine["requests"] += 1
                mine["prompt_tokens"] += body["usage"]["prompt_tokens"]
                mine["completion_tokens"] += body["usage"]["completion_tokens"]
            status, _ = await _chat(s, proc, "bob", "refused upstream", **{"x-mock-status": "400"})
            assert status == 400
            sent["bob"]["requests"] += 1
            sent["bob"]["errors"] += 1
        admin = Admin(proc)

        async def settled() -> dict[str, Any] | None:
            tenant = await admin.get("/admin/tenants/acme/usage")
            return tenant if tenant["requests"] == len(traffic) + 1 else None

        tenant = await wait_until(settled, timeout=15)
        assert tenant is not None
        breakdown = await admin.get("/admin/tenants/acme/usage/users")
        alice = await admin.get("/admin/tenants/acme/usage", user="alice")
        carol = await admin.get("/admin/tenants/acme/usage", user="carol")
        exposition = await admin.get("/metrics")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as s:
            refused = []
            for bad in ("", "x" * 300, "a\x00b"):
                async with s.get(f"{admin.base}/admin/tenants/acme/usage", params={"user": bad}) as r:
                    refused.append((r.status, (await r.json())["error"]["param"]))
    assert breakdown["max_end_users"] == 2
    # The first two end users are kept apart; carol and dave came after the cap and are added up as "other".
    assert set(breakdown["users"]) == {"alice", "bob"}
    for user in ("alice", "bob"):
        assert {f: breakdown["users"][user][f] for f in AMOUNTS} == sent[user], user
    other = breakdown["other"]
    assert {f: other[f] for f in AMOUNTS} == {f: sent["carol"][f] + sent["dave"][f] for f in AMOUNTS}
    # Every request with an end user is in the breakdown; the one without is only in the tenant's figures.
    kept = [*breakdown["users"].values(), other]
    for f in ("requests", "prompt_tokens", "completion_tokens"):
        assert sum(k[f] for k in kept) + sent[None][f] == tenant[f], f
    price = PRICES["gpt-4o-mini"]
    a = sent["alice"]
    assert alice["cost"] == pytest.approx(
        (a["prompt_tokens"] * price["input_per_1k"] + a["completion_tokens"] * price["output_per_1k"]) / 1000
    )
    assert alice == {
        "tenant": "acme",
        "period": tenant["period"],
        "currency": "USD",
        "user": "alice",
        **breakdown["users"]["alice"],
    }
    assert carol["requests"] == 0  # not kept apart: in "other"
    assert refused == [(400, "user")] * 3
    # Never a metric label: the exposition names the tenant, and none of its end users.
    assert 'tenant="acme"' in exposition
    assert not [u for u in ("alice", "bob", "carol", "dave") if u in exposition]
