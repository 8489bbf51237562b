"""Before and after in one run: two checkouts' gateways side by side on one core, each under its own load at once.

On a shared machine the figures of run.py's rows move by 20 % or more from one round to the next (other tenants,
the hypervisor), more than most changes move them; alternating runs of the base and the change needs many rounds
to tell them apart. Here both gateways run at the same time, pinned to the same core (the target CPU of run.py),
from one upstream, one redis-server and the same config, each loaded by its own load generator with the same
connections for the same seconds. Whatever slows the machine slows both; the ratio of their CPU µs a request in
each round holds to about 1 % (a checkout paired with itself reads 0.99 to 1.01).

    .venv/bin/python benchmarks/pair.py ../base . full-redis --rounds 4 --duration 6

The figure: B's CPU µs per request over A's, the median of the rounds. Each gateway has half the core, so the
µs themselves read higher than run.py's, where one has it all; compare them between A and B, not with run.py.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

import orjson
import run

# The rows a gateway serves from one config, as run.py defines them.
ROWS = sorted(t.name for t in run.TARGETS if t.is_gateway and t.pin)


def ratio_line(name: str, a: list[float], b: list[float]) -> str:
    """The summary: each side's median µs and the median of the rounds' own B/A ratios."""
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    return (
        f"{name}: A {statistics.median(a):.1f} µs, B {statistics.median(b):.1f} µs a request (medians); "
        f"B/A {statistics.median(ratios):.3f} (rounds {' / '.join(f'{r:.3f}' for r in ratios)})"
    )


def _load_into(
    results: list[dict[str, int]], i: int, load: run.Load, url: str, body_file: Path, duration: float
) -> None:
    """One side's load generator, its result line kept at ``results[i]`` (a thread each, both at once)."""
    results[i] = run.run_load(load, url, body_file, duration)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="checkout A (the base)")
    parser.add_argument("b", type=Path, help="checkout B (the change)")
    parser.add_argument("row", choices=ROWS, help="run.py's row whose gateway both run")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of load a round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=32, help="connections of each load generator")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    for tree in (args.a, args.b):
        if not (tree / "tollgate" / "__init__.py").is_file():
            parser.error(f"{tree}: not a checkout (no tollgate/__init__.py)")
    target = next(t for t in run.TARGETS if t.name == args.row)
    loadgen = "wrk" if shutil.which("wrk") else "python"
    load = run.Load(loadgen, args.connections, 1, 0, sys.executable)
    body = orjson.dumps(run.BODIES[target.body])
    with tempfile.TemporaryDirectory(prefix="tollgate-pair-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        body_file = workdir / "body.json"
        body_file.write_bytes(body)
        upstream = run.start_upstream(target.upstream, stack, workdir, 0, sys.executable)
        redis_url = run.start_redis(stack, workdir, 0) if target.redis else ""
        sides = []
        for name, tree in (("A", args.a.resolve()), ("B", args.b.resolve())):
            # On run.py's target CPU (1), as its rows run.
            port, proc, _ = run.start_target(target, name, stack, workdir, upstream, sys.executable, tree, redis_url, 1)
            sides.append((f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid))
        for url, _ in sides:
            run.run_load(load, url, body_file, args.warmup)
        figures: list[list[float]] = [[], []]
        for round_ in range(args.rounds):
            results: list[dict[str, int]] = [{}, {}]
            before = [run.cpu_ticks(pid) for _, pid in sides]
            threads = [
                threading.Thread(target=_load_into, args=(results, i, load, sides[i][0], body_file, args.duration))
                for i in range(2)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for i, (_, pid) in enumerate(sides):
                if not results[i] or results[i]["errors"] + results[i]["non2xx"]:
                    raise SystemExit(f"side {'AB'[i]}: the load generator saw errors: {results[i]}")
                seconds = (run.cpu_ticks(pid) - before[i]) / run.CLK_TCK
                figures[i].append(seconds * 1e6 / max(results[i]["requests"], 1))
            a, b = figures[0][-1], figures[1][-1]
            print(f"round {round_ + 1}: A {a:.1f} µs, B {b:.1f} µs a request, B/A {b / a:.3f}", flush=True)
    print(ratio_line(args.row, figures[0], figures[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
