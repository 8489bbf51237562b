"""Fixtures of the production tests: nginx with config/nginx.conf in front of the test module's ``gateway``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..support.processes import Proc
from .support import nginx_in_front


@pytest.fixture(scope="module")
def nginx(gateway: Proc) -> Iterator[Proc]:
    with nginx_in_front(gateway.port) as proc:
        yield proc
