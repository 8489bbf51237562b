"""The embedded engine alone: CPU and instructions per request of the script calls a full-policy request makes.

Two steps. ``--record FILE`` runs ``policy_bench.py``'s full policy (run.py's
``full-embedded`` limits: requests and tokens per minute, two concurrency
limits, a monthly quota) and writes down every call its embedded engine ran:
script, KEYS, ARGV and the clock's time; about 1 admit.lua call a request and a
settle.lua call per 64 requests (token reconciliations and lease releases,
batched). ``--replay FILE`` runs those calls again, in order and at their
recorded times, on a fresh engine: the same keys, the same state, the same
replies, with nothing of the gateway around them. ``--tick N`` replays them
the way the gateway runs them, N admissions queued per event-loop tick through
``run()`` and run back to back at its end (``coalesce``); 0 calls
``run_sync`` directly.

    python benchmarks/embedded_bench.py --record /tmp/calls.json
    python benchmarks/embedded_bench.py --replay /tmp/calls.json --requests 20000 --rounds 3
    python benchmarks/embedded_bench.py --replay /tmp/calls.json --tree ../base     # another checkout's engine
    valgrind --tool=callgrind --callgrind-out-file=/tmp/e.%p.cg python benchmarks/embedded_bench.py \\
        --replay /tmp/calls.json --requests 2500 --rounds 1 --perturb 1     # and 4500: (Ir(4500) - Ir(2500)) / 2000

Under callgrind the replay's own timing is meaningless; the instruction counts
at two request counts are the figure (the first 2,000 admissions of a
recording are policy_bench's warm-up, leases piling up: count past them).
LuaJIT decides which code it compiles partly by where the code sits in memory,
so one count can move by 10 % when unrelated Lua changes: compare medians over
a few ``--perturb`` values.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def record(path: str, requests: int) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import logging
    from string import Template

    import policy_bench
    import uvloop
    from run import GATEWAY_FULL_POLICY, tenants_yaml

    from tollgate.limiter.store import embedded

    calls: list[list[Any]] = []
    original = embedded.EmbeddedEngine.run_sync

    def run_sync(self: Any, script: str, keys: Any, args: Any) -> Any:
        clock = self._clock
        now = clock.time_ns()

        class _At:  # the engine reads the clock once per call: hand it the time written down
            def time_ns(self) -> int:
                return now

        self._clock = _At()
        try:
            calls.append([script, list(keys), list(args), now])
            return original(self, script, keys, args)
        finally:
            self._clock = clock

    embedded.EmbeddedEngine.run_sync = run_sync  # type: ignore[method-assign]
    logging.basicConfig(level=logging.ERROR)
    config = Template(GATEWAY_FULL_POLICY).substitute(
        port=8080, upstream_url="http://127.0.0.1:9/v1", tenants=tenants_yaml(10)
    )
    config += 'access_log: {enabled: true, path: "/dev/null"}\nusage: {flush_interval: 1h}\n'
    uvloop.run(policy_bench.measure(config, requests, 1))
    Path(path).write_text(json.dumps(calls))
    admits = sum(1 for c in calls if c[0] == "admit")
    print(f"{len(calls):,} calls ({admits:,} admit) written to {path}")


class _ReplayClock:
    """Answers each call's recorded time."""

    def __init__(self) -> None:
        self.now = 0

    def time_ns(self) -> int:
        return self.now


def replay(path: str, requests: int, rounds: int, tick: int, perturb: int) -> None:
    from tollgate.limiter.store import EmbeddedEngine, keyspace

    if perturb:
        # LuaJIT counts a loop's or function's heat in a 64-entry table indexed by its bytecode's address: where the
        # scripts land in memory decides which of them share a counter, and so when, and which, traces start. Any
        # change to the Lua files moves them. Holding some memory first moves them on purpose: instruction counts of
        # two trees compare best as medians over a few values of --perturb.
        new_runtime = keyspace.new_runtime

        def shifted() -> Any:
            runtime = new_runtime()
            runtime.execute(f"PERTURB = {{}} for i = 1, {perturb} do PERTURB[i] = {{i}} end")
            return runtime

        keyspace.new_runtime = shifted

    calls = json.loads(Path(path).read_text())
    # Each round replays the calls of `requests` admissions on a fresh engine, after a warm-up of the first ones.
    ends = [i for i, c in enumerate(calls) if c[0] == "admit"]
    if requests > len(ends):
        raise SystemExit(f"{path} holds {len(ends)} admissions; record more")
    span = calls[: ends[requests - 1] + 1]
    # Keys and arguments as the limiter hands them over: tuples of str, not lists; one KEYS tuple for every call of
    # one admission's limits, as the limiter's layout of a request's limits hands over the same tuple each time.
    same_keys: dict[tuple[str, ...], tuple[str, ...]] = {}
    for c in span:
        keys = tuple(c[1])
        c[1], c[2] = same_keys.setdefault(keys, keys) if c[0] == "admit" else keys, tuple(c[2])
    gc.collect()
    gc.freeze()
    best = float("inf")
    for _ in range(rounds):
        clock = _ReplayClock()
        engine = EmbeddedEngine(clock, coalesce=tick > 0)  # type: ignore[arg-type]
        started = time.process_time()
        if tick:
            asyncio.run(_ticks(engine, clock, span, tick))
        else:
            run_sync = engine.run_sync
            for script, keys, args, now in span:
                clock.now = now
                run_sync(script, keys, args)
        best = min(best, (time.process_time() - started) / requests * 1e6)
    how = f"{tick} admissions a tick" if tick else "run_sync"
    print(
        f"embedded engine, full policy's calls ({how}): {best:.2f} us of CPU per request (best of {rounds} x {requests:,})"
    )


async def _ticks(engine: Any, clock: _ReplayClock, span: list[Any], tick: int) -> None:
    """Queues the calls of `tick` admissions, then lets the engine's end-of-tick flush run them."""
    run = engine.run
    pending: list[Any] = []
    admits = 0
    for script, keys, args, now in span:
        clock.now = now  # the flush reads the clock when it runs each call: same time for the whole batch
        pending.append(run(script, keys, args))
        if script == "admit":
            admits += 1
            if admits % tick == 0:
                for future in pending:
                    await future
                pending = []
    for future in pending:
        await future


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--record", metavar="FILE", help="run policy_bench's full policy and write its engine calls to FILE")
    p.add_argument("--replay", metavar="FILE", help="replay FILE's calls on a fresh embedded engine")
    p.add_argument("--requests", type=int, default=20_000, help="admissions to replay per round (or record)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the best is reported")
    p.add_argument("--tick", type=int, default=0, help="admissions queued per event-loop tick (0: run_sync)")
    p.add_argument("--perturb", type=int, default=0, help="tables held before the scripts load (see replay())")
    p.add_argument("--tree", help="another checkout whose tollgate runs the replay (a base for before/after)")
    args = p.parse_args()
    sys.path.insert(0, str(Path(args.tree).resolve() if args.tree else REPO))
    if args.record:
        record(args.record, args.requests)
    elif args.replay:
        replay(args.replay, args.requests, args.rounds, args.tick, args.perturb)
    else:
        p.error("--record FILE or --replay FILE")


if __name__ == "__main__":
    main()
