"""Exact limits under a burst: 200 one-shot clients at a request limit of 50 per day, right after start, beside a CPU hog.

Four topologies share one real redis-server: one worker, ``--workers 2``, two
``serve`` processes on their own ports, and nginx (config/nginx.conf) in front
of two ``serve`` processes. Every run starts its gateways afresh, with counters
of its own, so each burst is the first one after start. The runs of a
topology start side by side while the hog is paused (starting Python
processes is most of this file's time), then take their bursts in turn. The store keeps its default 50 ms
budget and the rule says ``fail_open``: a decision taken without the store
would show as a 2xx too many. Exactly 50 requests pass, the other 150 get
429, no response says degraded and ``tollgate_degraded_admissions_total``
does not move.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..support.processes import Proc, gateway_config, start_process, wait_for_port, wait_for_workers
from ..support.redis import RedisServer
from .support import ADMIN_TOKEN, nginx_main_config, write_config

pytestmark = [
    pytest.mark.slow,
    pytest.mark.serial,  # its CPU hog and burst would share the machine with another test worker
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.mock_upstream("--no-record"),
]

KEY = "tg_burst_test_key_0123456789abcdefghijklm"
CLIENTS = 200
LIMIT = 50
RUNS = 10
STARTED_TOGETHER = 10  # deployments started at once (each still gets the first burst after its own start)
TOPOLOGIES = ("one-worker", "two-workers", "two-processes", "nginx")
DEGRADED = "tollgate_degraded_admissions_total"


def listen_ports() -> Iterator[int]:
    """Loopback ports free now and below the kernel's ephemeral range: dozens of gateways start at once here, and
    their own outgoing connections (to Redis, to the upstream) must not take a port picked for a later listener."""
    low, _high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    candidates = list(range(max(1024, low - 12_000), low))
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        yield port


@pytest.fixture(scope="module")
def ports() -> Iterator[Iterator[int]]:
    yield listen_ports()


@pytest.fixture(scope="module")
def redis(redis: RedisServer) -> RedisServer:
    """The shared store, on a scheduling priority above the hog's (as on a host of its own): the 50 ms budget
    then measures the gateway's handling of a healthy store, not a Redis the CPU hog keeps off the cores."""
    with contextlib.suppress(PermissionError):  # raising a priority takes root (CI has it)
        os.setpriority(os.PRIO_PROCESS, redis.pid, -10)
    return redis


@pytest.fixture(scope="module")
def cpu_hog() -> Iterator[subprocess.Popen[bytes]]:
    """A busy loop, paused (SIGSTOP) except during the bursts: the gateway, Redis, nginx and the clients then
    share what is left of two cores, and the gateways start without it."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    hog.send_signal(signal.SIGSTOP)
    try:
        yield hog
    finally:
        hog.kill()
        hog.wait()


@contextmanager
def hogging(hog: subprocess.Popen[bytes]) -> Iterator[None]:
    hog.send_signal(signal.SIGCONT)
    try:
        yield
    finally:
        hog.send_signal(signal.SIGSTOP)


def burst_config(mock: Proc, redis: RedisServer, key_prefix: str) -> dict[str, Any]:
    """One tenant, one API key, a daily request limit of 50 that fails open; the store's default budget.
    ``key_prefix``: counters of their own, so the burst is the first this limit sees."""
    return gateway_config(
        f"{mock.url}/v1",
        identity={"chain": ["api_key"]},
        plans={"basic": {"monthly_requests": 10_000_000, "concurrency": 10_000}},
        tenants={
            "acme": {"plan": "basic", "keys": [{"id": "acme-1", "sha256": hashlib.sha256(KEY.encode()).hexdigest()}]}
        },
        store={"backend": "redis", "url": redis.url, "key_prefix": key_prefix},
        rules={
            "daily": {
                "type": "request_limit",
                "limit": LIMIT,
                "per": "day",
                "scope": ["tenant"],
                "fail_mode": "fail_open",
                "attach": {"global": True},
            }
        },
    )


@dataclass
class Instance:
    """One deployment of a topology: the URLs its clients spread over and its gateway processes."""

    urls: list[str] = field(default_factory=list)
    gateways: list[Proc] = field(default_factory=list)
    workers: list[int] = field(default_factory=list)  # per gateway: how many workers to wait for
    others: list[Proc] = field(default_factory=list)  # nginx

    def wait_ready(self) -> None:
        for gw, workers in zip(self.gateways, self.workers):
            wait_for_port(gw.port, timeout=60, proc=gw.popen)
            wait_for_port(gw.extra_ports["admin"], timeout=60, proc=gw.popen)
            if workers > 1:
                wait_for_workers(gw, workers, 60)
        for other in self.others:
            wait_for_port(other.port, timeout=30, proc=other.popen)

    def stop(self) -> None:
        for proc in self.others + self.gateways:
            if proc.popen.poll() is None:
                proc.signal(signal.SIGTERM)
        for proc in self.others + self.gateways:
            proc.stop(timeout=20)


def launch_gateway(config: dict[str, Any], workdir: Path, ports: Iterator[int], *, workers: int) -> Proc:
    """``serve`` (``--workers N`` when N > 1) on free ports with its admin listener; not waited for."""
    port, admin = next(ports), next(ports)
    cfg = {
        **config,
        "listeners": {
            "public": {"host": "127.0.0.1", "port": port},
            "admin": {"host": "127.0.0.1", "port": admin, "token": ADMIN_TOKEN},
        },
    }
    path = workdir / f"gateway-{port}.yaml"
    write_config(path, cfg)
    argv = [sys.executable, "-m", "tollgate", "serve", "--config", str(path)]
    if workers > 1:
        argv += ["--workers", str(workers)]  # the supervisor gives its workers their metrics directory
    proc = start_process(argv, port, wait=False)
    proc.extra_ports["admin"] = admin
    return proc


def launch_nginx(gateway_ports: list[int], workdir: Path, ports: Iterator[int]) -> Proc:
    """config/nginx.conf in front of the gateways, one ``server`` line each (as for several gateway machines)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = next(ports)
    home = workdir / f"nginx-{port}"
    home.mkdir()
    conf = nginx_main_config(home, port, gateway_ports[0])
    snippet = home / "tollgate.conf"
    first = f"server 127.0.0.1:{gateway_ports[0]} max_fails=0;"
    assert first in snippet.read_text(), "config/nginx.conf changed shape: update this test's rewriting"
    snippet.write_text(
        snippet.read_text().replace(first, " ".join(f"server 127.0.0.1:{p} max_fails=0;" for p in gateway_ports))
    )
    return start_process([binary, "-p", str(home), "-e", str(home / "error.log"), "-c", str(conf)], port, wait=False)


def launch(name: str, config: dict[str, Any], workdir: Path, ports: Iterator[int]) -> Instance:
    """Start the processes of one deployment of topology ``name`` (see :data:`TOPOLOGIES`)."""
    inst = Instance()
    if name == "one-worker":
        inst.gateways, inst.workers = [launch_gateway(config, workdir, ports, workers=1)], [1]
        inst.urls = [inst.gateways[0].url]
    elif name == "two-workers":
        inst.gateways, inst.workers = [launch_gateway(config, workdir, ports, workers=2)], [2]
        inst.urls = [inst.gateways[0].url]
    elif name == "two-processes":
        inst.gateways, inst.workers = [launch_gateway(config, workdir, ports, workers=1) for _ in range(2)], [1, 1]
        inst.urls = [gw.url for gw in inst.gateways]
    else:  # nginx in front of two gateway processes
        inst.gateways, inst.workers = [launch_gateway(config, workdir, ports, workers=1) for _ in range(2)], [1, 1]
        inst.others = [launch_nginx([gw.port for gw in inst.gateways], workdir, ports)]
        inst.urls = [inst.others[0].url]
    return inst


async def degraded_total(gateways: list[Proc]) -> float:
    total = 0.0
    async with aiohttp.ClientSession() as s:
        for gw in gateways:
            url = f"http://127.0.0.1:{gw.extra_ports['admin']}/metrics"
            async with s.get(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
                assert r.status == 200
                text = await r.text()
            total += sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == DEGRADED
            )
    return total


async def one_shot(url: str, start: asyncio.Event) -> tuple[int, bool]:
    """One client with its own connection: waits for the start signal, sends one chat completion."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=timeout) as s:
        await start.wait()
        async with s.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
            await r.read()
            return r.status, "x-tollgate-degraded" in r.headers


async def burst(urls: list[str]) -> list[tuple[int, bool]]:
    start = asyncio.Event()
    clients = [asyncio.ensure_future(one_shot(urls[i % len(urls)], start)) for i in range(CLIENTS)]
    await asyncio.sleep(0.05)  # every client has its session: they all go at once
    start.set()
    return await asyncio.gather(*clients)


@pytest.mark.parametrize("name", TOPOLOGIES)
async def test_200_clients_right_after_start_get_exactly_50_admissions_beside_a_cpu_hog(
    name: str, mock: Proc, redis: RedisServer, cpu_hog: subprocess.Popen[bytes], ports: Iterator[int], tmp_path: Path
) -> None:
    outcomes = []
    for first in range(0, RUNS, STARTED_TOGETHER):
        # A few deployments start side by side (the hog paused), then each gets its first burst in turn.
        instances = [
            launch(name, burst_config(mock, redis, f"{name}-{run}"), tmp_path, ports)
            for run in range(first, first + STARTED_TOGETHER)
        ]
        try:
            for inst in instances:
                inst.wait_ready()
            for run, inst in enumerate(instances, first):
                with hogging(cpu_hog):
                    before = await degraded_total(inst.gateways)
                    results = await burst(inst.urls)
                    after = await degraded_total(inst.gateways)
                statuses = [status for status, _ in results]
                outcomes.append(
                    (run, statuses.count(200), statuses.count(429), sum(d for _, d in results), after - before)
                )
        finally:
            for inst in instances:
                inst.stop()
    print(f"\n{name}: (run, 2xx, 429, degraded responses, degraded metric delta) {outcomes}")
    assert len(outcomes) == RUNS
    assert all(o[1:] == (LIMIT, CLIENTS - LIMIT, 0, 0) for o in outcomes), outcomes
