"""Start, reload and memory of a real ``tollgate serve`` with N tenants (one key each) in its config file.

    python benchmarks/tenants_bench.py [--tenants 10 100000] [--rounds 3] [--reloads 5] [--style block]

A base tree is measured with the same harness: ``PYTHONPATH=../base python -m benchmarks.tenants_bench`` (the
gateway runs in a temporary folder, so the ``tollgate`` of PYTHONPATH is the one it imports).

For each N: the full-policy config of ``benchmarks/run.py`` (its ``full-100k-tenants`` row) with N tenants is
written to a file; the gateway is spawned and ``/healthz`` polled until the first 200 (start seconds, and
the CPU seconds the process spent until then); its RSS is read from /proc once it idles; then
``POST /admin/reload`` re-reads the same file ``--reloads`` times (reload seconds: the first, and the slowest;
the answer comes once the new version is in force; the median CPU seconds of a reload, which a busy machine
disturbs less), the RSS read after the first, second and last, and the peak RSS at the end. Medians over
``--rounds``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from string import Template

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from run import GATEWAY_FULL_POLICY, tenants_yaml, write_bytecode  # noqa: E402

__all__ = ["config_text", "main", "measure"]

TOKEN = "tenants-bench-admin-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def block_style(flow: str) -> str:
    """The tenants of :func:`tenants_yaml` written in block style (a mapping per tenant, a list item per key)."""
    out = []
    for line in flow.splitlines():
        tenant, _, rest = line.strip().partition(": {plan: ")
        plan, _, rest = rest.partition(", keys: [{id: ")
        key_id, _, rest = rest.partition(", sha256: ")
        out.append(f"  {tenant}:\n    plan: {plan}\n    keys:\n      - id: {key_id}\n        sha256: {rest[:-3]}")
    return "\n".join(out)


def config_text(tenants: int, port: int, admin_port: int, *, style: str = "flow") -> str:
    table = tenants_yaml(tenants)
    text = Template(GATEWAY_FULL_POLICY).safe_substitute(
        port=port, upstream_url="http://127.0.0.1:9/v1", tenants=block_style(table) if style == "block" else table
    )
    admin = f'admin: {{host: 127.0.0.1, port: {admin_port}, token: "{TOKEN}"}}'
    return text.replace("admin: {enabled: false}", admin, 1)


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _request(port: int, method: str, path: str, timeout: float) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def measure(
    tenants: int, *, python: str = sys.executable, timeout: float = 300.0, style: str = "flow", reloads: int = 5
) -> dict[str, float]:
    """One start, ``reloads`` reloads: seconds, CPU seconds and MiB."""
    port, admin_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory(prefix="tollgate-tenants-") as tmp:
        path = Path(tmp) / "gateway.yaml"
        path.write_text(config_text(tenants, port, admin_port, style=style))
        command = [python, "-m", "tollgate", "--log-level", "warning", "serve", "--config", str(path)]
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"the gateway exited: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
                try:
                    if _request(port, "GET", "/healthz", 1.0) == 200:
                        break
                except OSError:
                    pass
                if time.perf_counter() - started > timeout:
                    raise RuntimeError(f"no answer within {timeout:.0f}s")
                time.sleep(0.02)
            start_s = time.perf_counter() - started
            start_cpu = _cpu_seconds(proc.pid)
            time.sleep(1.0)
            after_start = _status(proc.pid)
            reload_s: list[float] = []
            reload_cpu: list[float] = []
            after_reload: list[dict[str, int]] = []
            for _ in range(reloads):
                began, cpu = time.perf_counter(), _cpu_seconds(proc.pid)
                status = _request(admin_port, "POST", "/admin/reload", timeout)
                reload_s.append(time.perf_counter() - began)
                reload_cpu.append(_cpu_seconds(proc.pid) - cpu)
                if status != 200:
                    raise RuntimeError(f"reload answered {status}")
                time.sleep(1.0)
                after_reload.append(_status(proc.pid))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {
        "start_s": start_s,
        "start_cpu_s": start_cpu,
        "rss_mib": after_start["VmRSS"] / 1024,
        "reload_s": reload_s[0],
        "slowest_reload_s": max(reload_s),
        "reload_cpu_s": statistics.median(reload_cpu),
        "rss_after_reload_mib": after_reload[0]["VmRSS"] / 1024,
        "rss_after_2_mib": after_reload[min(1, reloads - 1)]["VmRSS"] / 1024,
        f"rss_after_{reloads}_mib": after_reload[-1]["VmRSS"] / 1024,
        "peak_mib": after_reload[-1]["VmHWM"] / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, nargs="+", default=[10, 100_000])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--reloads", type=int, default=5, help="reloads after the start (RSS after 1, 2 and the last)")
    parser.add_argument(
        "--style", choices=("flow", "block"), default="flow", help="tenants one flow entry per line, or in block style"
    )
    args = parser.parse_args(argv)
    if args.reloads < 1:
        parser.error("--reloads must be at least 1")
    columns: tuple[str, ...] = ("start_s", "start_cpu_s", "rss_mib", "reload_s", "slowest_reload_s", "reload_cpu_s")
    columns += tuple(
        dict.fromkeys(("rss_after_reload_mib", "rss_after_2_mib", f"rss_after_{args.reloads}_mib", "peak_mib"))
    )
    write_bytecode(args.python)  # the package the gateway imports, as installed (see run.py)
    print(f"| tenants | {' | '.join(columns)} |")
    print(f"|---:|{'---:|' * len(columns)}")
    for count in args.tenants:
        runs = [measure(count, python=args.python, style=args.style, reloads=args.reloads) for _ in range(args.rounds)]
        medians = {c: statistics.median(r[c] for r in runs) for c in columns}
        print(f"| {count:,} | " + " | ".join(f"{medians[c]:.2f}" for c in columns) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
