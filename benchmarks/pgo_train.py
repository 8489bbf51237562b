"""The training workload of a profile-guided build (scripts/compile --pgo): the gateway's request path, run in-process.

A build made with ``TOLLGATE_PGO=generate`` counts, in each process, how often each branch and function of the
compiled modules ran, and writes the counts when the process exits. This runs edge_bench.py's in-process gateway
(its HTTP server, the pipeline, the upstream client, accounting) through the rows run.py measures: JSON and SSE
streams without rules, and the full policy on the embedded store and on a private redis-server. The counts then
say which code is hot; the final build lays it out together and optimizes it for the paths taken.

    .venv/bin/python benchmarks/pgo_train.py [--requests N]

Each scenario is a process of its own, which must answer every request with 200 (edge_bench exits non-zero
otherwise): a training run that failed would leave a profile of error paths.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (gateway, store, upstream events a write): edge_bench's options. A paced stream (one event a write) is what a
# model sends; one of all its events at once takes the relay's other branches.
SCENARIOS: tuple[tuple[str, str, int], ...] = (
    ("json", "embedded", 1),
    ("stream", "embedded", 1),
    ("full-json", "embedded", 1),
    ("full-stream", "embedded", 1),
    ("full-json", "redis", 1),
    ("full-stream", "redis", 1),
    ("full-stream", "redis", 0),
)


def scenarios(redis: bool) -> list[tuple[str, str, int]]:
    """The scenarios to run: those on the Redis store only where a redis-server can be started."""
    return [s for s in SCENARIOS if redis or s[1] != "redis"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6000, help="requests (streams) a scenario")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the scenarios")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error("--requests must be at least 1")
    redis = shutil.which("redis-server") is not None
    if not redis:
        print("pgo_train: no redis-server on PATH: the Redis store's scenarios are left out", file=sys.stderr)
    for gateway, store, burst in scenarios(redis):
        started = time.monotonic()
        argv_ = [args.python, str(HERE / "edge_bench.py"), "--gateway", gateway, "--store", store]
        argv_ += ["--burst", str(burst), "--connections", "16", "--requests", str(args.requests)]
        argv_ += ["--warmup", str(min(500, args.requests)), "--rounds", "1"]
        done = subprocess.run(argv_, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout + done.stderr, file=sys.stderr)
            print(f"pgo_train: {gateway} on the {store} store failed ({done.returncode})", file=sys.stderr)
            return 1
        print(f"pgo_train: {gateway} on the {store} store, burst {burst}: {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
