"""Redis's own work per request of run.py's full-redis row: instructions (callgrind) and commands per request.

A redis-server runs under callgrind; the gateway's own policy stages (identify
→ match → admit → account, whose settler settles and releases in batches, as
the gateway does) run in this process with run.py's full-redis config
(API-key identity, two namespace matchers, three rules plus the plan's two
limits). Requests go ``--concurrency`` at a time, so admissions share a
pipeline and settlements a ``settle.lua`` call, as under load; each batch
is settled before the next one is admitted, so every run sends the same calls. Two servers are
run, one per request count, each after the same warm-up; then

    instructions per request = (Ir(n2) - Ir(n1)) / (n2 - n1)

which cancels start-up, warm-up and shutdown. Commands per request come from
``INFO commandstats`` (reset after the warm-up), per command, a script's own
``redis.call``s included. The callgrind files are kept for
``callgrind_annotate``.

    .venv/bin/python benchmarks/redis_bench.py                  # FCALL (Redis 7 Functions)
    .venv/bin/python benchmarks/redis_bench.py --evalsha        # the EVALSHA fallback
    .venv/bin/python benchmarks/redis_bench.py --no-callgrind   # commands per request only, in seconds

Takes about a minute; the figures repeat within a fraction of a percent, on a
busy machine too (callgrind counts instructions, not time).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import redis  # noqa: E402
import uvloop  # noqa: E402
from policy_bench import gateway_state, policy_request  # noqa: E402
from run import GATEWAY_FULL_POLICY_REDIS, tenants_yaml  # noqa: E402

from tollgate.limiter.store import RedisEngine  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A redis-server, under callgrind unless told otherwise; stopped with SHUTDOWN NOSAVE (callgrind then writes)."""

    def __init__(self, out_dir: Path, tag: str, callgrind: bool, redis_server: str) -> None:
        self.port = _free_port()
        self.out = out_dir / f"redis-{tag}.cg"
        cmd = [redis_server, "--port", str(self.port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"]
        if callgrind:
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={self.out}", *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def commandstats(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    def stop(self) -> int | None:
        """Stops the server; its total instructions (Ir) when it ran under callgrind."""
        try:
            self.client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass
        self.proc.wait(timeout=120)
        if not self.out.exists():
            return None
        for line in self.out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {self.out}")


async def drive(
    url: str, warmup: int, requests: int, concurrency: int, evalsha: bool, server: Server
) -> dict[str, int]:
    """Warm-up, reset the command counts, then ``requests`` requests; returns the counts of those requests."""
    # A store budget that callgrind's slowdown never runs out of (else the limits' fail modes answer, not Redis).
    template = GATEWAY_FULL_POLICY_REDIS.replace('url: "$redis_url"}', 'url: "$redis_url", timeout: 10s}')
    assert template != GATEWAY_FULL_POLICY_REDIS
    config = Template(template).substitute(
        port=8080, upstream_url="http://127.0.0.1:9/v1", tenants=tenants_yaml(10), redis_url=url
    )
    # Accounting flushes every usage.batch_size records, never on its timer (whose batches depend on the speed).
    config += "usage: {flush_interval: 1h}\n"
    config += 'access_log: {enabled: true, path: "/dev/null"}\n'
    state = gateway_state(config)
    await state.start()
    if evalsha:
        for engine in state.limiter._stores.values():
            if isinstance(engine, RedisEngine):
                engine._functions = False
    request = policy_request(state)

    async def one() -> None:
        ctx = await request()
        decision = ctx.admission.decision if ctx.admission is not None else None
        if decision is None or not decision.allowed or decision.degraded:
            raise RuntimeError(f"not admitted by Redis ({decision}): the bench's limits are far above its load")

    settler = state.settler

    async def run(count: int) -> None:
        for start in range(0, count, concurrency):
            await asyncio.gather(*(one() for _ in range(min(concurrency, count - start))))
            # The settler settles the batch in one call before the next admissions go: every run sends the same
            # calls, whatever the timing of the replies.
            while settler.settled + settler.failures < settled[0] + min(concurrency, count - start):
                await asyncio.sleep(0.0005)
            settled[0] = settler.settled + settler.failures

    settled = [settler.settled + settler.failures]

    try:
        await run(warmup)
        server.client.config_resetstat()
        await run(requests)
        return server.commandstats()
    finally:
        await state.close()


def measure(args: argparse.Namespace, out_dir: Path, requests: int) -> tuple[int | None, dict[str, int]]:
    server = Server(out_dir, str(requests), not args.no_callgrind, args.redis_server)
    try:
        stats = uvloop.run(drive(server.url, args.warmup, requests, args.concurrency, args.evalsha, server))
    except BaseException:
        server.stop()
        raise
    stats.pop("config|resetstat", None)
    stats.pop("info", None)
    return server.stop(), stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n1", type=int, default=1000, help="requests measured on the first server")
    p.add_argument("--n2", type=int, default=3000, help="requests measured on the second server")
    p.add_argument("--warmup", type=int, default=320, help="requests before the measured ones, on both servers")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    p.add_argument("--evalsha", action="store_true", help="call the scripts with EVALSHA, not FCALL")
    p.add_argument("--no-callgrind", action="store_true", help="commands per request only (one plain server)")
    p.add_argument("--redis-server", default=shutil.which("redis-server") or "redis-server")
    p.add_argument("--out-dir", type=Path, default=None, help="where the callgrind files go (default: a temp dir)")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="redis_bench."))
    out_dir.mkdir(parents=True, exist_ok=True)
    via = "EVALSHA" if args.evalsha else "FCALL"
    if args.no_callgrind:
        _, stats = measure(args, out_dir, args.n2)
        n = args.n2
    else:
        ir1, _ = measure(args, out_dir, args.n1)
        ir2, stats = measure(args, out_dir, args.n2)
        n = args.n2
        assert ir1 is not None and ir2 is not None
        per = (ir2 - ir1) / (args.n2 - args.n1)
        print(
            f"redis-server, full-redis, {via}: {per / 1000:.1f} K instructions a request "
            f"(Ir {ir1:,} at {args.n1}, {ir2:,} at {args.n2}; callgrind files in {out_dir})"
        )
    total = sum(stats.values())
    print(f"commands a request: {total / n:.2f} ({n} requests, {args.concurrency} at a time)")
    for name, calls in sorted(stats.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<20} {calls / n:6.2f}")


if __name__ == "__main__":
    main()
