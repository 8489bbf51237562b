"""Fallback load generator when wrk is missing: closed-loop aiohttp POSTs, printing wrk_post.lua's result line."""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

__all__ = ["main"]


async def _worker(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    until: float,
    latencies: list[float],
    counts: list[int],
) -> None:
    clock = time.perf_counter
    while (started := clock()) < until:
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status >= 400:
                    counts[1] += 1
        except aiohttp.ClientError:
            counts[0] += 1
            continue
        latencies.append(clock() - started)


async def _run(url: str, body: bytes, headers: dict[str, str], connections: int, duration: float) -> str:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0)
    latencies: list[float] = []
    counts = [0, 0]  # errors, non-2xx
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        until = started + duration
        await asyncio.gather(
            *(_worker(session, url, body, headers, until, latencies, counts) for _ in range(connections))
        )
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> int:
        return int(latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] * 1e6) if latencies else 0

    return f"TG_RESULT requests={len(latencies)} duration_us={int(elapsed * 1e6)} p50_us={pct(50)} p99_us={pct(99)} errors={counts[0]} non2xx={counts[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("body_file")
    parser.add_argument("headers", nargs="*", help='extra "Name: value" headers')
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    headers = {"Content-Type": "application/json"}
    for line in args.headers:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        print(runner.run(_run(args.url, body, headers, args.connections, args.duration)), flush=True)


if __name__ == "__main__":
    main()
