"""Fixtures every test folder shares (redis-server, a Redis Cluster, PostgreSQL, the mock upstream) and the ``process``
marker."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tollgate.mock.upstream import MockSettings, make_mock_app, start_mock

from .support.postgres import PostgresServer, postgres_server
from .support.processes import Proc, keep_running_logs, mock_upstream_process, take_kept_logs
from .support.redis import RedisCluster, RedisServer, redis_cluster, redis_server

# A test that starts a process of its own (redis-server, nginx, the gateway, the mock upstream, any subprocess) is
# marked `process`: by the collection hook below when it uses one of these fixtures (directly or through another
# fixture), by hand otherwise. `pytest -m "not process"` is then the quick in-process run; the audit hook below fails
# a test that starts a process without the mark, so the quick run stays quick. CI runs everything.
PROCESS_FIXTURES = frozenset(
    {"mock", "redis", "redis_url", "own_redis", "redis_standalone", "redis_cluster_nodes", "pg_server", "postgres_url"}
)

# Audit events of a process being started (multiprocessing's spawn raises none: its tests use Redis anyway).
SPAWN_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.system"})

LOG_TAIL_LINES = 40


@pytest.fixture(scope="session")
def redis_standalone() -> Iterator[RedisServer]:
    """One standalone redis-server for the session (each test flushes it); tests that break a server use ``own_redis``."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_nodes() -> Iterator[RedisCluster]:
    """A 3-master Redis Cluster on loopback for the session."""
    with redis_cluster(3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """A redis-server of the test module's own."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="module")
def redis_url(redis: RedisServer) -> str:
    """The URL of the module's ``redis``."""
    return redis.url


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, free to be paused, killed and started again."""
    with redis_server() as server:
        yield server


@pytest.fixture
async def mock_url(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> str:
    """The mock upstream in this test's event loop, on a real loopback port: its root URL (no ``/v1``)."""
    server = await aiohttp_server(make_mock_app(MockSettings()))
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def mock_server() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Start mock upstreams with the given settings on real ports; each call returns one's base URL (no ``/v1``)."""
    runners: list[web.AppRunner] = []

    async def start(**settings: Any) -> str:
        runner, port = await start_mock("127.0.0.1", 0, MockSettings(**settings))
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Where a test's gateway writes its access log."""
    return tmp_path / "access.log"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (each test gets a database of its own from ``postgres_url``).

    A test may ``stop()`` and ``start()`` it (a database going down and coming back); it must leave it started.
    """
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(pg_server: PostgresServer) -> str:
    """A fresh empty database on the session's PostgreSQL: ``postgresql://postgres@127.0.0.1:<port>/t_<random>``."""
    pg_server.start()  # a test before may have left it stopped by failing
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.process)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database, once on each engine: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tollgate.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="module")
def mock(request: pytest.FixtureRequest) -> Iterator[Proc]:
    """The mock upstream process of the test module, with the flags of the module's ``mock_upstream`` marker."""
    marker = request.node.get_closest_marker("mock_upstream")
    with mock_upstream_process(*(marker.args if marker else ())) as proc:
        yield proc


def _uses_a_process_fixture(item: pytest.Item) -> bool:
    """Whether a fixture above serves ``item``: a module's own fixture of the same name counts only if it builds on it."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in PROCESS_FIXTURES.intersection(info.names_closure):
        for fixturedef in reversed(info.name2fixturedefs.get(name, ())):
            if fixturedef.func.__module__ == __name__:
                return True
            if name not in fixturedef.argnames:
                break
    return False


# The test modules that keep a worker longest (scripts/test's spread run on 2 cores), longest first. scripts/test
# hands whole modules to its workers in collection order (--dist loadfile --no-loadscope-reorder), and these are
# collected first: started last, one of them would leave the other workers idle while it runs on alone. The rest
# follow with the most tests first (xdist's own order). Only the order changes; a module missing here still runs.
LONGEST_FIRST = (
    "tests/production/test_container_layout.py",  # builds the image's wheel with mypyc
    "tests/test_readme.py",
    "tests/production/test_worker_metrics.py",
    "tests/production/test_workers.py",
    "tests/rules/test_admission_e2e.py",
    "tests/identity/test_registry_processes.py",
    "tests/database/test_cli.py",
    "tests/rules/test_rules_admin.py",
    "tests/production/test_shutdown.py",
    "tests/deploy/test_chart_config.py",
    "tests/admin/test_config_center_process.py",
)


def _longest_first(items: list[pytest.Item]) -> None:
    """Reorders ``items`` in place: the modules of :data:`LONGEST_FIRST` in its order, then the others by their number
    of tests, most first; the tests of a module keep their order."""
    modules: dict[str, list[pytest.Item]] = {}
    for item in items:
        modules.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    order = sorted(modules, key=lambda name: (rank.get(name, len(rank)), -len(modules[name])))
    items[:] = [item for name in order for item in modules[name]]


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _uses_a_process_fixture(item):
            item.add_marker(pytest.mark.process)
    _longest_first(items)


class ProcessGuard:
    """An audit hook that refuses to start a process while a test not marked ``process`` sets up or runs."""

    def __init__(self) -> None:
        self.unmarked: str | None = None  # node id of that test

    def __call__(self, event: str, args: tuple[object, ...]) -> None:
        if self.unmarked is not None and event in SPAWN_EVENTS:
            raise RuntimeError(
                f"{self.unmarked} starts a process ({event}) but is not marked `process`: mark it "
                "(@pytest.mark.process), or take the process from a fixture of tests/conftest.py"
            )


GUARD = ProcessGuard()


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(GUARD)
    missing = [name for name in LONGEST_FIRST if not (config.rootpath / name).is_file()]
    if missing:  # a module renamed or removed: its successor would lose its place at the front unnoticed
        raise pytest.UsageError(f"tests/conftest.py LONGEST_FIRST names modules that do not exist: {missing}")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    GUARD.unmarked = None if item.get_closest_marker("process") else item.nodeid


def pytest_runtest_teardown(item: pytest.Item) -> None:
    GUARD.unmarked = None


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"({exc})"
    return "\n".join(lines[-LOG_TAIL_LINES:])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On a failure, keep the logs of the processes still running and name every kept log, with its last lines."""
    report = yield
    if report.failed:
        keep_running_logs()
    kept = take_kept_logs()
    if report.failed and kept:
        text = "\n\n".join(f"{path} (last {LOG_TAIL_LINES} lines):\n{_tail(path)}" for path in kept)
        report.sections.append(("process logs kept", text))
    return report
