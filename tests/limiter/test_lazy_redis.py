"""A gateway that counts in-process never loads redis-py (about 11 MiB and a quarter second of every start)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import sys
    from tollgate.config import config_from_dict
    from tollgate.limiter.factory import build_limiter
    from tollgate.process import cli, server  # everything a `serve` imports
    from tollgate.scaling.build import redis_client

    doc = {"upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}}, "models": {"m": {"deployments": [{"upstream": "u"}]}}}
    config = config_from_dict(doc)
    limiter = build_limiter(config.store)
    assert redis_client(config.store) is None
    print(sorted(m for m in sys.modules if m == "redis" or m.startswith("redis.")))
    config = config_from_dict({**doc, "store": {"backend": "redis", "url": "redis://127.0.0.1:9/0"}})
    build_limiter(config.store)
    print("redis" in sys.modules)
    """
)


@pytest.mark.process
def test_an_embedded_store_loads_no_redis_module_and_a_redis_store_loads_it_when_built() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    embedded, redis_store = out.stdout.split("\n")[:2]
    assert embedded == "[]", embedded
    assert redis_store == "True"
