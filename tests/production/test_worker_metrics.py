"""``serve --workers 2``: the supervisor's multiprocess metrics directory, one scrape summing every worker, a killed worker."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..support.processes import Proc, gateway_config
from .support import ADMIN_TOKEN, chat, is_gone, served_gateway, worker_pids

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"), pytest.mark.mock_upstream("--no-record")]

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def _config(mock: Proc, redis_url: str) -> dict[str, Any]:
    return gateway_config(
        f"{mock.url}/v1", store={"backend": "redis", "url": redis_url}, usage={"flush_interval": "100ms"}
    )


async def wait_until(predicate: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    """The predicate's first truthy answer, or its last answer after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


def _metrics_dir_of(pid: int) -> str | None:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [item.partition(b"=") for item in f.read().split(b"\0") if item]
    env = {k.decode(): v.decode() for k, _eq, v in pairs}
    return env.get(VARIABLE)


async def _scrape(proc: Proc) -> dict[str, float]:
    """``{sample name: value summed over its label sets}`` of one scrape of the admin listener (worker 0)."""
    url = f"http://127.0.0.1:{proc.extra_ports['admin']}/metrics"
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r,
    ):
        assert r.status == 200
        text = await r.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def _send(proc: Proc, n: int, headers: dict[str, str] | None = None) -> list[int | None]:
    """``n`` requests, each on a new connection so that SO_REUSEPORT spreads them over the workers (None: it failed)."""

    async def one() -> int | None:
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.post(f"{proc.url}/v1/chat/completions", json=chat(), headers=headers or {}) as r,
            ):
                await r.read()
                return r.status
        except aiohttp.ClientError:
            return None

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def _requests_reach(proc: Proc, n: float) -> dict[str, float] | None:
    got = await _scrape(proc)
    return got if got.get("tollgate_requests_total", 0.0) >= n else None


async def test_one_scrape_sums_both_workers_and_a_killed_workers_live_gauges_leave_it(
    mock: Proc, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(VARIABLE, raising=False)
    monkeypatch.delenv(VARIABLE.lower(), raising=False)
    with served_gateway(_config(mock, redis_url), workers=2, admin=True) as proc:
        pids = worker_pids(proc.popen.pid)
        dirs = {_metrics_dir_of(pid) for pid in pids.values()}
        assert len(dirs) == 1 and None not in dirs, dirs  # one directory, given to both workers
        mpdir = Path(dirs.pop() or "")
        assert mpdir.is_dir() and str(mpdir).startswith(tempfile.gettempdir())

        assert await _send(proc, 40) == [200] * 40
        got = await wait_until(lambda: _requests_reach(proc, 40), timeout=30)
        assert got is not None and got["tollgate_requests_total"] == 40
        writers = {f.stem.rsplit("_", 1)[1] for f in mpdir.glob("counter_*.db")}
        assert {str(pids[0]), str(pids[1])} <= writers  # both workers counted: the 40 above is their sum

        # Requests held in flight on both workers; their gauges are set at each worker's flush.
        slow = asyncio.ensure_future(_send(proc, 12, {"x-mock-latency-ms": "15000"}))

        async def twelve_in_flight() -> bool:
            return (await _scrape(proc)).get("tollgate_in_flight_requests", 0.0) == 12

        assert await wait_until(twelve_in_flight, timeout=12), await _scrape(proc)
        assert list(mpdir.glob(f"gauge_live*_{pids[1]}.db"))

        os.kill(pids[1], signal.SIGKILL)

        async def marked_dead() -> bool:  # the supervisor reaped it and removed its live gauge files
            return is_gone(pids[1]) and not list(mpdir.glob(f"gauge_live*_{pids[1]}.db"))

        assert await wait_until(marked_dead, timeout=15)
        # The killed worker's requests failed at once; the scrape shows only worker 0's in flight from now on.
        left = (await _scrape(proc)).get("tollgate_in_flight_requests", 0.0)
        assert await wait_until(lambda: _is_replaced(proc, pids), timeout=60)
        outcomes = await slow
        killed = outcomes.count(None)
        assert killed >= 1 and outcomes.count(200) == 12 - killed, outcomes
        assert left == 12 - killed

        # Counters stay summed, the killed worker's included, and the restarted worker counts on.
        expected = 40 + (12 - killed)
        got = await wait_until(lambda: _requests_reach(proc, expected), timeout=30)
        assert got is not None and got["tollgate_requests_total"] == expected
        assert await _send(proc, 40) == [200] * 40
        got = await wait_until(lambda: _requests_reach(proc, expected + 40), timeout=30)
        assert got is not None and got["tollgate_requests_total"] == expected + 40
        restarted = worker_pids(proc.popen.pid)[1]
        assert list(mpdir.glob(f"counter_{restarted}.db"))
    assert not mpdir.exists()  # the supervisor made it, the supervisor removed it


async def _is_replaced(proc: Proc, old: dict[int, int]) -> bool:
    now = worker_pids(proc.popen.pid)
    return is_gone(old[1]) and now.get(1) not in (None, old[1]) and proc.log().count(" ready (pid ") >= 3


async def test_a_directory_the_operator_names_is_emptied_at_start_and_kept(
    mock: Proc, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mpdir = tmp_path / "prometheus"
    mpdir.mkdir()
    stale = mpdir / "counter_4242.db"
    stale.write_bytes(b"left over by an earlier run")
    keep = mpdir / "README"
    keep.write_text("not a metrics file")
    monkeypatch.setenv(VARIABLE, str(mpdir))
    with served_gateway(_config(mock, redis_url), workers=2, admin=True) as proc:
        assert not stale.exists()
        assert {_metrics_dir_of(pid) for pid in worker_pids(proc.popen.pid).values()} == {str(mpdir)}
        assert await _send(proc, 10) == [200] * 10
        got = await wait_until(lambda: _requests_reach(proc, 10), timeout=30)
        assert got is not None and got["tollgate_requests_total"] == 10
    assert mpdir.is_dir() and keep.exists()
