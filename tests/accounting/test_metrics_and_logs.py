"""/metrics across two workers, the access log's content, and security events in the audit log, through real processes."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..support.processes import Proc, worker_pids
from ..support.redis import RedisServer
from .conftest import (
    ACME_KEY,
    ADMIN_TOKEN,
    GLOBEX_KEY,
    SLEEPY_KEY,
    UPSTREAM_KEY,
    Admin,
    accounting_doc,
    gateway,
    post_chat,
    wait_until,
)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(text) for s in family.samples
    ]


def _total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == want for k, want in labels.items()))


def _metrics_dir(proc: Proc) -> Path:
    """The ``PROMETHEUS_MULTIPROC_DIR`` the supervisor ``proc`` gave its workers (read from a worker's environment)."""
    pid = next(iter(worker_pids(proc.popen.pid).values()))
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.partition(b"=")[::2] for item in f.read().split(b"\0") if item)
    return Path(env[b"PROMETHEUS_MULTIPROC_DIR"].decode())


async def test_metrics_parsed_by_prometheus_client_show_every_request_across_two_workers(
    mock: Proc, redis: RedisServer
) -> None:
    doc = accounting_doc(
        f"{mock.url}/v1",
        store={"backend": "redis", "url": redis.url},
        usage={"backend": "redis", "url": redis.url, "key_prefix": "metrics2", "flush_interval": "100ms"},
    )
    sent = 40
    with gateway(doc, workers=2) as proc:  # the supervisor gives the workers their metrics directory
        mpdir = _metrics_dir(proc)
        for i in range(sent):  # a new connection each time, so SO_REUSEPORT spreads them over both workers
            async with aiohttp.ClientSession() as s:
                status, body = await post_chat(s, proc, ACME_KEY, stream=i % 4 == 0)
                assert status == 200, body

        async def scraped() -> list[tuple[str, dict[str, str], float]] | None:
            async with (
                aiohttp.ClientSession() as s,
                s.get(
                    f"http://127.0.0.1:{proc.extra_ports['admin']}/metrics",
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                ) as r,
            ):
                assert r.status == 200
                samples = _samples(await r.text())
            return samples if _total(samples, "tollgate_requests_total", tenant="acme") >= sent else None

        samples = await wait_until(scraped, timeout=10)
        assert samples is not None, "the scrape never showed every request"
        await asyncio.sleep(0.5)
        samples = await scraped()
        assert samples is not None
        # Both workers served (and wrote their own counter file): the figures below are their sum.
        writers = {f.name.rsplit("_", 1)[1] for f in mpdir.glob("counter_*.db")}
        assert len(writers) >= 2, sorted(os.listdir(mpdir))
    assert not mpdir.exists()  # the supervisor made the directory and removed it
    assert _total(samples, "tollgate_requests_total", tenant="acme", model="gpt-4o-mini", status="200") == sent
    assert _total(samples, "tollgate_request_duration_seconds_count", tenant="acme") == sent
    assert _total(samples, "tollgate_gateway_overhead_seconds_count", plan="enterprise") == sent
    assert _total(samples, "tollgate_time_to_first_byte_seconds_count", model="gpt-4o-mini") == sent
    assert _total(samples, "tollgate_upstream_duration_seconds_count", upstream="mock") == sent
    assert _total(samples, "tollgate_tokens_total", tenant="acme", kind="prompt") > 0
    assert _total(samples, "tollgate_deployment_healthy", deployment="mock/gpt-4o-mini") == 1


@pytest.fixture(scope="module")
def logged(mock: Proc, tmp_path_factory: Any) -> Any:
    path = tmp_path_factory.mktemp("access") / "access.jsonl"
    audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    doc = accounting_doc(
        f"{mock.url}/v1",
        usage={"flush_interval": "100ms"},
        access_log={"path": str(path)},
        audit={"path": str(audit), "auth_failure_burst": 5, "auth_failure_window": "1m"},
    )
    with gateway(doc) as proc:
        yield proc, path


async def test_the_access_log_has_one_line_per_request_and_never_a_key_or_token(logged: Any) -> None:
    proc, path = logged
    wrong = "tg_not-a-real-key-but-still-a-secret-0123456789"
    sent = 0
    async with aiohttp.ClientSession() as s:
        for key, stream in (
            (ACME_KEY, False),
            (ACME_KEY, True),
            (GLOBEX_KEY, False),
            (wrong, False),
            (SLEEPY_KEY, False),
        ):
            await post_chat(s, proc, key, stream=stream, headers={"x-api-key": key, "Cookie": f"session={key}"})
            sent += 1

    async def lines() -> list[bytes] | None:
        got = path.read_bytes().splitlines() if path.exists() else []
        return got if len(got) >= sent else None

    assert await wait_until(lines, timeout=10), "the access log never got every line"
    await asyncio.sleep(0.3)
    raw = path.read_bytes()
    for secret in (ACME_KEY, GLOBEX_KEY, SLEEPY_KEY, wrong, UPSTREAM_KEY, ADMIN_TOKEN, "Bearer", "session="):
        assert secret.encode() not in raw, secret
    entries = [orjson.loads(line) for line in raw.splitlines()]
    assert len(entries) == sent
    by_status: dict[int, list[dict[str, Any]]] = {}
    for e in entries:
        by_status.setdefault(e["status"], []).append(e)
    assert len(by_status[200]) == 3 and len(by_status[401]) == 1 and len(by_status[403]) == 1
    ok = by_status[200][0]
    assert ok["tenant"] == "acme" and ok["key_id"] == "acme-main" and ok["model"] == "gpt-4o-mini"
    assert ok["request_id"].startswith("req_") and ok["total_ms"] >= ok["overhead_ms"] >= 0
    assert {"prompt_tokens", "completion_tokens", "usage_reported", "cost", "upstream_ms", "ttfb_ms", "plan"} <= set(ok)


async def test_a_burst_of_failed_authentication_and_a_suspended_tenant_are_audited(logged: Any) -> None:
    proc, _path = logged
    admin = Admin(proc)
    async with aiohttp.ClientSession() as s:
        for i in range(7):
            status, _ = await post_chat(s, proc, f"tg_guessing-{i}-0123456789abcdefghijklmnop")
            assert status == 401
        status, _ = await post_chat(s, proc, SLEEPY_KEY)
        assert status == 403

    async def events() -> list[dict[str, Any]] | None:
        got = (await admin.get("/admin/audit"))["events"]
        kinds = [e["kind"] for e in got]
        return got if "auth_failure_burst" in kinds and "suspended_tenant_access" in kinds else None

    got = await wait_until(events, timeout=10)
    assert got, "the audit log never showed both events"
    assert [e["kind"] for e in got].count("auth_failure_burst") == 1  # seven failures, one burst event
    burst = next(e for e in got if e["kind"] == "auth_failure_burst")
    assert burst["detail"]["client_ip"] == "127.0.0.1" and burst["detail"]["failures"] == 5
    suspended = [e for e in got if e["kind"] == "suspended_tenant_access"]
    assert len(suspended) == 1  # two refused requests within the window, one event
    assert suspended[0]["detail"]["client_ip"] == "127.0.0.1" and suspended[0]["detail"]["request_id"].startswith(
        "req_"
    )
    assert (await admin.get("/admin/audit", since="2999-01-01T00:00:00Z"))["events"] == []


async def test_admin_changes_are_audited_with_before_and_after_and_never_a_new_keys_plaintext(logged: Any) -> None:
    proc, _path = logged
    admin = Admin(proc)
    headers = {**admin.headers, "X-Admin-Actor": "alice@ops"}
    async with aiohttp.ClientSession() as s:
        async with s.patch(f"{admin.base}/admin/tenants/globex", json={"plan": "personal"}, headers=headers) as r:
            assert r.status == 200, await r.text()
        async with s.post(f"{admin.base}/admin/tenants/globex/keys", json={"name": "ci"}, headers=headers) as r:
            assert r.status == 201, await r.text()
            plaintext = (await r.json())["key"]

    async def changes() -> list[dict[str, Any]] | None:
        got = [e for e in (await admin.get("/admin/tenants/globex/audit"))["events"] if e["kind"] == "admin_change"]
        return got if len(got) >= 2 else None

    got = await wait_until(changes, timeout=10)
    assert got, "the admin changes were not audited"
    patch = next(e for e in got if e["detail"]["method"] == "PATCH")
    assert patch["actor"] == "admin" and patch["detail"]["role"] == "admin"  # the principal of listeners.admin.token
    assert patch["detail"]["on_behalf_of"] == "alice@ops"  # the tooling's header, kept beside it
    assert patch["target"] == "tenant:globex" and patch["detail"]["status"] == 200
    assert patch["before"]["plan"] == "metered" and patch["after"]["plan"] == "personal"
    assert plaintext not in orjson.dumps(got).decode()
