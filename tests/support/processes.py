"""Start real processes for integration tests: the gateway and the mock upstream, on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "REPO",
    "Proc",
    "free_port",
    "gateway_config",
    "gateway_process",
    "mock_upstream_process",
    "start_process",
    "wait_for_port",
]

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Proc:
    """A started process, its ports and where its output goes."""

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra_ports: dict[str, int] = field(default_factory=dict)
    config_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def start_process(args: Sequence[str], port: int, *, env: dict[str, str] | None = None, wait: bool = True) -> Proc:
    log = Path(tempfile.mkstemp(prefix="tollgate-proc-", suffix=".log")[1])
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(list(args), stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    proc = Proc(popen=popen, port=port, log_path=log)
    if wait:
        try:
            wait_for_port(port, proc=popen)
        except Exception:
            proc.stop()
            raise RuntimeError(f"{' '.join(args)} did not start:\n{proc.log()}") from None
    return proc


@contextmanager
def mock_upstream_process(*flags: str) -> Iterator[Proc]:
    port = free_port()
    proc = start_process([sys.executable, "-m", "tollgate", "mock-upstream", "--port", str(port), *flags], port)
    try:
        yield proc
    finally:
        proc.stop()


# The tests steer the mock upstream through the gateway with x-mock-* request headers (fault injection):
# the upstreams of test configs let them through beside the default allow-list.
MOCK_FORWARD_HEADERS = ["accept", "accept-language", "user-agent", "x-mock-*"]


def steerable(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with every upstream that names no ``forward_headers`` forwarding :data:`MOCK_FORWARD_HEADERS`."""
    doc["upstreams"] = {
        name: upstream if "forward_headers" in upstream else {**upstream, "forward_headers": MOCK_FORWARD_HEADERS}
        for name, upstream in doc.get("upstreams", {}).items()
    }
    return doc


def gateway_config(upstream_url: str, **overrides: Any) -> dict[str, Any]:
    """A minimal valid gateway config in front of one upstream; ``overrides`` replace top-level sections.

    Upstreams forward the client's ``x-mock-*`` headers unless they say otherwise (:func:`steerable`).
    """
    doc: dict[str, Any] = {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "upstreams": {"mock": {"base_url": upstream_url, "api_key": "sk-upstream-secret"}},
        "models": {
            "gpt-4o-mini": {"deployments": [{"upstream": "mock"}]},
            "text-embedding-3-small": {"deployments": [{"upstream": "mock"}]},
        },
    }
    doc.update(overrides)
    return steerable(doc)


@contextmanager
def gateway_process(config: dict[str, Any], *, env: dict[str, str] | None = None) -> Iterator[Proc]:
    """Write ``config`` to a file and run ``python -m gateway serve`` on it, on a free port."""
    port = free_port()
    cfg = {**config, "listeners": {**config.get("listeners", {})}}
    cfg["listeners"]["public"] = {**cfg["listeners"].get("public", {}), "host": "127.0.0.1", "port": port}
    admin = cfg["listeners"].get("admin", {"enabled": False})
    admin_port = None
    if admin.get("enabled", True):
        admin_port = free_port()
        cfg["listeners"]["admin"] = {**admin, "host": "127.0.0.1", "port": admin_port}
    fd, path = tempfile.mkstemp(prefix="tollgate-", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(cfg, fh)
    proc = start_process([sys.executable, "-m", "tollgate", "serve", "--config", path], port, env=env)
    proc.config_path = Path(path)
    if admin_port is not None:
        proc.extra_ports["admin"] = admin_port
        try:
            wait_for_port(admin_port, proc=proc.popen)  # it opens just after the public listener
        except Exception:
            proc.stop()
            raise
    try:
        yield proc
    finally:
        proc.stop()
        os.unlink(path)
