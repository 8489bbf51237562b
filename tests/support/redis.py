"""Real redis-server processes for tests: standalone or a 3-master Cluster, on free loopback ports.

Every server runs in its own temporary directory without persistence
(``--save "" --appendonly no``), listens on 127.0.0.1 only, and is killed
when the test or session that started it ends. Faults are real signals:

    with redis_server() as r:          # RedisServer
        r.url                          # redis://127.0.0.1:<port>/0
        r.pause(); r.resume()          # SIGSTOP / SIGCONT: a hung server
        r.kill(); r.start()            # SIGKILL, then the same port again
        r.client().dbsize()            # a synchronous redis-py client

    with redis_cluster() as c:         # RedisCluster of 3 masters, no replicas
        c.url                          # a startup node for redis.asyncio.RedisCluster
        c.nodes                        # the RedisServer of each master
        c.flushall()
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from .processes import free_port

__all__ = ["REDIS_CLI", "REDIS_SERVER", "RedisCluster", "RedisServer", "redis_cluster", "redis_server"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class RedisServer:
    """One redis-server process; ``start`` / ``stop`` can be repeated on the same port and directory."""

    def __init__(self, *, port: int | None = None, cluster: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        self.cluster = cluster
        self.port = port or free_port(with_bus=cluster)
        self.dir = Path(tempfile.mkdtemp(prefix=f"tollgate-redis-{self.port}-"))
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" if not self.cluster else f"redis://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **kwargs: object) -> redis.Redis:
        """A synchronous client for assertions (close it, or use it in a ``with``)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **kwargs)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.cluster:
            args += [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(self.dir / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
        args += list(self.extra_args)
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited: {self.log()[-2000:]}")
            try:
                with self.client(socket_connect_timeout=0.2) as c:
                    if c.ping():
                        return
            except redis.RedisError:
                time.sleep(0.02)
        raise TimeoutError(f"redis-server on {self.port} not ready after {timeout}s")

    def log(self) -> str:
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a hung Redis)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, losing every key and script; :meth:`start` brings it back."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)  # a paused process must be able to die
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def flushall(self) -> None:
        with self.client() as c:
            c.flushall()
            c.script_flush()


class RedisCluster:
    """Three masters on loopback, slots split evenly, no replicas, created with ``redis-cli --cluster create``."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [RedisServer(cluster=True) for _ in range(masters)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._ready(n) for n in self.nodes):
                return
            time.sleep(0.1)
        raise TimeoutError("the cluster did not reach cluster_state:ok")

    def _ready(self, node: RedisServer) -> bool:
        with node.client() as c:
            info = c.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "cluster_state:ok" in text and f"cluster_known_nodes:{len(self.nodes)}" in text

    def node_for_slot(self, slot: int) -> RedisServer:
        """The master serving ``slot``."""
        with self.nodes[0].client() as c:
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise LookupError(slot)

    def flushall(self) -> None:
        for node in self.nodes:
            node.flushall()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@contextmanager
def redis_server(**kwargs: object) -> Iterator[RedisServer]:
    """A started standalone server, removed on exit."""
    server = RedisServer(**kwargs)  # type: ignore[arg-type]
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[RedisCluster]:
    """A started 3-master cluster, removed on exit."""
    cluster = RedisCluster(masters)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
