"""A real PostgreSQL server for tests: ``initdb`` into a temporary folder, ``postgres`` on a free loopback port.

Trust authentication for the ``postgres`` user, ``fsync=off`` (the data dies
with the test session anyway), the socket in the server's own folder. Run as
root, the server runs as the ``postgres`` OS user (PostgreSQL refuses root).

    with postgres_server() as pg:          # PostgresServer
        url = pg.create_database()         # postgresql://postgres@127.0.0.1:<port>/t_<random>
        pg.stop(); pg.start()              # down and up again, same port and data
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .processes import free_port

__all__ = ["PostgresServer", "pg_bin", "postgres_server"]


def pg_bin(name: str) -> str:
    """The path of a PostgreSQL program: under /usr/lib/postgresql/*/bin (newest first), else on PATH."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        candidate = Path(folder) / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (scripts/test installs the postgresql package)")
    return found


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; :meth:`start` / :meth:`stop` can be repeated on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"tollgate-pg-{self.port}-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_root = os.geteuid() == 0
        if self._as_root:
            os.chmod(self.dir, 0o755)
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])

    def _argv(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self._as_root else argv

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(self._argv(argv), capture_output=True, cwd=self.dir, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')[-2000:]}")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        argv = [
            pg_bin("postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                self._argv(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir
            )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        isready = pg_bin("pg_isready")
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"postgres on {self.port} exited: {self.log()[-2000:]}")
            done = subprocess.run(
                [isready, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-t", "1"], capture_output=True
            )
            if done.returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"postgres on {self.port} not ready after {timeout}s: {self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open connections are cut, as when a database server goes down."""
        if self.proc is not None and self.proc.poll() is None:
            # The postmaster itself (runuser, when in between, does not pass SIGINT on).
            os.kill(self._postmaster_pid() or self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def create_database(self) -> str:
        """A fresh empty database ``t_<random>``; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        done = subprocess.run(
            [pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
            capture_output=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(f"createdb {name} failed: {done.stderr.decode(errors='replace')}")
        return self.url(name)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A started server, removed on exit."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
