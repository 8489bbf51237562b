"""The ``server:`` section: the drain deadline operators set for SIGTERM, the public listener's head timeout and connection cap."""

from __future__ import annotations

import pytest

from tollgate.config import ConfigError, config_from_dict
from tollgate.process.supervisor import workers_problem

from ..support.processes import gateway_config


def test_shutdown_grace_defaults_to_thirty_seconds_and_reads_durations() -> None:
    assert config_from_dict(gateway_config("http://127.0.0.1:9/v1")).server.shutdown_grace == 30.0
    config = config_from_dict(gateway_config("http://127.0.0.1:9/v1", server={"shutdown_grace": "2500ms"}))
    assert config.server.shutdown_grace == 2.5


@pytest.mark.parametrize("bad", ["soon", 0, -1])
def test_bad_shutdown_grace_is_refused_with_its_field_path(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(gateway_config("http://127.0.0.1:9/v1", server={"shutdown_grace": bad}))
    assert any(line.startswith("server.shutdown_grace") for line in info.value.problems), info.value.problems


def test_head_timeout_and_connection_cap_default_to_ten_seconds_and_ten_thousand_and_are_read() -> None:
    default = config_from_dict(gateway_config("http://127.0.0.1:9/v1")).server
    assert (default.head_timeout, default.max_connections) == (10.0, 10_000)
    config = config_from_dict(
        gateway_config("http://127.0.0.1:9/v1", server={"head_timeout": "1500ms", "max_connections": 64})
    )
    assert (config.server.head_timeout, config.server.max_connections) == (1.5, 64)


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("head_timeout", "soon"),
        ("head_timeout", 0),
        ("max_connections", 0),
        ("max_connections", "many"),
        ("max_connections", 1.5),
    ],
)
def test_bad_head_timeout_or_connection_cap_is_refused_with_its_field_path(key: str, bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(gateway_config("http://127.0.0.1:9/v1", server={key: bad}))
    assert any(line.startswith(f"server.{key}") for line in info.value.problems), info.value.problems


def test_unknown_server_key_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(gateway_config("http://127.0.0.1:9/v1", server={"workers": 4}))
    assert any("server.workers" in line for line in info.value.problems), info.value.problems


def test_several_workers_on_the_embedded_store_are_refused_and_told_to_configure_redis() -> None:
    embedded = config_from_dict(gateway_config("http://127.0.0.1:9/v1"))
    redis = config_from_dict(
        gateway_config("http://127.0.0.1:9/v1", store={"backend": "redis", "url": "redis://127.0.0.1:6379/0"})
    )
    assert workers_problem(embedded, 1) is None
    assert workers_problem(redis, 4) is None
    problem = workers_problem(embedded, 2)
    assert problem is not None and "backend: redis" in problem and "2 times" in problem
