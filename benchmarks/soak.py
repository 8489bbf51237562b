"""Soak test (not in CI): 10 minutes at 80 % of measured capacity; RSS, open fds, store keys over time; sent vs received.

    python benchmarks/soak.py                       # starts redis-server, the mock and `serve --workers 2` itself
    python benchmarks/soak.py --duration 60 --workers 1
    python benchmarks/soak.py --url http://127.0.0.1:8080 --pid SUPERVISOR_PID --redis-url redis://127.0.0.1:6379/0 \\
        --key tg-load-acme-0123456789abcdef         # an already running gateway

1. capacity: closed loop (every client sends its next request as soon as the last
   one answered) for ``--capacity-seconds``; capacity = answers per second.
2. soak: open loop at ``--share`` of it (requests leave on a fixed schedule whether
   or not earlier ones answered, as real clients do), for ``--duration`` seconds,
   rotating over the tenants' keys, some streams among the calls.
3. every ``--sample`` seconds a row: RSS and open file descriptors of the gateway
   (supervisor and workers summed), the store's key count (DBSIZE), requests sent,
   answers received, 2xx / 429 / other / failed connections, p99 of the interval.

It ends with sent vs received (the difference is requests lost without an answer)
and the growth of RSS, fds and keys between the first sample after warm-up and the
last one. ``--record`` appends the report to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
TENANT_KEYS = ("tg-soak-acme-0123456789abcdef", "tg-soak-globex-0123456789abcdef", "tg-soak-initech-0123456789abcdef")
CONFIG = """\
listeners:
  public: {{host: 127.0.0.1, port: {port}}}
  admin: {{enabled: false}}
store: {{backend: redis, url: "{redis_url}"}}
upstreams:
  mock: {{base_url: "{upstream}", pool: {{max_connections: 1024}}}}
models:
  gpt-4o-mini: {{deployments: [{{upstream: mock}}]}}
tenants:
  acme: {{plan: enterprise, keys: [{{key: {k0}}}]}}
  globex: {{plan: small_business, keys: [{{key: {k1}}}]}}
  initech: {{plan: personal, keys: [{{key: {k2}}}]}}
rules:
  soak-rpm:
    type: request_limit
    attach: {{global: true}}
    limit: 100000000
    per: minute
"""
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "soak"}], "max_tokens": 16}


# ---------------------------------------------------------------- the load generator (one process each)


async def _pace(url: str, keys: list[str], rate: float, duration: float, connections: int, stream_share: float) -> None:
    """Print one JSON line of counters per second.

    ``connections`` clients send the requests. Closed loop (rate 0): each sends its next
    request when the last one answered. Open loop: requests are due on a fixed schedule
    and a free client takes the next due one; latency counts from when it was due, so a
    backlog (the gateway falling behind) shows in p99 instead of hiding in the client.
    """
    import aiohttp

    counts = {"sent": 0, "received": 0, "ok": 0, "limited": 0, "other": 0, "failed": 0}
    latencies: list[float] = []
    bodies = [json.dumps(CHAT).encode(), json.dumps({**CHAT, "stream": True}).encode()]
    headers = [{"Authorization": f"Bearer {key}", "Content-Type": "application/json"} for key in keys]
    due: asyncio.Queue[float | None] = asyncio.Queue()
    end = time.monotonic() + duration

    async def send(session: aiohttp.ClientSession, seq: int, since: float) -> None:
        counts["sent"] += 1
        try:
            async with session.post(
                url, data=bodies[(seq % 100) < stream_share * 100], headers=headers[seq % len(headers)]
            ) as resp:
                await resp.read()
                counts["received"] += 1
                counts["ok" if resp.status < 300 else "limited" if resp.status == 429 else "other"] += 1
        except (TimeoutError, aiohttp.ClientError, OSError):
            counts["failed"] += 1
        latencies.append(time.monotonic() - since)

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        seq = index
        while True:
            if rate <= 0:
                if time.monotonic() >= end:
                    return
                since: float | None = time.monotonic()
            else:
                since = await due.get()
                if since is None:
                    return
            await send(session, seq, since)
            seq += connections

    async def schedule() -> None:
        start, queued = time.monotonic(), 0
        while (now := time.monotonic()) < end:
            for _ in range(int((now - start) * rate) - queued):
                due.put_nowait(start + queued / rate)
                queued += 1
            await asyncio.sleep(0.002)
        for _ in range(connections):
            due.put_nowait(None)

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            lat = sorted(latencies)
            latencies.clear()
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
            print(json.dumps({**counts, "backlog": due.qsize(), "p99_ms": round(p99, 2)}), flush=True)

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        reporter = asyncio.create_task(report())
        tasks = [client(session, i) for i in range(connections)]
        if rate > 0:
            tasks.append(schedule())
        await asyncio.gather(*tasks)  # every request sent is answered or failed before this returns
        await asyncio.sleep(1.1)
        reporter.cancel()


# ---------------------------------------------------------------- processes and probes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


@contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def family(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            parents[int(entry)] = int(raw[raw.rindex(b")") + 2 :].split()[1])
    found, grew = {pid}, True
    while grew:
        grew = False
        for child, parent in parents.items():
            if parent in found and child not in found:
                found.add(child)
                grew = True
    return sorted(found)


def rss_and_fds(pid: int) -> tuple[float, int]:
    rss_kib, fds = 0, 0
    for p in family(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss_kib += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return rss_kib / 1024, fds


def store_keys(redis_url: str | None) -> int | None:
    if not redis_url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    db = (parts.path or "/0").strip("/") or "0"
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=2) as s:
        s.sendall(f"SELECT {db}\r\nDBSIZE\r\n".encode())
        data = b""
        while data.count(b"\r\n") < 2:
            data += s.recv(256)
    return int(data.split(b"\r\n")[1].lstrip(b":"))


# ---------------------------------------------------------------- phases


def run_load(args: argparse.Namespace, url: str, rate: float, duration: float, on_second: Any = None) -> dict[str, Any]:
    """Run ``--pacers`` generator processes; returns their summed last counters."""
    per = rate / args.pacers
    argv = [
        sys.executable,
        __file__,
        "_pace",
        url,
        ",".join(args.keys),
        str(per),
        str(duration),
        str(max(1, args.connections // args.pacers)),
        str(args.stream_share),
    ]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(args.pacers)]
    latest: list[dict[str, Any]] = [{} for _ in procs]
    sel = selectors.DefaultSelector()
    for i, p in enumerate(procs):
        sel.register(p.stdout, selectors.EVENT_READ, i)  # type: ignore[arg-type]
    open_streams = len(procs)
    while open_streams:
        for key, _ in sel.select(timeout=1.0):
            line = key.fileobj.readline()  # type: ignore[union-attr]
            if not line:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            latest[key.data] = json.loads(line)
            if on_second is not None:
                on_second(merge(latest))
    for p in procs:
        p.wait()
    return merge(latest)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = max(total.get(k, 0), v) if k in ("p99_ms",) else total.get(k, 0) + v
    return total


def soak(args: argparse.Namespace, url: str, gateway_pid: int, redis_url: str | None) -> list[str]:
    print(
        f"measuring capacity: closed loop, {args.connections} connections, {args.capacity_seconds:g} s ...", flush=True
    )
    if args.rate:
        capacity = args.rate / args.share
    else:
        run_load(args, url, 0, 3)  # warm-up
        result = run_load(args, url, 0, args.capacity_seconds)
        capacity = result.get("received", 0) / args.capacity_seconds
    rate = capacity * args.share
    print(
        f"capacity {capacity:,.0f} req/s -> soak at {rate:,.0f} req/s ({args.share:.0%}) for {args.duration:g} s",
        flush=True,
    )
    header = (
        f"{'t s':>6} {'RSS MiB':>9} {'fds':>6} {'keys':>8} {'sent':>10} {'received':>10} {'2xx':>10} {'429':>8} {'other':>7} "
        f"{'failed':>7} {'req/s':>8} {'backlog':>8} {'p99 ms':>8}"
    )
    rows = [header]
    print(header, flush=True)
    started_at = time.monotonic()
    state = {"next": 0.0, "prev_received": 0, "prev_t": 0.0}
    samples: list[tuple[float, float, int, int | None]] = []
    in_window = {"received": 0}

    def on_second(c: dict[str, Any]) -> None:
        t = time.monotonic() - started_at
        if t < state["next"]:
            return
        state["next"] = t + args.sample
        rss, fds = rss_and_fds(gateway_pid)
        keys = store_keys(redis_url)
        got = c.get("received", 0)
        if t <= args.duration:
            in_window["received"] = got
        rps = (got - state["prev_received"]) / max(t - state["prev_t"], 1e-9) if state["prev_t"] else 0.0
        state["prev_received"], state["prev_t"] = got, t
        samples.append((t, rss, fds, keys))
        row = (
            f"{t:>6.0f} {rss:>9.1f} {fds:>6} {keys if keys is not None else '-':>8} {c.get('sent', 0):>10} {got:>10} "
            f"{c.get('ok', 0):>10} {c.get('limited', 0):>8} {c.get('other', 0):>7} {c.get('failed', 0):>7} {rps:>8.0f} "
            f"{c.get('backlog', 0):>8} {c.get('p99_ms', 0):>8.1f}"
        )
        rows.append(row)
        print(row, flush=True)

    final = run_load(args, url, rate, args.duration, on_second)
    lost = final.get("sent", 0) - final.get("received", 0) - final.get("failed", 0)
    after_warmup = [s for s in samples if s[0] >= min(60.0, args.duration / 5)] or samples
    first, last = after_warmup[0], samples[-1]
    summary = [
        f"capacity {capacity:,.0f} req/s; soak target {rate:,.0f} req/s, answered {in_window['received'] / max(samples_in(samples, args.duration), 1e-9):,.0f} req/s "
        f"during the {args.duration:g} s (backlog at the end {final.get('backlog', 0)})",
        f"sent {final.get('sent', 0)}, received {final.get('received', 0)} (2xx {final.get('ok', 0)}, 429 {final.get('limited', 0)}, "
        f"other {final.get('other', 0)}), failed connections {final.get('failed', 0)}, unanswered {lost}",
        f"RSS {first[1]:.1f} -> {last[1]:.1f} MiB, open fds {first[2]} -> {last[2]}, store keys {first[3]} -> {last[3]} "
        f"(from t={first[0]:.0f} s to t={last[0]:.0f} s)",
    ]
    print("\n".join(summary))
    return [*rows, "", *summary]


def samples_in(samples: list[tuple[float, float, int, int | None]], duration: float) -> float:
    inside = [s[0] for s in samples if s[0] <= duration]
    return inside[-1] if inside else duration


def record(lines: list[str], args: argparse.Namespace) -> None:
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO
    ).stdout.strip()
    section = [
        "",
        f"## Soak, {stamp}",
        "",
        f"- `python benchmarks/soak.py {' '.join(sys.argv[1:])}`; commit {commit}; {os.cpu_count()} CPUs",
        "",
        "```",
        *lines,
        "```",
        "",
    ]
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write("\n".join(section))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_pace":
        url, keys, rate, duration, connections, share = argv[1:7]
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_pace(url, keys.split(","), float(rate), float(duration), int(connections), float(share)))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600.0, help="soak seconds (default 600)")
    p.add_argument("--share", type=float, default=0.8, help="fraction of measured capacity (default 0.8)")
    p.add_argument("--rate", type=float, default=0.0, help="soak at this req/s instead of measuring capacity")
    p.add_argument("--capacity-seconds", type=float, default=10.0)
    p.add_argument("--sample", type=float, default=10.0, help="seconds between rows")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--connections", type=int, default=64, help="connections of the load generators (closed loop: clients)"
    )
    p.add_argument("--pacers", type=int, default=1, help="load generator processes")
    p.add_argument("--stream-share", type=float, default=0.2, help="fraction of requests streamed")
    p.add_argument("--url", help="soak a running gateway at this base URL instead of starting one")
    p.add_argument("--pid", type=int, help="with --url: the gateway's (supervisor's) pid, for RSS and fds")
    p.add_argument("--redis-url", help="with --url: the store's Redis, for the key count")
    p.add_argument(
        "--key", action="append", dest="keys", help="with --url: a client API key (repeat for several tenants)"
    )
    p.add_argument("--record", action="store_true", help=f"append the report to {RESULTS.name}")
    args = p.parse_args(argv)
    if args.url:
        if not args.pid:
            p.error("--url needs --pid")
        args.keys = args.keys or ["sk-soak"]
        lines = soak(args, f"{args.url.rstrip('/')}/v1/chat/completions", args.pid, args.redis_url)
    else:
        args.keys = list(TENANT_KEYS)
        lines = self_contained(args)
    if args.record:
        record(lines, args)
    return 0


def self_contained(args: argparse.Namespace) -> list[str]:
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-soak-"))
    redis_port, mock_port, port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        with ExitStack() as stack:
            redis = shutil.which("redis-server")
            if redis is None:
                raise SystemExit("redis-server is needed (the workers share limits through it)")
            stack.enter_context(
                started(
                    [redis, "--port", str(redis_port), "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                    workdir / "redis.log",
                )
            )
            stack.enter_context(
                started(
                    [sys.executable, "-m", "tollgate", "mock-upstream", "--port", str(mock_port), "--no-record"],
                    workdir / "mock.log",
                )
            )
            config = workdir / "gateway.yaml"
            config.write_text(
                CONFIG.format(
                    port=port,
                    redis_url=redis_url,
                    upstream=f"http://127.0.0.1:{mock_port}/v1",
                    k0=TENANT_KEYS[0],
                    k1=TENANT_KEYS[1],
                    k2=TENANT_KEYS[2],
                )
            )
            wait_port(redis_port)
            wait_port(mock_port)
            gateway = stack.enter_context(
                started(
                    [
                        sys.executable,
                        "-m",
                        "tollgate",
                        "--log-level",
                        "warning",
                        "serve",
                        "--config",
                        str(config),
                        "--workers",
                        str(args.workers),
                    ],
                    workdir / "gateway.log",
                )
            )
            wait_port(port)
            time.sleep(1.0)
            return soak(args, f"http://127.0.0.1:{port}/v1/chat/completions", gateway.pid, redis_url)
    finally:
        print(f"process logs in {workdir}")


if __name__ == "__main__":
    raise SystemExit(main())
