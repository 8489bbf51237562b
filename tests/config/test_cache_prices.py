"""The prompt-cache prices of the pricing section: optional, never negative, documented in the schema."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.config import config_from_dict, file_schema
from tollgate.errors import ConfigError

BASE: dict[str, Any] = {
    "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
    "models": {
        "m": {"deployments": [{"upstream": "u"}]},
        "sonnet": {"deployments": [{"upstream": "u"}]},
        "plain": {"deployments": [{"upstream": "u"}]},
    },
}


def test_cache_prices_are_read_and_fall_back_to_the_input_price_when_absent() -> None:
    models = {
        "sonnet": {
            "input_per_1k": 0.003,
            "output_per_1k": 0.015,
            "cached_input_per_1k": 0.0003,
            "cache_write_per_1k": 0.00375,
        },
        "plain": {"input_per_1k": 0.002, "output_per_1k": 0.008},
    }
    pricing = config_from_dict({**BASE, "pricing": {"models": models}}).accounting.pricing
    sonnet, plain = pricing.models["sonnet"], pricing.models["plain"]
    assert (sonnet.cached_input_per_1k, sonnet.cache_write_per_1k) == (0.0003, 0.00375)
    assert (sonnet.cached_input, sonnet.cache_write) == (0.0003, 0.00375)
    assert plain.cached_input_per_1k is None and plain.cache_write_per_1k is None
    assert plain.cached_input == 0.002 and plain.cache_write == 0.002
    assert pricing.default.cached_input == pricing.default.input_per_1k == 0.0


@pytest.mark.parametrize(
    ("price", "problem"),
    [
        ({"cached_input_per_1k": -0.1}, "pricing.models.m.cached_input_per_1k: must be >= 0"),
        ({"cache_write_per_1k": -1}, "pricing.models.m.cache_write_per_1k: must be >= 0"),
        ({"cached_input_per_1k": "0.1"}, "pricing.models.m.cached_input_per_1k: must be a number"),
        ({"cache_read_per_1k": 0.1}, "pricing.models.m.cache_read_per_1k"),  # not a field: refused, not ignored
    ],
)
def test_a_bad_cache_price_is_refused_naming_its_field(price: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({**BASE, "pricing": {"models": {"m": {"input_per_1k": 1.0, **price}}}})
    assert any(line.startswith(problem) for line in exc.value.problems), exc.value.problems


def test_a_negative_default_cache_price_is_refused_too() -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict({**BASE, "pricing": {"default": {"cache_write_per_1k": -0.5}}})
    assert any(line.startswith("pricing.default.cache_write_per_1k: must be >= 0") for line in exc.value.problems)


def test_the_schema_documents_that_an_absent_cache_price_is_the_input_price() -> None:
    text = str(file_schema())
    assert "cached_input_per_1k" in text and "cache_write_per_1k" in text
    assert "Absent: input_per_1k (no discount)" in text and "Absent: input_per_1k (no surcharge)" in text
