"""Start real processes for integration tests: the gateway and the mock upstream, on free loopback ports."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "MOCK_FORWARD_HEADERS",
    "REPO",
    "Proc",
    "free_port",
    "gateway_config",
    "gateway_process",
    "keep_running_logs",
    "mock_upstream_process",
    "owned",
    "start_process",
    "steerable",
    "take_kept_logs",
    "wait_for_port",
    "wait_for_workers",
    "wait_until",
    "worker_pids",
]

REPO = Path(__file__).resolve().parents[2]

_RUNNING: list[Proc] = []  # started and not stopped yet: their logs are kept when a test fails
_KEPT: list[Path] = []  # logs kept on disk since the last take_kept_logs()
_HANDED_OUT: deque[int] = deque(maxlen=256)  # the ports free_port() gave last, newest last


def _hand_out(port: int) -> int:
    _HANDED_OUT.append(port)
    return port


def _listening_range() -> range:
    """Where listeners' ports are drawn from: below the kernel's ephemeral range, which the source ports of outgoing
    connections come from. A port drawn from that range could be taken by any process's next outgoing connection
    (a gateway's to Redis, to its upstream) between the draw and the listener's bind ("address already in use")."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(10_000, low) if low > 20_000 else range(0)


_LISTENING = _listening_range()
_DRAW = random.Random()  # seeded from the OS: each test worker draws its own sequence


_REFUSING: list[socket.socket] = []


def refusing_port() -> int:
    """A loopback port that refuses connections for as long as this process runs, for an upstream that is down:
    bound and never listening, and held, so that no listener of a test running beside this one can take it (a port
    merely free when drawn could be, between the draw and the connection)."""
    if not _REFUSING:
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.bind(("127.0.0.1", 0))
        _REFUSING.append(held)
    return int(_REFUSING[0].getsockname()[1])


def free_port(*, with_bus: bool = False) -> int:
    """A loopback TCP port free right now, for a listener; with ``with_bus`` also port + 10000 (a Redis Cluster
    node's bus).

    Drawn at random below the kernel's ephemeral range (see _listening_range), where no outgoing connection can take
    it before the listener binds it; where that range leaves no room, the kernel's pick. Not one handed out by an
    earlier call of this process that may not be listening yet: two listeners of one config (public and admin) were
    once given the same port."""
    for _ in range(200):
        port = _candidate(with_bus)
        if port in _HANDED_OUT or not _bindable(port) or (with_bus and not _bindable(port + 10000)):
            continue
        return _hand_out(port)
    raise RuntimeError("no free loopback port (or port pair, with_bus) found")


def _candidate(with_bus: bool) -> int:
    span = _LISTENING
    if with_bus and len(span):
        span = range(span.start, span.stop - 10_000)  # the bus port stays below the ephemeral range too
    if len(span) >= 1000:
        return _DRAW.choice(span)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    return port if not with_bus or port + 10000 <= 65535 else 0


def _bindable(port: int) -> bool:
    if not 0 < port <= 65535:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"condition not met after {timeout}s")


def worker_pids(supervisor: int) -> dict[int, int]:
    """``{worker index: pid}`` of the live (not zombie) children of ``supervisor``, from /proc."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if int(fields[1]) != supervisor or fields[0] == b"Z" or b"--worker" not in argv:
            continue
        found[int(argv[argv.index(b"--worker") + 1])] = int(entry)
    return found


def wait_for_workers(proc: Proc, workers: int, timeout: float) -> None:
    """Until the supervisor ``proc`` of ``serve --workers N`` has N live workers that each logged that it is ready."""
    wait_until(
        lambda: len(worker_pids(proc.popen.pid)) == workers and proc.log().count(" ready (pid ") >= workers, timeout
    )


@dataclass(eq=False)
class Proc:
    """A started process, its ports and where its output goes.

    The output goes to a ``/tmp/tollgate-proc-*.log`` file. :meth:`stop` removes it and keeps its text for
    :meth:`log`; the file stays on disk when the ``with`` block that owns the process ends by an exception, or when a
    test fails while the process runs (the root conftest names kept files, with their last lines, in the report).
    """

    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    extra_ports: dict[str, int] = field(default_factory=dict)
    config_path: Path | None = None
    _kept: bool = field(default=False, repr=False)
    _final_log: str | None = field(default=None, repr=False)  # the log's text once the file is removed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the log file goes unless it is kept (its text stays in :meth:`log`)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self in _RUNNING:
            _RUNNING.remove(self)
        if not self._kept and self._final_log is None:
            self._final_log = self.log_path.read_text(errors="replace")
            self.log_path.unlink(missing_ok=True)
        return self.popen.returncode

    def keep_log(self) -> None:
        """Leave the log file on disk after the process stops (a failure wants it)."""
        if self._final_log is None:  # the file is still there
            self._kept = True
            if self.log_path not in _KEPT:
                _KEPT.append(self.log_path)


def keep_running_logs() -> None:
    """Keep the log of every process still running (a test failed while they ran)."""
    for proc in _RUNNING:
        proc.keep_log()


def take_kept_logs() -> list[Path]:
    """The log files kept since the last call."""
    kept = list(_KEPT)
    _KEPT.clear()
    return kept


# How long a started process may take to listen: a gateway imports its dependencies and opens its stores first,
# which on a 2-core machine busy with a whole suite (a PostgreSQL initdb beside it, a stalled host) has taken over 15 s.
START_TIMEOUT = 45.0


def start_process(args: Sequence[str], port: int, *, env: dict[str, str] | None = None, wait: bool = True) -> Proc:
    """Start ``args`` with its output in a log file; with ``wait``, return once it listens on ``port``."""
    fd, name = tempfile.mkstemp(prefix="tollgate-proc-", suffix=".log")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    try:
        with os.fdopen(fd, "wb") as out:
            popen = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    except BaseException:
        os.unlink(name)
        raise
    proc = Proc(popen=popen, port=port, log_path=Path(name))
    _RUNNING.append(proc)
    if wait:
        try:
            wait_for_port(port, proc=popen, timeout=START_TIMEOUT)
        except Exception:
            proc.stop()
            raise RuntimeError(f"{' '.join(args)} did not start:\n{proc.log()}") from None
    return proc


@contextmanager
def owned(proc: Proc, *, stop_timeout: float = 10.0) -> Iterator[Proc]:
    """``proc`` for the block, stopped after it; its log is kept when the block ends by an exception."""
    try:
        yield proc
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            proc.keep_log()
        raise
    finally:
        proc.stop(stop_timeout)


@contextmanager
def mock_upstream_process(*flags: str) -> Iterator[Proc]:
    port = free_port()
    proc = start_process([sys.executable, "-m", "tollgate", "mock-upstream", "--port", str(port), *flags], port)
    with owned(proc):
        yield proc


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
def gateway_process(
    config: dict[str, Any], *, workers: int | None = None, env: dict[str, str] | None = None, stop_timeout: float = 10.0
) -> Iterator[Proc]:
    """Write ``config`` to a file and run ``python -m tollgate serve`` on it, on free ports.

    The public listener gets a free port; so does the admin listener unless the config disables it (it is disabled
    when the config names none); ``proc.extra_ports['admin']`` is its port. With ``workers``, ``serve --workers N``:
    the block starts once every worker is ready. ``proc.config_path`` is the file (rewrite it to reload).
    """
    port = free_port()
    cfg = {**config, "listeners": {**config.get("listeners", {})}}
    cfg["listeners"]["public"] = {**cfg["listeners"].get("public", {}), "host": "127.0.0.1", "port": port}
    admin = cfg["listeners"].get("admin", {"enabled": False})
    admin_port = None
    if admin.get("enabled", True):
        admin_port = free_port()
        cfg["listeners"]["admin"] = {**admin, "host": "127.0.0.1", "port": admin_port}
    fd, name = tempfile.mkstemp(prefix="tollgate-", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(cfg, fh)
    path = Path(name)
    argv = [sys.executable, "-m", "tollgate", "serve", "--config", name]
    if workers is not None:
        argv += ["--workers", str(workers)]
    try:
        proc = start_process(argv, port, env=env)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    proc.config_path = path
    try:
        with owned(proc, stop_timeout=stop_timeout):
            if admin_port is not None:
                proc.extra_ports["admin"] = admin_port
                wait_for_port(admin_port, proc=proc.popen)  # it opens just after the public listener
            if workers is not None and workers > 1:
                wait_for_workers(proc, workers, 15)
            yield proc
    finally:
        path.unlink(missing_ok=True)
