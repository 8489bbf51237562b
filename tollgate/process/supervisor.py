"""``tollgate serve --workers N``: N worker processes on one port (SO_REUSEPORT) under a supervisor.

The supervisor validates the config once (so a broken file fails fast with its
field paths), then starts each worker by re-executing ``python -m tollgate serve
--worker I`` (a fresh interpreter with its own uvloop: nothing is inherited
from a fork). It

* restarts a worker that exits on its own, after a back-off that doubles
  while the worker keeps dying young (0.2 s up to 30 s);
* on SIGHUP validates the file once: a valid file is forwarded as SIGHUP to
  every worker (each re-reads it and swaps its compiled config between two
  requests); a refused file is logged once and no worker is disturbed;
* on SIGTERM or SIGINT forwards SIGTERM, restarts nothing more, waits for the
  workers to drain (``server.shutdown_grace`` plus a margin, then SIGKILL)
  and exits 0 when every worker did.

Metrics: the supervisor gives every worker ``PROMETHEUS_MULTIPROC_DIR`` - the
operator's directory when the variable is set (its ``*.db`` files removed at
start, the directory kept), else a temporary one removed at exit - so that
worker 0's ``/metrics`` sums every worker (tollgate/accounting/metrics.py); it
calls ``prometheus_client.multiprocess.mark_process_dead`` for each worker that
exits, so a dead worker's live gauges leave the scrape while its counters stay.

Worker 0 alone binds the admin listener; its ``POST /admin/reload`` validates
the file and signals the supervisor, which reloads every worker as for SIGHUP.
Limits are shared through the configured Redis store, so more than one worker
on the embedded store is refused (each worker would count on its own and a
limit would admit N times its value).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from tollgate.config import Config, load_config
from tollgate.errors import ConfigError

__all__ = ["Supervisor", "parse_workers", "run_worker", "worker_log_format", "workers_problem", "workers_warnings"]

log = logging.getLogger("tollgate.supervisor")

FIRST_RESTART_DELAY = 0.2
MAX_RESTART_DELAY = 30.0
# A worker that ran this long before dying counts as healthy: its next restart is quick again.
HEALTHY_RUN = 10.0
# Time the supervisor allows beyond the workers' own drain deadline before it kills them.
STOP_MARGIN = 10.0
TICK = 0.25
METRICS_DIR_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")  # the library reads both


def parse_workers(text: str) -> int:
    """``--workers``: a positive count, or ``auto`` for one per usable core."""
    if text == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = int(text)
    if n < 1:
        raise ValueError("must be at least 1 (or auto)")
    return n


def workers_problem(config: Config, workers: int) -> str | None:
    """Why ``config`` cannot run with ``workers`` processes, or None."""
    if workers > 1 and config.store.backend == "embedded":
        return (
            f"--workers {workers} needs limits shared by every worker, but the limiter store is embedded "
            f"(in-process): each worker would count on its own and a limit would admit up to {workers} times its value. "
            "Configure Redis (store: {backend: redis, url: redis://HOST:6379/0}) or run --workers 1."
        )
    return None


def workers_warnings(config: Config, workers: int) -> list[str]:
    """What works with ``workers`` processes but not as an operator would expect."""
    warnings = []
    registry = getattr(config, "registry", None)
    if workers > 1 and registry is not None and registry.backend != "redis":
        warnings.append(
            f"registry.backend is {registry.backend}: tenants and keys changed through the admin API (served by worker 0) "
            "reach the other workers only through Redis; set registry: {redis: redis://HOST:6379/0}"
        )
    return warnings


@dataclass
class _Slot:
    """One worker position: its current process and its restart back-off."""

    index: int
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    delay: float = FIRST_RESTART_DELAY
    restart_at: float | None = None
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Starts, watches and signals the workers; see the module docstring for the lifecycle."""

    def __init__(
        self,
        config_path: str | Path,
        config: Config,
        workers: int,
        *,
        log_level: str = "info",
        python: str = sys.executable,
    ) -> None:
        self.config_path = Path(config_path)
        self.config = config
        self.workers = workers
        self.log_level = log_level
        self.python = python
        # Read at start (with the command line's --host/--port applied), like the workers' own drain deadline.
        self.host = config.listeners.public.host
        self.grace = config.server.shutdown_grace
        self.slots = [_Slot(i) for i in range(workers)]
        self._good_text = self.config_path.read_bytes()
        self._pending: list[int] = []
        self._stopping_until: float | None = None
        self._snapshot_dir: tempfile.TemporaryDirectory[str] | None = None
        self.metrics_dir: Path | None = None  # the workers' PROMETHEUS_MULTIPROC_DIR while running
        self._own_metrics_dir = False

    # ---------------------------------------------------------------- lifecycle

    def run(self) -> int:
        pub = self.config.listeners.public
        try:
            reservation = _reserve_port(pub.host, pub.port)
        except OSError as exc:
            log.error("cannot bind %s:%d: %s", pub.host, pub.port, exc.strerror or exc)
            return 1
        port = reservation.getsockname()[1]
        try:
            self._open_metrics_dir()
        except OSError as exc:
            log.error("cannot prepare the workers' metrics directory: %s", exc)
            reservation.close()
            return 1
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        old_handlers = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        self._snapshot_dir = tempfile.TemporaryDirectory(prefix="tollgate-supervisor-")
        try:
            log.info(
                "supervisor %d: %d workers on %s:%d, metrics in %s",
                os.getpid(),
                self.workers,
                pub.host,
                port,
                self.metrics_dir,
            )
            for warning in workers_warnings(self.config, self.workers):
                log.warning("%s", warning)
            for slot in self.slots:
                self._start(slot, port)
            while True:
                select.select([wake_r], [], [], TICK)
                _drain(wake_r)
                for sig in self._take_signals():
                    self._handle(sig)
                self._reap()
                if self._stopping_until is not None:
                    if all(s.popen is None for s in self.slots):
                        failed = [c for s in self.slots for c in s.exit_codes[-1:] if c != 0]
                        log.info(
                            "supervisor: every worker stopped%s", f" ({len(failed)} with errors)" if failed else ""
                        )
                        return 1 if failed else 0
                    if time.monotonic() > self._stopping_until:
                        self._kill_stragglers()
                    continue
                now = time.monotonic()
                for slot in self.slots:
                    if slot.popen is None and slot.restart_at is not None and now >= slot.restart_at:
                        self._start(slot, port)
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_wakeup)
            os.close(wake_r)
            os.close(wake_w)
            reservation.close()
            for slot in self.slots:
                if slot.popen is not None and slot.popen.poll() is None:
                    slot.popen.kill()
                    slot.popen.wait()
            self._snapshot_dir.cleanup()
            self._close_metrics_dir()

    def _open_metrics_dir(self) -> None:
        """The workers' multiprocess metrics directory, empty: the operator's, or a temporary one of our own."""
        given = next((os.environ[v] for v in METRICS_DIR_VARIABLES if os.environ.get(v)), None)
        if given is None:
            self.metrics_dir = Path(tempfile.mkdtemp(prefix="tollgate-metrics-"))
            self._own_metrics_dir = True
            return
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):  # a previous run's values would be summed with ours
            stale.unlink(missing_ok=True)
        self.metrics_dir = path

    def _close_metrics_dir(self) -> None:
        if self.metrics_dir is not None and self._own_metrics_dir:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir = None

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)

    def _take_signals(self) -> list[int]:
        taken, self._pending[:] = list(self._pending), []
        return taken

    def _handle(self, sig: int) -> None:
        if sig == signal.SIGHUP and self._stopping_until is None:
            self.reload()
        elif sig in (signal.SIGTERM, signal.SIGINT) and self._stopping_until is None:
            self._stopping_until = time.monotonic() + self.grace + STOP_MARGIN
            live = self._signal_workers(signal.SIGTERM)
            log.info("supervisor: stopping; %d workers draining (up to %.0fs)", live, self.grace)

    # ---------------------------------------------------------------- reload

    def reload(self) -> bool:
        """Validate the file once; forward SIGHUP to every worker only if it is valid."""
        try:
            text = self.config_path.read_bytes()
            config = load_config(self.config_path)
        except (ConfigError, OSError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
            log.error("reload refused, every worker keeps its config:\n  %s", "\n  ".join(problems))
            return False
        problem = workers_problem(config, self.workers)
        if problem is not None:
            log.error("reload refused, every worker keeps its config: %s", problem)
            return False
        if config.listeners != self.config.listeners or config.server != self.config.server:
            log.warning("listener and server changes in %s take effect only after a restart", self.config_path)
        self.config, self._good_text = config, text
        live = self._signal_workers(signal.SIGHUP)
        log.info("reload: %s is valid, forwarded to %d workers", self.config_path, live)
        return True

    # ---------------------------------------------------------------- workers

    def _argv(self, slot: _Slot, port: int) -> list[str]:
        argv = [
            self.python,
            "-m",
            "tollgate",
            "--log-level",
            self.log_level,
            "serve",
            "--config",
            str(self.config_path),
            "--host",
            self.host,
            "--port",
            str(port),
            "--worker",
            str(slot.index),
        ]
        try:
            load_config(self.config_path)
        except ConfigError:
            # The file broke after the last reload: the worker starts from the last valid version
            # and keeps reloading from the file itself.
            snapshot = (
                Path(self._snapshot_dir.name if self._snapshot_dir else tempfile.gettempdir()) / "last-valid.yaml"
            )
            snapshot.write_bytes(self._good_text)
            argv += ["--start-from", str(snapshot)]
            log.warning(
                "%s is not valid now: worker %d starts from the last valid version", self.config_path, slot.index
            )
        return argv

    def _start(self, slot: _Slot, port: int) -> None:
        env = None
        if self.metrics_dir is not None:
            env = {**os.environ, METRICS_DIR_VARIABLES[0]: str(self.metrics_dir)}
            env.pop(METRICS_DIR_VARIABLES[1], None)
        slot.popen = subprocess.Popen(self._argv(slot, port), env=env)
        slot.started_at = time.monotonic()
        slot.restart_at = None
        log.info("worker %d started (pid %d)", slot.index, slot.popen.pid)

    def _reap(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.popen is None or slot.popen.poll() is None:
                continue
            code = slot.popen.returncode
            slot.exit_codes.append(code)
            pid, slot.popen = slot.popen.pid, None
            if self.metrics_dir is not None:  # its live gauges leave the scrape; its counters stay in the sums
                mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]  # untyped upstream
            if self._stopping_until is not None:
                log.info("worker %d (pid %d) exited with %s", slot.index, pid, _describe(code))
                continue
            slot.delay = (
                FIRST_RESTART_DELAY if now - slot.started_at >= HEALTHY_RUN else min(slot.delay * 2, MAX_RESTART_DELAY)
            )
            slot.restart_at = now + slot.delay
            log.error(
                "worker %d (pid %d) exited with %s: restarting in %.1fs", slot.index, pid, _describe(code), slot.delay
            )

    def _signal_workers(self, sig: int) -> int:
        live = 0
        for slot in self.slots:
            if slot.popen is not None and slot.popen.poll() is None:
                slot.popen.send_signal(sig)
                live += 1
        return live

    def _kill_stragglers(self) -> None:
        for slot in self.slots:
            if slot.popen is not None and slot.popen.poll() is None:
                log.error("worker %d (pid %d) did not stop in time: killing it", slot.index, slot.popen.pid)
                slot.popen.kill()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _drain(fd: int) -> None:
    """Empty the self-pipe (non-blocking): every byte is a wake-up already noted."""
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 512):
            continue


def _reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) a SO_REUSEPORT socket: fails fast if another program holds the port,
    picks the port when it is 0, and keeps it ours while every worker restarts."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------- the worker side


def run_worker(
    config_path: str | Path, index: int, *, start_from: str | Path | None = None, host: str | None, port: int | None
) -> int:
    """One worker: the public listener with SO_REUSEPORT, the admin listener on worker 0 only."""
    from tollgate.process.server import install_event_loop_policy, run_gateway, with_listen_address
    from tollgate.runtime.state import GatewayState

    supervisor_pid = os.getppid()
    try:
        config = load_config(start_from or config_path)
    except ConfigError as exc:
        log.error("worker %d: config refused:\n  %s", index, "\n  ".join(exc.problems))
        return 2
    state = GatewayState(with_listen_address(config, host, port), config_path=config_path)
    del config  # the state holds the version in force; a reference here would keep the first one after a reload

    async def reload_everywhere(state: GatewayState) -> tuple[int, dict[str, object]]:
        from tollgate.process.server import refused_body

        try:
            await asyncio.to_thread(load_config, config_path)
        except ConfigError as exc:
            return 422, refused_body(exc.problems)
        os.kill(supervisor_pid, signal.SIGHUP)
        return 202, {"status": "reloading", "detail": "the supervisor forwards the reload to every worker"}

    def started(public_port: int, admin_port: int | None) -> None:
        log.info("worker %d ready (pid %d)%s", index, os.getpid(), " with the admin listener" if admin_port else "")

    install_event_loop_policy()
    asyncio.run(
        run_gateway(
            state,
            reuse_port=True,
            admin=index == 0,
            reload=reload_everywhere,
            supervisor_pid=supervisor_pid,
            on_started=started,
        )
    )
    return 0


def worker_log_format(index: int) -> str:
    return f"%(asctime)s %(levelname)s worker-{index}[%(process)d] %(name)s: %(message)s"
