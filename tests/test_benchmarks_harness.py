"""The benchmark harness: the lean pass-through forwards like a proxy (credential swapped, keep-alive upstream, JSON
with its length, SSE re-chunked, pipelined requests in order, 502 without an upstream), and run.py's per-request
figures (CPU µs against bare and lean, added p50 at one connection, issue 22's goals) come from the right rows."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pair
import pgo_train
import run
from lean_proxy import LeanProxy, Origin

from .support.processes import refusing_port

MakeServer = Callable[..., Awaitable[TestServer]]
SSE_EVENTS = [b'data: {"n": %d}\n\n' % i for i in range(20)] + [b"data: [DONE]\n\n"]


@pytest.fixture
async def upstream(aiohttp_server: MakeServer) -> tuple[str, list[dict[str, Any]]]:
    """An upstream that records each request (headers, body, the proxy's source port) and answers JSON or SSE."""
    seen: list[dict[str, Any]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.append(
            {
                "path": request.path,
                "headers": dict(request.headers),
                "body": body,
                "peer": request.transport.get_extra_info("peername"),
            }  # type: ignore[union-attr]
        )
        if b'"stream": true' not in body:
            return web.json_response({"echo": body.decode()}, headers={"X-Request-Id": "req-1"})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in SSE_EVENTS:
            await response.write(event)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/base/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    return str(server.make_url("/base/v1")), seen


async def _lean(upstream_url: str) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    origin = Origin(upstream_url, "sk-upstream")
    server = await loop.create_server(lambda: LeanProxy(origin), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def lean_url(upstream: tuple[str, list[dict[str, Any]]]) -> AsyncIterator[str]:
    async for url in _lean(upstream[0]):
        yield url


async def test_lean_proxy_swaps_the_credential_and_reuses_one_upstream_connection(
    lean_url: str, upstream: tuple[str, list[dict[str, Any]]]
) -> None:
    _, seen = upstream
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as client:
        for i in range(3):
            body = b'{"model": "m", "n": %d}' % i
            async with client.post(lean_url, data=body, headers={"Authorization": "Bearer client-key"}) as response:
                assert response.status == 200
                assert response.headers["Content-Length"] == str(len(await response.read()))
                assert response.headers["X-Request-Id"] == "req-1"  # end-to-end headers relayed
                assert (await response.json()) == {"echo": body.decode()}
    assert [s["body"] for s in seen] == [b'{"model": "m", "n": %d}' % i for i in range(3)]
    assert {s["path"] for s in seen} == {"/base/v1/chat/completions"}
    assert {s["headers"]["Authorization"] for s in seen} == {"Bearer sk-upstream"}
    assert len({s["peer"] for s in seen}) == 1  # keep-alive: the three requests on one upstream connection


async def test_lean_proxy_passes_an_sse_stream_through_chunked(lean_url: str) -> None:
    async with (
        aiohttp.ClientSession() as client,
        client.post(lean_url, data=b'{"stream": true}') as response,
    ):
        assert response.headers["Content-Type"] == "text/event-stream"
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert await response.read() == b"".join(SSE_EVENTS)


async def test_lean_proxy_answers_pipelined_requests_in_order(
    lean_url: str, upstream: tuple[str, list[dict[str, Any]]]
) -> None:
    port = int(lean_url.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    one = b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n{"a":1}'
    two = b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nConnection: close\r\n\r\n{"a":2}'
    writer.write(one + two)
    answers = await asyncio.wait_for(reader.read(), 10)  # until the proxy closes, as the second request asked
    writer.close()
    assert answers.count(b"HTTP/1.1 200 OK") == 2
    assert answers.index(b'\\"a\\":1') < answers.index(b'\\"a\\":2')
    assert [s["body"] for s in upstream[1]] == [b'{"a":1}', b'{"a":2}']


async def test_lean_proxy_answers_502_when_the_upstream_is_down() -> None:
    async for url in _lean(f"http://127.0.0.1:{refusing_port()}/v1"):
        async with aiohttp.ClientSession() as client, client.post(url, data=b"{}") as response:
            assert response.status == 502
            assert "upstream" in (await response.json())["error"]["message"]


def _row(name: str, rps: float, cpu_us: float, p50_ms: float = 1.0) -> run.Row:
    target = next(t for t in run.TARGETS if t.name == name)
    return run.Row(target, rps, p50_ms, 2 * p50_ms, 0, 50.0, cpu_us * rps / 1e4, None, cpu_us)


def test_gateway_rows_are_printed_against_both_pass_throughs() -> None:
    rows = [_row("bare", 4000, 250), _row("lean", 40000, 25), _row("gateway", 8000, 125)]
    line = run.table(rows, connections=64)[-1]
    assert "| 2.00 of bare | 2.00×, 0.50× | 0.20×, 5.00× |" in line
    assert "| 125.0 |" in line  # the CPU µs per request column
    lean_cells = run.table(rows, connections=64)[3].split("|")[-4:-1]  # ratio, vs bare, vs lean
    assert [cell.strip() for cell in lean_cells] == ["", "", ""]  # a pass-through is not compared with them


def test_added_p50_is_over_the_upstream_row_at_one_connection_only() -> None:
    rows = {r.target.name: r for r in (_row("upstream", 9000, 10, 0.10), _row("full-redis", 3000, 290, 0.95))}
    assert run.added_p50(rows["full-redis"], rows, connections=1) == pytest.approx(0.85)
    assert run.added_p50(rows["full-redis"], rows, connections=64) is None
    assert "full-redis added_p50_ms = 0.85 (issue 22 target <= 0.45: NOT met)" in run.verdicts(list(rows.values()), 1)


def test_the_cpu_figures_are_judged_at_the_issues_load_and_the_added_p50_at_one_connection() -> None:
    """At one connection a request pays the wake-ups a busy gateway shares: its CPU µs (here 141) is no verdict on
    issue 22's targets, measured at 64 connections; the added p50 is. At 64 connections, the other way round."""
    alone = [_row("upstream", 9000, 10, 0.10), _row("lean", 8900, 50, 0.19), _row("full-redis", 4300, 141, 0.30)]
    alone[2] = dataclasses.replace(alone[2], redis_us=55.0)
    lines = run.verdicts(alone, 1)
    assert "full-redis added_p50_ms = 0.2 (issue 22 target <= 0.45: met)" in lines
    assert not [line for line in lines if "cpu_us" in line or "redis_us" in line]
    busy = [_row("upstream", 84000, 6, 0.56), _row("lean", 54000, 18), _row("full-redis", 20600, 48, 2.8)]
    busy[2] = dataclasses.replace(busy[2], redis_us=13.5)
    lines = run.verdicts(busy, 64)
    assert "full-redis cpu_us = 48 (issue 22 target <= 100: met)" in lines
    assert "full-redis redis_us = 13.5 (issue 22 target <= 30: met)" in lines
    assert not [line for line in lines if "added_p50" in line]


# lscpu on a cloud host whose model name says only the vendor's line (trimmed; "Model:" is not "Model name:")
_LSCPU = """Architecture:                            x86_64
CPU(s):                                  2
Vendor ID:                               AuthenticAMD
Model name:                              AMD EPYC
CPU family:                              26
Model:                                   2
Thread(s) per core:                      1
Stepping:                                1
BogoMIPS:                                5192.24
Flags:                                   fpu vme avx512f
Hypervisor vendor:                       KVM
L3 cache:                                32 MiB (1 instance)
NUMA node0 CPU(s):                       0,1
"""


def test_the_machine_line_tells_cpu_generations_apart_by_family_model_and_stepping() -> None:
    """Hosts that all read "AMD EPYC" ran the same rows at figures far apart: the line carries what tells their CPUs
    apart, and nothing of lscpu's that is not asked for (the vendor, the flags, the NUMA lists)."""
    assert run.cpu_fields(_LSCPU) == [
        "Architecture: x86_64",
        "CPU(s): 2",
        "Model name: AMD EPYC",
        "CPU family: 26",
        "Model: 2",
        "Thread(s) per core: 1",
        "Stepping: 1",
        "BogoMIPS: 5192.24",
        "Hypervisor vendor: KVM",
        "L3 cache: 32 MiB (1 instance)",
    ]
    assert run.cpu_fields("") == []


def test_over_rounds_an_issue_figure_is_the_median_of_each_rounds_own() -> None:
    """Three rounds on a machine that drifts: the paced stream's ratio to lean, taken within each round, is 1.40,
    1.45 and 1.60 (median 1.45); the median runs (by req/s) of the two rows come from different rounds and would
    say 1.74."""
    lean = [
        _row("lean-stream-paced", 2000, 250),
        _row("lean-stream-paced", 2100, 300),
        _row("lean-stream-paced", 1900, 200),
    ]
    full = [
        _row("full-redis-stream-paced", 1800, 350),
        _row("full-redis-stream-paced", 1700, 435),
        _row("full-redis-stream-paced", 1600, 320),
    ]
    runs = {"lean-stream-paced": lean, "full-redis-stream-paced": full}
    rows = [run.median_run(lean), run.median_run(full)]
    assert rows[1].cpu_us / rows[0].cpu_us == pytest.approx(1.74, abs=0.01)
    lines = run.verdicts(rows, 64, runs)
    assert "full-redis-stream-paced lean_cpu = 1.45 (rounds 1.4 / 1.45 / 1.6) (issue 22 target <= 1.5: met)" in lines
    assert "full-redis-stream-paced lean_cpu = 1.74 (issue 22 target <= 1.5: NOT met)" in run.verdicts(rows, 64)


@pytest.mark.process
@pytest.mark.parametrize("kind", ["full-json", "full-stream"])
def test_edge_bench_measures_the_full_policy_on_a_private_redis(kind: str) -> None:
    """``edge_bench.py --store redis`` starts its own redis-server, answers every request with 200 through it (the
    bench exits non-zero otherwise) and stops the server."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "edge_bench.py"
    argv = [sys.executable, str(bench), "--gateway", kind, "--store", "redis", "--connections", "2"]
    done = subprocess.run(
        [*argv, "--requests", "40", "--warmup", "10", "--rounds", "1"], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert f"gateway {kind} on the redis store (2 connection(s), 40 requests a round" in done.stdout.decode()


def test_the_profile_training_leaves_out_the_redis_scenarios_only_without_a_redis_server() -> None:
    with_redis = pgo_train.scenarios(redis=True)
    assert with_redis == list(pgo_train.SCENARIOS)
    assert {store for _, store, _ in with_redis} == {"embedded", "redis"}
    assert {gateway for gateway, _, _ in with_redis} == {"json", "stream", "full-json", "full-stream"}
    assert pgo_train.scenarios(redis=False) == [s for s in with_redis if s[1] == "embedded"]


@pytest.mark.process
def test_the_profile_training_runs_every_scenario_through_the_gateway() -> None:
    """benchmarks/pgo_train.py (scripts/compile --pgo's workload) answers every request of every scenario with 200:
    edge_bench exits non-zero otherwise, and the training with it."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "pgo_train.py"
    done = subprocess.run([sys.executable, str(bench), "--requests", "32"], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    ran = [line.split(":")[1].strip() for line in done.stdout.decode().splitlines()]
    expected = pgo_train.scenarios(redis=shutil.which("redis-server") is not None)
    assert ran == [f"{gateway} on the {store} store, burst {burst}" for gateway, store, burst in expected]


def test_the_profile_training_refuses_a_request_count_below_one() -> None:
    with pytest.raises(SystemExit) as exc:
        pgo_train.main(["--requests", "0"])
    assert exc.value.code == 2


@pytest.mark.process
def test_the_profile_training_fails_when_a_scenario_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """A scenario that did not answer (here: an interpreter that exits 1 at once) stops the training with an error:
    its profile would count error paths as the hot ones."""
    assert pgo_train.main(["--requests", "1", "--python", "false"]) == 1
    assert "pgo_train: json on the embedded store failed (1)" in capsys.readouterr().err


def test_a_pair_is_summed_up_by_the_median_of_its_rounds_own_ratios() -> None:
    line = pair.ratio_line("full-redis", [100.0, 120.0, 90.0], [95.0, 108.0, 90.0])
    assert line == "full-redis: A 100.0 µs, B 95.0 µs a request (medians); B/A 0.950 (rounds 0.950 / 0.900 / 1.000)"


def test_a_pair_refuses_a_folder_that_is_not_a_checkout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        pair.main([str(tmp_path), str(Path(__file__).resolve().parents[1]), "gateway"])
    assert exc.value.code == 2
    assert f"{tmp_path}: not a checkout (no tollgate/__init__.py)" in capsys.readouterr().err


@pytest.mark.process
def test_a_pair_runs_both_gateways_at_once_and_prints_their_ratio() -> None:
    """Both sides answer every request (pair.py exits with the load generator's errors otherwise), a round each."""
    repo = Path(__file__).resolve().parents[1]
    argv = [sys.executable, str(repo / "benchmarks" / "pair.py"), str(repo), str(repo), "gateway"]
    done = subprocess.run(
        [*argv, "--rounds", "1", "--duration", "1", "--warmup", "0.5", "--connections", "4"],
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = done.stdout.decode().splitlines()
    assert lines[0].startswith("round 1: A ") and " B/A " in lines[0]
    assert lines[1].startswith("gateway: A ") and "B/A " in lines[1]
