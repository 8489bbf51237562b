"""Fixtures of the rules tests: a mock upstream and a redis-server, one of each per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..support.processes import Proc, mock_upstream_process
from ..support.redis import RedisServer, redis_server


@pytest.fixture(scope="module")
def mock() -> Iterator[Proc]:
    with mock_upstream_process() as proc:
        yield proc


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server
