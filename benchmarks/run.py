"""Benchmark harness: req/s, p50/p99, CPU per request of the target and of Redis, against bare and lean pass-throughs."""

from __future__ import annotations

import argparse
import datetime
import http.client
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Template

import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CLIENT_HEADERS = ("Authorization: Bearer sk-bench-client-key", "User-Agent: tollgate-bench/1")


@dataclass(frozen=True)
class Target:
    """One row of the table: what the load generator hits and how to start it.

    ``command`` and ``config`` are ``string.Template`` texts: ``$python``, ``$repo``,
    ``$bench``, ``$port`` (the row's own free port), ``$upstream_port``,
    ``$upstream_url`` (``http://127.0.0.1:$upstream_port/v1``) and, in the command,
    ``$config`` (the rendered config written to a file). No command means the load
    generator hits the upstream itself. ``redis`` rows get a redis-server (started
    once, beside the upstream) as ``$redis_url``; ``pin=False`` rows are not pinned
    to the target CPU, so that several worker processes can use every core.
    """

    name: str
    about: str
    upstream: (
        str  # "json": nginx answering a fixed body (the mock when nginx is absent); "mock": the Python mock;
        # "mock-paced": the mock sending a stream's tokens PACED_TOKENS_PER_SECOND apart; "": none
    )
    command: tuple[str, ...] = ()
    config: str = ""
    body: str = "chat"  # key of BODIES
    baseline: str = ""  # row whose req/s this row's ratio is computed against
    default: bool = True  # part of a run without --only
    redis: bool = False
    pin: bool = True
    tenants: int = 0  # tenants declared in the config ($tenants); the load generator's key is the first one's

    @property
    def is_gateway(self) -> bool:
        """A Tollgate row: printed against both pass-throughs (bare aiohttp and lean httptools)."""
        return "tollgate" in self.command and "serve" in self.command

    @property
    def references(self) -> tuple[str, str]:
        """The bare and the lean pass-through rows this row is compared with (the stream ones for a stream)."""
        if self.upstream == "mock-paced":
            return ("bare-stream-paced", "lean-stream-paced")
        return ("bare-stream", "lean-stream") if self.body == "stream" else ("bare", "lean")


GATEWAY_NO_RULES = """\
listeners:
  public: {host: 127.0.0.1, port: $port}
  admin: {enabled: false}
upstreams:
  bench: {base_url: "$upstream_url"}
models:
  gpt-4o-mini: {deployments: [{upstream: bench}]}
"""
# The paced stream rows' token rate: 16 content events 1 ms apart, a stream in about 16 ms (a real model sends
# 30-200 tokens a second; faster pacing keeps the proxy busy at 64 connections while still one event per read).
PACED_TOKENS_PER_SECOND = 1000
MOCK_COMMAND = ("$python", "-m", "tollgate", "mock-upstream", "--port", "$port", "--no-record")
BARE_COMMAND = (
    "$python",
    "$bench/bare_proxy.py",
    "--port",
    "$port",
    "--upstream",
    "$upstream_url",
    "--api-key",
    "sk-bench-upstream",
)
LEAN_COMMAND = ("$python", "$bench/lean_proxy.py", *BARE_COMMAND[2:])
GATEWAY_COMMAND = (
    "$python",
    "-m",
    "tollgate",
    "--log-level",
    "warning",
    "serve",
    "--config",
    "$config",
    "--port",
    "$port",
)
GATEWAY_REDIS_NO_RULES = GATEWAY_NO_RULES + 'store: {backend: redis, url: "$redis_url"}\n'

# The full policy: API-key identity, two namespace matchers (a header and a body field), three limits
# (requests per minute, tokens per minute with reserve-then-settle, concurrency) admitted in one atomic
# call, accounting and metrics on. The limits are far above the offered load: every request is admitted.
GATEWAY_FULL_POLICY = (
    GATEWAY_NO_RULES
    + """\
identity: {chain: [api_key]}
plans:
  bench: {monthly_requests: 1000000000000, concurrency: 100000}
tenants:
$tenants
namespaces:
  web: {priority: 2, matchers: [{type: header, field: User-Agent, op: contains, value: bench}]}
  batch: {priority: 1, matchers: [{type: body, field: metadata.channel, op: equals, value: batch}]}
rules:
  rpm: {type: request_limit, limit: 1000000000, per: minute, scope: [tenant], attach: {global: true}}
  tpm: {type: token_limit, limit: 1000000000000, per: minute, scope: [tenant], attach: {global: true}}
  inflight: {type: connection_limit, limit: 100000, scope: [tenant], attach: {global: true}}
"""
)
GATEWAY_FULL_POLICY_REDIS = GATEWAY_FULL_POLICY + 'store: {backend: redis, url: "$redis_url"}\n'
# The full policy with every request traced (issue 20): spans exported over OTLP/HTTP to the upstream's nginx,
# which answers every POST with 200 (a collector that costs nothing), so the export thread's work is counted.
GATEWAY_FULL_POLICY_TRACING = (
    GATEWAY_FULL_POLICY + 'tracing: {enabled: true, sample_ratio: 1.0, otlp: {endpoint: "$upstream_url/traces"}}\n'
)
# The response cache on (issue 20), full policy, for a deterministic request (temperature 0): every request after the
# first a hit; and the miss path (looked up, served, its answer made an entry) with a bound too small to keep it.
GATEWAY_FULL_CACHE_HIT = GATEWAY_FULL_POLICY + "cache: {enabled: true}\n"
# The full policy with the data of record on SQLite (issue 18): a spend row per request, written in batches by the
# database's thread inside the gateway's process (the file beside the generated config, in the run's temp dir).
GATEWAY_FULL_SPEND_LOG = GATEWAY_FULL_POLICY + 'database: {url: "sqlite:///spend-$port.db"}\n'
GATEWAY_FULL_CACHE_MISS = GATEWAY_FULL_POLICY + "cache: {enabled: true, max_bytes: 512, max_entry_bytes: 512}\n"


def tenants_yaml(count: int) -> str:
    """``count`` tenants on the bench plan, each with one key; tenant 0 holds the load generator's key."""
    import hashlib

    client_key = next(h.split("Bearer ", 1)[1] for h in CLIENT_HEADERS if h.startswith("Authorization"))
    lines = []
    for i in range(count):
        key = client_key if i == 0 else f"tg_bench_tenant_{i:07d}_key_0123456789abcdef"
        digest = hashlib.sha256(key.encode()).hexdigest()
        lines.append(f'  t{i}: {{plan: bench, keys: [{{id: k{i}, sha256: "{digest}"}}]}}')
    return "\n".join(lines)


# The table of targets. A new row is one entry: its name, what it starts, its config, its baseline.
TARGETS: tuple[Target, ...] = (
    Target("upstream", "load generator -> JSON upstream (nginx fixed body): the upstream's headroom", "json"),
    Target("mock", "load generator -> Python mock upstream, non-stream JSON", "", MOCK_COMMAND),
    Target("bare", "-> bare aiohttp pass-through -> JSON upstream: the aiohttp ceiling", "json", BARE_COMMAND),
    Target(
        "lean",
        "-> lean uvloop + httptools pass-through -> JSON upstream: the lean Python ceiling",
        "json",
        LEAN_COMMAND,
    ),
    Target(
        "gateway", "-> gateway, no rules -> JSON upstream", "json", GATEWAY_COMMAND, GATEWAY_NO_RULES, baseline="bare"
    ),
    Target(
        "bare-stream",
        "-> bare pass-through -> mock, SSE stream of 16 tokens",
        "mock",
        BARE_COMMAND,
        body="stream",
        default=False,
    ),
    Target(
        "lean-stream",
        "-> lean pass-through -> mock, SSE stream of 16 tokens",
        "mock",
        LEAN_COMMAND,
        body="stream",
        default=False,
    ),
    Target(
        "gateway-stream",
        "-> gateway, no rules -> mock, SSE stream of 16 tokens",
        "mock",
        GATEWAY_COMMAND,
        GATEWAY_NO_RULES,
        body="stream",
        baseline="bare-stream",
        default=False,
    ),
    # The same streams paced as a model generates them (PACED_TOKENS_PER_SECOND): each event reaches the proxy in a
    # read of its own, as issue 22 measured its 20-chunk streams, where the unpaced mock's events arrive in one or two
    # reads and a stream costs the pass-through little more than a JSON answer.
    Target(
        "lean-stream-paced",
        "-> lean pass-through -> mock, SSE stream of 16 tokens paced 1 ms apart",
        "mock-paced",
        LEAN_COMMAND,
        body="stream",
        default=False,
    ),
    Target(
        "gateway-stream-paced",
        "-> gateway, no rules -> mock, SSE stream of 16 tokens paced 1 ms apart",
        "mock-paced",
        GATEWAY_COMMAND,
        GATEWAY_NO_RULES,
        body="stream",
        default=False,
    ),
    Target(
        "full-redis-stream-paced",
        "-> gateway, full policy, Redis store -> mock, SSE stream of 16 tokens paced 1 ms apart",
        "mock-paced",
        GATEWAY_COMMAND,
        GATEWAY_FULL_POLICY_REDIS,
        body="stream",
        default=False,
        redis=True,
        tenants=10,
    ),
    # Workers (issue 8): the same gateway as 1 and as 2 SO_REUSEPORT processes, Redis store, not pinned.
    Target(
        "gateway-1w",
        "-> gateway --workers 1, Redis store, unpinned -> JSON upstream",
        "json",
        (*GATEWAY_COMMAND, "--workers", "1"),
        GATEWAY_REDIS_NO_RULES,
        default=False,
        redis=True,
        pin=False,
    ),
    Target(
        "gateway-2w",
        "-> gateway --workers 2, Redis store, unpinned -> JSON upstream",
        "json",
        (*GATEWAY_COMMAND, "--workers", "2"),
        GATEWAY_REDIS_NO_RULES,
        baseline="gateway-1w",
        default=False,
        redis=True,
        pin=False,
    ),
    # The full policy (issue 8): on the embedded store and on Redis, with 10 and with 100,000 tenants.
    Target(
        "full-embedded",
        "-> gateway, full policy (identity, 2 matchers, 3 limits, accounting), embedded store",
        "json",
        GATEWAY_COMMAND,
        GATEWAY_FULL_POLICY,
        baseline="bare",
        tenants=10,
    ),
    Target(
        "full-redis",
        "-> gateway, full policy, Redis store",
        "json",
        GATEWAY_COMMAND,
        GATEWAY_FULL_POLICY_REDIS,
        baseline="bare",
        redis=True,
        tenants=10,
    ),
    Target(
        "full-redis-stream",
        "-> gateway, full policy, Redis store -> mock, SSE stream of 16 tokens",
        "mock",
        GATEWAY_COMMAND,
        GATEWAY_FULL_POLICY_REDIS,
        baseline="bare-stream",
        body="stream",
        default=False,
        redis=True,
        tenants=10,
    ),
    Target(
        "full-tracing",
        "-> gateway, full policy, embedded store, every request traced (needs the tracing extra)",
        "json",
        GATEWAY_COMMAND,
        GATEWAY_FULL_POLICY_TRACING,
        baseline="full-embedded",
        default=False,
        tenants=10,
    ),
    Target(
        "full-100k-tenants",
        "-> gateway, full policy, embedded store, 100,000 tenants",
        "json",
        GATEWAY_COMMAND,
        GATEWAY_FULL_POLICY,
        baseline="full-embedded",
        default=False,
        tenants=100_000,
    ),
    Target(
        "full-spend-log",
        "-> gateway, full policy, embedded store, a spend row per request on SQLite",
        "json",
        GATEWAY_COMMAND,
        GATEWAY_FULL_SPEND_LOG,
        baseline="full-embedded",
        default=False,
        tenants=10,
    ),
    Target(
        "full-cache-miss",
        "-> gateway, full policy, response cache on, every request a miss (temperature 0)",
        "json",
        GATEWAY_COMMAND,
        GATEWAY_FULL_CACHE_MISS,
        baseline="full-embedded",
        body="chat-t0",
        default=False,
        tenants=10,
    ),
    Target(
        "full-cache-hit",
        "-> gateway, full policy, response cache on, every request a hit (temperature 0)",
        "json",
        GATEWAY_COMMAND,
        GATEWAY_FULL_CACHE_HIT,
        baseline="full-embedded",
        body="chat-t0",
        default=False,
        tenants=10,
    ),
)
RATIO_GOALS = {"gateway": 0.90, "full-embedded": 0.80, "full-redis": 0.80}
# Issue 22's targets, checked for the rows that ran: the target's CPU µs per request (per stream), Redis's, the added
# p50 at --connections 1 (ms), RSS at the end (MiB), spawn to first 200 (s), and CPU per stream as a multiple of the
# lean pass-through's.
# The load issue 22 measured its CPU figures at (wrk's connections): they are judged at that load only.
GOAL_CONNECTIONS = 64
GOALS: dict[str, dict[str, float]] = {
    "gateway": {"cpu_us": 50},
    "full-embedded": {"cpu_us": 90, "added_p50_ms": 0.35},
    "full-redis": {"cpu_us": 100, "redis_us": 30, "added_p50_ms": 0.45},
    "full-redis-stream": {"lean_cpu": 1.5},
    "full-redis-stream-paced": {"lean_cpu": 1.5},
    "full-100k-tenants": {"rss_mib": 150, "start_s": 3},
}

_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write one sentence about rate limits."},
]
BODIES = {
    "chat": {"model": "gpt-4o-mini", "messages": _MESSAGES, "max_tokens": 16},
    "chat-t0": {"model": "gpt-4o-mini", "messages": _MESSAGES, "max_tokens": 16, "temperature": 0},
    "stream": {
        "model": "gpt-4o-mini",
        "messages": _MESSAGES,
        "max_tokens": 16,
        "stream": True,
        "stream_options": {"include_usage": True},
    },
}
# What the JSON upstream answers: the mock's own answer to BODIES["chat"].
FIXED_CHAT_COMPLETION = {
    "id": "chatcmpl-bench0000000001",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_mock",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "the quick brown fox jumps over a lazy dog while seven wizards quietly pack boxes of",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "length",
        }
    ],
    "usage": {"prompt_tokens": 24, "completion_tokens": 16, "total_tokens": 40},
}


@dataclass
class Row:
    target: Target
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_loadgen: float
    cpu_target: float
    cpu_upstream: float | None
    cpu_us: float  # the target's CPU time (it and its children) over the measured window / requests answered
    redis_us: float | None = None  # redis-server's CPU time (INFO cpu) over the same window / requests
    start_s: float | None = None  # spawn to the first 200 through the target
    rss_mib: float | None = None  # VmRSS of the target and its children after the measured window
    peak_mib: float | None = None  # the sum of their VmHWM
    saturated: str = ""  # a core shared by the load generator or the upstream that ran near full
    interference: str = ""  # cores where processes outside the benchmark, or the hypervisor, took CPU time


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)


@contextmanager
def process(name: str, argv: Sequence[str], workdir: Path, tree: Path = REPO) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in ``tree`` (its ``tollgate`` first on the path) with output to ``workdir/name.log``; SIGTERM
    (then SIGKILL) on exit."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    with open(workdir / f"{name}.log", "wb") as log:  # the child writes to its own copy of the descriptor
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tree, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(port: int, proc: subprocess.Popen[bytes], body: bytes, log: Path, timeout: float = 30.0) -> None:
    """Until one real request through ``port`` answers 200 (a listening socket alone proves little)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            headers = dict(h.split(": ", 1) for h in CLIENT_HEADERS)
            conn.request(
                "POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json", **headers}
            )
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                return
            last = f"status {resp.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{log.stem} not ready on port {port} after {timeout}s ({last}):\n{log.read_text()[-2000:]}")


def family_stats(pid: int) -> dict[int, tuple[int, int]]:
    """``pid`` and all its descendants (nginx workers, gateway workers): pid -> (ppid, utime + stime in ticks)."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2 :].split()  # after "pid (comm) "
        stats[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    family, changed = {pid}, True
    while changed:
        changed = False
        for child, (ppid, _) in stats.items():
            if ppid in family and child not in family:
                family.add(child)
                changed = True
    return {member: stats[member] for member in family if member in stats}


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and all its descendants, in clock ticks."""
    return sum(ticks for _, ticks in family_stats(pid).values())


def memory_mib(pid: int) -> tuple[float, float]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` and all its descendants, summed, in MiB."""
    rss = peak = 0
    for member in family_stats(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:"):
                        peak += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, peak / 1024


def redis_cpu_seconds(url: str) -> float:
    """used_cpu_sys + used_cpu_user of the redis-server at ``url`` (INFO cpu: µs resolution, every thread)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def core_times() -> dict[int, tuple[int, int, int]]:
    """Per CPU, from /proc/stat: (busy in processes, steal, total) jiffies since boot.

    irq and softirq time (much of it the loopback traffic itself) counts in the
    total but not as busy: no process is charged for it, ours included.
    """
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
            busy = user + nice + system
            out[int(name[3:])] = (busy, steal, busy + irq + softirq + steal + idle + iowait)
    return out


# ---------------------------------------------------------------- upstreams


def nginx_config(workdir: Path, port: int) -> Path:
    body = orjson.dumps(FIXED_CHAT_COMPLETION).decode().replace("\\", "\\\\").replace("'", "\\'")
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process on;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/nginx-body;
    proxy_temp_path {workdir}/nginx-proxy;
    fastcgi_temp_path {workdir}/nginx-fastcgi;
    uwsgi_temp_path {workdir}/nginx-uwsgi;
    scgi_temp_path {workdir}/nginx-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""
    )
    return conf


@dataclass
class Upstream:
    name: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def start_upstream(kind: str, stack: ExitStack, workdir: Path, cpu: int | None, python: str) -> Upstream:
    port = free_port()
    nginx = shutil.which("nginx")
    if kind == "json" and nginx:
        argv = pinned(
            cpu,
            [nginx, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"), "-c", str(nginx_config(workdir, port))],
        )
        name = "nginx"
    else:
        argv = pinned(cpu, [python, "-m", "tollgate", "mock-upstream", "--port", str(port), "--no-record"])
        name = "mock-upstream" if kind == "mock" else "mock-upstream-json"
        if kind == "mock-paced":
            argv += ["--tokens-per-second", str(PACED_TOKENS_PER_SECOND)]
            name = "mock-upstream-paced"
    proc = stack.enter_context(process(name, argv, workdir))
    wait_ready(port, proc, orjson.dumps(BODIES["chat"]), workdir / f"{name}.log")
    return Upstream(name, port, proc.pid)


def start_redis(stack: ExitStack, workdir: Path, cpu: int | None) -> str:
    """A throwaway redis-server for the rows that share limits through Redis; returns its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed by the --workers rows")
    port = free_port()
    argv = pinned(
        cpu,
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
    )
    stack.enter_context(process("redis", argv, workdir))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


# ---------------------------------------------------------------- load generation


@dataclass(frozen=True)
class Load:
    tool: str  # "wrk" or "python"
    connections: int
    threads: int
    cpu: int | None
    python: str

    def argv(self, url: str, body_file: Path, duration: float) -> list[str]:
        if self.tool == "wrk":
            argv = [
                "wrk",
                f"-t{self.threads}",
                f"-c{self.connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "-s",
                str(BENCH / "wrk_post.lua"),
                url,
                "--",
                str(body_file),
                *CLIENT_HEADERS,
            ]
        else:
            argv = [
                self.python,
                str(BENCH / "loadgen.py"),
                url,
                str(body_file),
                *CLIENT_HEADERS,
                "--connections",
                str(self.connections),
                "--duration",
                str(duration),
            ]
        return pinned(self.cpu, argv)


def run_load(load: Load, url: str, body_file: Path, duration: float) -> tuple[dict[str, int], float]:
    """Run the load generator once; its parsed result line and its own CPU share (RUSAGE_CHILDREN delta)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(load.argv(url, body_file, duration), capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"^TG_RESULT (.*)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"load generator failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    result = {k: int(v) for k, v in (kv.split("=") for kv in match.group(1).split())}
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / wall * 100
    return result, cpu


# ---------------------------------------------------------------- one row


def start_target(
    target: Target,
    name: str,
    stack: ExitStack,
    workdir: Path,
    upstream: Upstream | None,
    python: str,
    tree: Path,
    redis_url: str,
    cpu: int | None,
) -> tuple[int, subprocess.Popen[bytes], float]:
    """Start the row's process from ``tree``, pinned to ``cpu``, its config rendered as ``workdir/<name>.yaml``, and
    wait until it answers the row's request: its port, its process and the seconds from spawn to answering."""
    port = free_port()
    values = {
        "python": python,
        "repo": str(tree),
        "bench": str(BENCH),
        "port": str(port),
        "upstream_port": str(upstream.port if upstream else ""),
        "upstream_url": upstream.url if upstream else "",
        "redis_url": redis_url,
        "tenants": tenants_yaml(target.tenants) if target.tenants else "",
    }
    if target.config:
        config = workdir / f"{name}.yaml"
        config.write_text(Template(target.config).substitute(values))
        values["config"] = str(config)
    argv = pinned(cpu, [Template(part).substitute(values) for part in target.command])
    spawned = time.monotonic()
    proc = stack.enter_context(process(name, argv, workdir, tree))
    body = orjson.dumps(BODIES[target.body])
    wait_ready(port, proc, body, workdir / f"{name}.log", timeout=30.0 + target.tenants / 1000)
    return port, proc, time.monotonic() - spawned


def measure(
    target: Target,
    upstream: Upstream | None,
    load: Load,
    workdir: Path,
    args: argparse.Namespace,
    placement: dict[str, int | None],
) -> Row:
    """Start the row's process (pinned to ``placement["target"]``), warm up, then measure under load."""
    body = orjson.dumps(BODIES[target.body])
    body_file = workdir / f"body-{target.body}.json"
    body_file.write_bytes(body)
    if not target.pin:
        placement = {**placement, "target": None}
    redis_url = getattr(args, "redis_url", "")
    start_s: float | None
    with ExitStack() as stack:
        if target.command:
            port, proc, start_s = start_target(
                target, target.name, stack, workdir, upstream, args.python, args.tree, redis_url, placement["target"]
            )
            target_pid = proc.pid
        else:
            assert upstream is not None
            port, target_pid, start_s = upstream.port, upstream.pid, None
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        if args.warmup > 0:
            run_load(load, url, body_file, args.warmup)
        pids = [target_pid] + ([upstream.pid] if upstream is not None and target.command else [])
        if not target.redis:
            redis_url = ""  # a redis-server of another row: not this row's
        redis_before = redis_cpu_seconds(redis_url) if redis_url else 0.0
        ticks_before = [cpu_ticks(pid) for pid in pids]
        cores_before = core_times()
        started = time.monotonic()
        result, cpu_loadgen = run_load(load, url, body_file, args.duration)
        wall = time.monotonic() - started
        ticks = [cpu_ticks(pid) - before for pid, before in zip(pids, ticks_before, strict=True)]
        cores_after = core_times()
        redis_seconds = redis_cpu_seconds(redis_url) - redis_before if redis_url else None
        rss_mib, peak_mib = memory_mib(target_pid)
    shares = [t / CLK_TCK / wall * 100 for t in ticks]
    requests = max(result["requests"], 1)
    seconds = result["duration_us"] / 1e6
    per_core: dict[int, list[str]] = {}
    per_core_share: dict[int, float] = {}
    roles = [
        ("load generator", "loadgen", cpu_loadgen),
        ("target", "target" if target.command else "upstream", shares[0]),
    ]
    if len(shares) > 1:
        roles.append(("upstream", "upstream", shares[1]))
    for label, where, share in roles:
        cpu = placement[where]
        if cpu is not None:
            per_core.setdefault(cpu, []).append(f"{label} {share:.0f} %")
            per_core_share[cpu] = per_core_share.get(cpu, 0.0) + share
    saturated = "; ".join(
        f"CPU {cpu} ({' + '.join(per_core[cpu])})"
        for cpu, share in per_core_share.items()
        if share > 90 and any(not part.startswith("target") or not target.command for part in per_core[cpu])
    )
    interference = []
    for cpu in sorted(per_core_share):
        busy, steal, total = (a - b for a, b in zip(cores_after[cpu], cores_before[cpu], strict=True))
        others = busy / max(total, 1) * 100 - per_core_share[cpu]
        stolen = steal / max(total, 1) * 100
        if others > 10 or stolen > 5:
            interference.append(
                f"CPU {cpu}: {max(others, 0):.0f} % taken by other processes, {stolen:.0f} % stolen by the hypervisor"
            )
    return Row(
        target=target,
        rps=result["requests"] / seconds,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        errors=result["errors"] + result["non2xx"],
        cpu_loadgen=cpu_loadgen,
        cpu_target=shares[0],
        cpu_upstream=shares[1] if len(shares) > 1 else None,
        cpu_us=ticks[0] / CLK_TCK * 1e6 / requests,
        redis_us=redis_seconds * 1e6 / requests if redis_seconds is not None else None,
        start_s=start_s,
        rss_mib=rss_mib,
        peak_mib=peak_mib,
        saturated=saturated,
        interference="; ".join(interference),
    )


# ---------------------------------------------------------------- report


def median_run(rows: list[Row]) -> Row:
    """The run with the median req/s (the lower middle one for an even count): one whole run, not a blend."""
    return sorted(rows, key=lambda r: r.rps)[(len(rows) - 1) // 2]


def rounds_line(selected: Sequence[Target], runs: dict[str, list[Row]]) -> str:
    per_row = "; ".join(
        f"{t.name} "
        + " / ".join(f"{r.rps:,.0f} ({r.cpu_us:.0f} µs)" for r in runs[t.name])
        + f", median {statistics.median(r.cpu_us for r in runs[t.name]):.1f} µs"
        for t in selected
        if runs[t.name]
    )
    rounds = max(len(v) for v in runs.values())
    return (
        f"- Rounds: every row ran {rounds} times, interleaved (all rows, then all rows again); the table shows each "
        f"row's median run (by req/s) and its ratios are between those runs; each issue-22 figure is the median of "
        f"the rounds' own, a ratio taken between rows of one round. req/s (target CPU µs/request) per round: {per_row}"
    )


def ratio(row: Row, rows: dict[str, Row]) -> float | None:
    base = rows.get(row.target.baseline)
    return row.rps / base.rps if base and base.rps else None


def against(row: Row, reference: Row | None) -> tuple[float, float] | None:
    """A gateway row against a pass-through row of the same run: (req/s ratio, CPU-per-request ratio)."""
    if reference is None or reference is row or not reference.rps or not reference.cpu_us:
        return None
    return row.rps / reference.rps, row.cpu_us / reference.cpu_us


def added_p50(row: Row, rows: dict[str, Row], connections: int) -> float | None:
    """At one connection, the row's p50 over the ``upstream`` row's (same JSON upstream, same run), in ms."""
    direct = rows.get("upstream")
    if connections != 1 or direct is None or not row.target.command or row.target.upstream != "json":
        return None
    return row.p50_ms - direct.p50_ms


def table(rows: list[Row], connections: int) -> list[str]:
    by_name = {r.target.name: r for r in rows}
    lines = [
        "| row | req/s | p50 ms | p99 ms | errors | CPU load gen | CPU target | CPU upstream | target µs/req "
        "| Redis µs/req | start s | RSS MiB (peak) | added p50 ms | ratio | vs bare: req/s, CPU | vs lean: req/s, CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        q = ratio(r, by_name)
        ratio_text = f"{q:.2f} of {r.target.baseline}" if q is not None else ""
        upstream_cpu = (
            f"{r.cpu_upstream:.0f} %" if r.cpu_upstream is not None else "(is target)" if r.target.upstream else ""
        )
        versus = []
        for name in r.target.references:
            pair = against(r, by_name.get(name)) if r.target.is_gateway else None
            versus.append(f"{pair[0]:.2f}×, {pair[1]:.2f}×" if pair else "")
        extra = added_p50(r, by_name, connections)
        lines.append(
            f"| {r.target.name} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {r.cpu_loadgen:.0f} % "
            f"| {r.cpu_target:.0f} % | {upstream_cpu} | {r.cpu_us:.1f} "
            f"| {'' if r.redis_us is None else f'{r.redis_us:.1f}'} "
            f"| {'' if r.start_s is None else f'{r.start_s:.2f}'} "
            f"| {'' if r.rss_mib is None else f'{r.rss_mib:.0f} ({r.peak_mib:.0f})'} "
            f"| {'' if extra is None else f'{extra:.3f}'} | {ratio_text} | {versus[0]} | {versus[1]} |"
        )
    return lines


def figures(row: Row, rows: dict[str, Row], connections: int) -> dict[str, float]:
    """The figures GOALS names, those this run measured. The CPU figures (the target's, Redis's, the ratio to lean)
    are issue 22's at its load only, GOAL_CONNECTIONS: at one connection a request pays the wake-ups that a busy
    proxy shares between many, and reads several times its CPU; the added p50 is the figure of that run."""
    out: dict[str, float] = {}
    load = connections == GOAL_CONNECTIONS
    for name, value in (
        ("cpu_us", row.cpu_us if load else None),
        ("redis_us", row.redis_us if load else None),
        ("start_s", row.start_s),
        ("rss_mib", row.rss_mib),
        ("added_p50_ms", added_p50(row, rows, connections)),
    ):
        if value is not None:
            out[name] = value
    lean = against(row, rows.get(row.target.references[1])) if load else None
    if lean is not None:
        out["lean_cpu"] = lean[1]
    return out


def round_figures(name: str, runs: dict[str, list[Row]], connections: int) -> dict[str, list[float]]:
    """Each figure GOALS names of row ``name``, once a round, each against the rows of its own round (a ratio to
    lean pairs the two runs made a minute apart, not the median runs of two rows, which may come from rounds far
    apart on a machine whose speed drifts)."""
    out: dict[str, list[float]] = {}
    for i, row in enumerate(runs.get(name, [])):
        same_round = {other: rs[i] for other, rs in runs.items() if i < len(rs)}
        for figure, value in figures(row, same_round, connections).items():
            out.setdefault(figure, []).append(value)
    return out


def verdicts(rows: list[Row], connections: int, runs: dict[str, list[Row]] | None = None) -> list[str]:
    """The ratio and issue-22 lines; with ``runs`` of several rounds, a figure is the median of its rounds' own
    (each round's ratios between that round's rows), the rounds' values shown beside it."""
    by_name = {r.target.name: r for r in rows}
    out = []
    for r in rows:
        q = ratio(r, by_name)
        if q is None:
            continue
        goal = RATIO_GOALS.get(r.target.name)
        verdict = "" if goal is None else f" (target >= {goal:.2f}: {'met' if q >= goal else 'NOT met'})"
        out.append(f"{r.target.name} / {r.target.baseline} = {q:.3f}{verdict}")
    for r in rows:
        measured = figures(r, by_name, connections)
        per_round = round_figures(r.target.name, runs, connections) if runs is not None else {}
        for figure, goal in GOALS.get(r.target.name, {}).items():
            rounds = per_round.get(figure, [])
            if len(rounds) > 1:
                value = statistics.median(rounds)
                shown = f" (rounds {' / '.join(f'{v:.3g}' for v in rounds)})"
            elif figure in measured:
                value, shown = measured[figure], ""
            else:
                continue
            met = "met" if value <= goal else "NOT met"
            out.append(f"{r.target.name} {figure} = {value:.3g}{shown} (issue 22 target <= {goal:g}: {met})")
    for r in rows:
        if r.saturated:
            out.append(
                f"warning: {r.target.name}: {r.saturated} near a full core: the row is bounded by the load generator or the upstream"
            )
        if r.interference:
            out.append(f"warning: {r.target.name}: {r.interference}: the figures understate what the row can do")
        if r.errors:
            out.append(f"warning: {r.target.name}: {r.errors} errors / non-2xx answers")
    return out


def write_bytecode(python: str, tree: Path | None = None) -> None:
    """Compile the measured ``tollgate`` package's modules to bytecode first, as an installed package has them (pip
    compiles a wheel's modules). Where PYTHONDONTWRITEBYTECODE is set (CI images, containers) a checkout never gets
    any, and every start of the gateway would compile its interpreted modules again: the start column would measure
    that, not the gateway. ``tree``: the checkout whose package is measured; None: where ``python`` imports it from."""
    if tree is not None:
        package = str(tree / "tollgate")
    else:
        found = subprocess.run(
            [python, "-c", "import os, tollgate; print(os.path.dirname(tollgate.__file__))"],
            capture_output=True,
            text=True,
            check=True,
        )
        package = found.stdout.strip()
    subprocess.run([python, "-m", "compileall", "-q", "-j", "0", package], check=True, stdout=subprocess.DEVNULL)


# lscpu's fields in the machine line. A cloud host's model name alone ("AMD EPYC") stands for several generations
# of CPU, and hosts of that one name ran the same rows at figures far apart: the family, model and stepping tell
# such hosts apart.
_CPU_FIELDS = (
    "Architecture",
    "CPU(s)",
    "Model name",
    "CPU family",
    "Model",
    "Stepping",
    "Thread(s) per core",
    "Core(s) per socket",
    "CPU max MHz",
    "BogoMIPS",
    "Hypervisor vendor",
    "L3 cache",
)


def cpu_fields(lscpu: str) -> list[str]:
    """The machine line's fields of ``lscpu``'s output, in its order, each once (its first line of that name)."""
    seen: dict[str, str] = {}
    for line in lscpu.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in _CPU_FIELDS:
            seen.setdefault(name.strip(), value.strip())
    return [f"{k}: {v}" for k, v in seen.items()]


def machine_description(load: Load, pinning: str, tree: Path = REPO) -> list[str]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout if shutil.which("lscpu") else ""
    cpu = cpu_fields(lscpu)
    versions = [f"Python {platform.python_version()}"]
    for module in ("aiohttp", "uvloop", "orjson"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{module} absent")
    for tool, flag in (("nginx", "-v"), ("wrk", "--version")):
        if shutil.which(tool):
            text = subprocess.run([tool, flag], capture_output=True, text=True)
            first = (text.stderr or text.stdout).strip().splitlines()[0]
            versions.append(first.split("Copyright")[0].strip())
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=tree
    ).stdout.strip()
    if (
        commit
        and subprocess.run(
            ["git", "status", "--porcelain", "--", "tollgate"], capture_output=True, text=True, cwd=tree
        ).stdout.strip()
    ):
        commit += " with uncommitted changes in tollgate/"
    if tree != REPO:
        commit += f" (the rows' processes run from {tree}; the harness from {REPO})"
    # scripts/compile's extensions beside their sources: the rows measure the compiled hot path.
    extensions = sum(1 for _ in (tree / "tollgate").rglob("*.so"))
    how = "scripts/compile --pgo" if (tree / "build" / "compile" / "profile-guided").exists() else "scripts/compile"
    commit += f"; {f'{extensions} modules compiled ({how})' if extensions else 'interpreted'}"
    return [
        f"- Machine: {'; '.join(cpu) or platform.processor()}; Linux {platform.release()}",
        f"- Software: {', '.join(versions)}; commit {commit or 'unknown'}",
        f"- Load: {load.tool}, {load.threads} thread(s), {load.connections} connections; {pinning}",
    ]


def record(
    rows: list[Row], header: list[str], args: argparse.Namespace, runs: dict[str, list[Row]] | None = None
) -> None:
    results = Path(args.results)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = [
        "",
        f"## Proxy overhead, {stamp}" + (f" ({args.label})" if args.label else ""),
        "",
        *header,
        f"- Duration: {args.duration:g} s per row after {args.warmup:g} s of warm-up; `python benchmarks/run.py {' '.join(sys.argv[1:])}`",
        "",
        *table(rows, args.connections),
        "",
        *(f"- {line}" for line in verdicts(rows, args.connections, runs)),
        "",
    ]
    new = not results.exists()
    with open(results, "a", encoding="utf-8") as f:
        if new:
            f.write(
                "# Benchmark results\n\nAppended by `python benchmarks/run.py --record` (and other harnesses); newest last.\n"
            )
        f.write("\n".join(section))


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [t.name for t in TARGETS]
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per row")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per row before it")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument(
        "--only",
        nargs="+",
        choices=names,
        metavar="ROW",
        help=f"rows to run (default: all default rows); any of {', '.join(names)}",
    )
    p.add_argument("--all", action="store_true", help="every row, the streaming ones too")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores with taskset")
    p.add_argument("--python", default=sys.executable, help="interpreter for the proxies and the mock")
    p.add_argument(
        "--tree",
        type=lambda text: Path(text).resolve(),
        default=REPO,
        help="checkout whose tollgate package the gateway rows run (default: this one), e.g. a detached checkout of "
        "the base, measured with this harness's columns: alternate runs with and without it for before/after",
    )
    p.add_argument("--record", action="store_true", help="append the results to --results")
    p.add_argument("--results", default=str(RESULTS), help="file --record appends to (default: benchmarks/RESULTS.md)")
    p.add_argument("--label", default="", help="added to the recorded section's title, e.g. which build was measured")
    p.add_argument("--keep-logs", action="store_true", help="keep the temp dir with configs and process logs")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the selected rows this many times, interleaved (all rows, then all rows again, ...), and report each "
        "row's median run: on a shared machine one run's ratio can drift by 10-15 %%",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    selected = [t for t in TARGETS if (t.name in args.only if args.only else args.all or t.default)]
    tool = "wrk" if args.loadgen == "wrk" or (args.loadgen == "auto" and shutil.which("wrk")) else "python"
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2 and shutil.which("taskset") and not args.no_pin:
        loadgen_cpu, proxy_cpu = cpus[0], cpus[1]
        upstream_cpu = cpus[2] if len(cpus) >= 3 else cpus[0]
        pinning = (
            f"load generator on CPU {loadgen_cpu}, proxy (target) on CPU {proxy_cpu}, upstream on CPU {upstream_cpu}"
        )
    else:
        loadgen_cpu = proxy_cpu = upstream_cpu = None
        pinning = "no CPU pinning"
    load = Load(tool, args.connections, args.threads, loadgen_cpu, args.python)
    placement = {"loadgen": loadgen_cpu, "target": proxy_cpu, "upstream": upstream_cpu}
    write_bytecode(args.python, args.tree)
    header = machine_description(load, pinning, args.tree)
    print("\n".join(header), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    runs: dict[str, list[Row]] = {t.name: [] for t in selected}
    try:
        with ExitStack() as stack:
            if any(t.redis for t in selected):
                args.redis_url = start_redis(stack, workdir, upstream_cpu)
            upstreams: dict[str, Upstream] = {}
            for round_no in range(1, max(1, args.rounds) + 1):
                if args.rounds > 1:
                    print(f"== round {round_no} of {args.rounds}", flush=True)
                for target in selected:
                    upstream = None
                    if target.upstream:
                        if target.upstream not in upstreams:
                            upstreams[target.upstream] = start_upstream(
                                target.upstream, stack, workdir, upstream_cpu, args.python
                            )
                        upstream = upstreams[target.upstream]
                    print(f"-- {target.name}: {target.about}" + (f" [{upstream.name}]" if upstream else ""), flush=True)
                    row = measure(target, upstream, load, workdir, args, placement)
                    runs[target.name].append(row)
                    redis_text = "" if row.redis_us is None else f", Redis {row.redis_us:.1f} µs/req"
                    print(
                        f"   {row.rps:,.0f} req/s, p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms, "
                        f"target {row.cpu_us:.1f} µs/req{redis_text}",
                        flush=True,
                    )
    finally:
        if args.keep_logs:
            print(f"logs and configs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    rows = [median_run(runs[t.name]) for t in selected if runs[t.name]]
    if args.rounds > 1:
        header = [*header, rounds_line(selected, runs)]
    print()
    print("\n".join(table(rows, args.connections)))
    print("\n".join(verdicts(rows, args.connections, runs if args.rounds > 1 else None)))
    if args.rounds > 1:
        print(header[-1][2:])
    print(
        "CPU shares are % of one core over the measured window (100 % = one core saturated); µs/req is CPU time over "
        "the window / requests answered (per stream for stream rows); vs bare / vs lean: req/s ratio, CPU µs ratio."
    )
    if args.record:
        record(rows, header, args, runs if args.rounds > 1 else None)
        print(f"recorded in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
