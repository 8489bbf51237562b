"""benchmarks/locustfile.py against the demo: with a config whose keys are all hashed, it sends the demo's key and
locust exits 0 (it used to send a misspelt key, every request got 401 and locust exited 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .support.processes import free_port, start_process

pytestmark = pytest.mark.process

REPO = Path(__file__).resolve().parents[1]


def test_locust_falls_back_to_the_demo_key_and_exits_0(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    env = {"XDG_DATA_HOME": str(tmp_path)}
    demo = start_process(
        [sys.executable, "-m", "tollgate", "demo", "--port", str(port), "--admin-port", str(admin_port)], port, env=env
    )
    hashed_only = tmp_path / "hashed.yaml"  # tenants whose keys locust cannot send: it must fall back
    hashed_only.write_text(
        "tenants:\n  acme:\n    plan: enterprise\n    keys:\n      - id: k1\n        key_sha256: " + "0" * 64 + "\n"
    )
    try:
        locust = Path(sys.executable).with_name("locust")
        out = subprocess.run(
            [
                *(str(locust), "-f", str(REPO / "benchmarks" / "locustfile.py"), "--headless", "-u", "2", "-r", "2"),
                *("-t", "4s", "--host", f"http://127.0.0.1:{port}", "--tollgate-config", str(hashed_only)),
                "--only-summary",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            cwd=tmp_path,
        )
        report = out.stdout + out.stderr
        assert out.returncode == 0, report
        demo_row = next(line for line in report.splitlines() if line.startswith("demo "))
        sent, ok = (int(n) for n in demo_row.split()[3:5])
        assert sent > 0 and ok == sent, demo_row  # every request answered 2xx: the key is the demo's
    finally:
        assert demo.stop() == 0
