"""Prompt-cache tokens in accounting: their own prices in exact nanos, the record's fields, aggregates and log lines."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from tollgate.accounting import Accounting
from tollgate.accounting.pricing import Pricing
from tollgate.accounting.records import entry_from
from tollgate.config import config_from_dict
from tollgate.config.accounting import CostRule, Price, PricingConfig
from tollgate.config.identity import Limits
from tollgate.config.model import Deployment
from tollgate.identity.directory import Principal
from tollgate.pipeline.account import capture
from tollgate.upstream.usage import Usage

from ..support.contexts import request_context

# Per 1K tokens: 3000 nanos a fresh prompt token, 300 a cache read, 3750 a cache write, 15000 a completion token.
SONNET = Price(0.003, 0.015, cached_input_per_1k=0.0003, cache_write_per_1k=0.00375)


def _pricing(**models: Price) -> Pricing:
    return Pricing(PricingConfig(models=models, default=Price(0.001, 0.002)))


def test_cache_reads_and_writes_are_charged_at_their_own_prices_in_exact_nanos() -> None:
    pricing = _pricing(sonnet=SONNET)
    # 4600 prompt tokens: 100 fresh, 4000 read from the cache, 500 written to it; 20 completion tokens
    cost = pricing.cost_nanos("sonnet", 4600, 20, cached_tokens=4000, cache_write_tokens=500)
    assert cost == 100 * 3000 + 4000 * 300 + 500 * 3750 + 20 * 15000 == 3_675_000
    assert pricing.cost_nanos("sonnet", 4600, 20, cached_tokens=4000) == 600 * 3000 + 4000 * 300 + 20 * 15000
    assert pricing.cost_nanos("sonnet", 4600, 20, cache_write_tokens=500) == 4100 * 3000 + 500 * 3750 + 20 * 15000
    # without cache parts, the cost is what it always was (the positional signature is unchanged)
    assert pricing.cost_nanos("sonnet", 4600, 20) == pricing.cost_nanos("sonnet", 4600, 20, 1) == 4600 * 3000 + 300_000
    # a million cached requests add up to exactly a million times one
    one = pricing.cost_nanos("sonnet", 7, 3, cached_tokens=5, cache_write_tokens=1)
    assert one == 1 * 3000 + 5 * 300 + 1 * 3750 + 3 * 15000
    assert sum(pricing.cost_nanos("sonnet", 7, 3, cached_tokens=5, cache_write_tokens=1) for _ in range(1000)) == (
        1000 * one
    )


def test_a_model_without_cache_prices_charges_cached_tokens_at_its_input_price() -> None:
    pricing = _pricing(plain=Price(0.003, 0.015))
    cost = pricing.cost_nanos("plain", 4600, 20, cached_tokens=4000, cache_write_tokens=500)
    assert cost == pricing.cost_nanos("plain", 4600, 20) == 4600 * 3000 + 20 * 15000
    # the default price too: an unpriced model's cached tokens cost its input price
    assert pricing.cost_nanos("unpriced", 1000, 0, cached_tokens=1000) == 1000 * 1000


def test_a_cached_price_of_zero_makes_cache_reads_free() -> None:
    pricing = _pricing(free_reads=Price(0.003, 0.015, cached_input_per_1k=0.0))
    assert pricing.cost_nanos("free_reads", 1000, 0, cached_tokens=1000) == 0
    assert pricing.cost_nanos("free_reads", 1000, 0, cached_tokens=400) == 600 * 3000


def test_cost_rules_on_prompt_tokens_count_the_whole_prompt_whatever_was_cached() -> None:
    pricing = Pricing(
        PricingConfig(
            models={"sonnet": SONNET},
            resources=(CostRule("prompt_tokens", 1.0, billing_unit=1_000_000), CostRule("requests", 0.001)),
        )
    )
    base = 100 * 3000 + 4000 * 300 + 500 * 3750
    # 4600 prompt tokens at 1/1M each (1000 nanos a token) and one request at 0.001
    assert pricing.cost_nanos("sonnet", 4600, 0, cached_tokens=4000, cache_write_tokens=500) == (
        base + 4600 * 1000 + 1_000_000
    )


def test_cache_parts_larger_than_the_prompt_never_make_a_negative_charge() -> None:
    pricing = _pricing(sonnet=SONNET)
    # a provider that reports more cached tokens than prompt tokens: the fresh part is none, not negative
    assert pricing.cost_nanos("sonnet", 100, 0, cached_tokens=300) == 300 * 300


def test_the_price_table_shows_the_cache_prices_in_force() -> None:
    table = _pricing(sonnet=SONNET, plain=Price(0.003, 0.015)).table()
    models: Any = table["models"]
    assert models["sonnet"] == {
        "input_per_1k": 0.003,
        "output_per_1k": 0.015,
        "cached_input_per_1k": 0.0003,
        "cache_write_per_1k": 0.00375,
    }
    # unset cache prices are shown as the input price they fall back to
    assert models["plain"]["cached_input_per_1k"] == 0.003 and models["plain"]["cache_write_per_1k"] == 0.003
    assert table["default"] == {
        "input_per_1k": 0.001,
        "output_per_1k": 0.002,
        "cached_input_per_1k": 0.001,
        "cache_write_per_1k": 0.001,
    }


def _ctx(usage: Usage | None, request_id: str) -> Any:
    return request_context(
        request_id=request_id,
        body=b"{}",
        model="sonnet",
        model_served="sonnet",
        upstream_name="anthropic",
        status=200,
        first_byte_at=0.01,
        finished_at=0.02,
        usage=usage,
        principal=Principal(tenant="acme", plan="p", limits=Limits(), allowed_models=None, key_id="acme-key"),
        attempts=1,
        deployment=Deployment(upstream="anthropic", model="claude-sonnet-4-5", provider="anthropic"),
    )


def test_the_accounting_entry_carries_the_cache_and_reasoning_parts_and_their_cost() -> None:
    pricing = _pricing(sonnet=SONNET)
    usage = Usage(4600, 20, True, cached_tokens=4000, cache_write_tokens=500, reasoning_tokens=12)
    e = entry_from(capture(_ctx(usage, "req_cached"), 0.03, 1_700_000_000.0), pricing)
    assert (e.prompt_tokens, e.completion_tokens) == (4600, 20)
    assert (e.cached_tokens, e.cache_write_tokens, e.reasoning_tokens) == (4000, 500, 12)
    assert e.cost_nanos == 3_675_000
    estimated = entry_from(capture(_ctx(None, "req_estimated"), 0.03, 1_700_000_000.0), pricing)
    assert (estimated.cached_tokens, estimated.cache_write_tokens, estimated.reasoning_tokens) == (0, 0, 0)


async def test_usage_aggregates_and_access_log_lines_count_cached_tokens_at_their_price(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    doc = {
        "upstreams": {"anthropic": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"sonnet": {"deployments": [{"upstream": "anthropic"}]}},
        "usage": {"backend": "file", "path": str(tmp_path / "usage.json"), "flush_interval": "1h"},
        "access_log": {"path": str(log)},
        "pricing": {
            "models": {
                "sonnet": {
                    "input_per_1k": 0.003,
                    "output_per_1k": 0.015,
                    "cached_input_per_1k": 0.0003,
                    "cache_write_per_1k": 0.00375,
                }
            }
        },
    }
    acc = Accounting(config_from_dict(doc))
    await acc.start()
    try:
        end = asyncio.get_running_loop().time()
        cached = Usage(4600, 20, True, cached_tokens=4000, cache_write_tokens=500, reasoning_tokens=12)
        acc.record(capture(_ctx(cached, "req_cached"), end, acc.wall()))
        acc.record(capture(_ctx(Usage(100, 20, True), "req_plain"), end, acc.wall()))
        assert await acc.flush() == 2
    finally:
        await acc.close()
    month, days = await acc.store.read("acme", time.strftime("%Y-%m", time.gmtime()))
    assert month["prompt_tokens"] == 4700 and month["cached_tokens"] == 4000 and month["cache_write_tokens"] == 500
    assert month["m:sonnet:cached_tokens"] == 4000 and month["m:sonnet:cache_write_tokens"] == 500
    assert month["cost_n"] == 3_675_000 + 100 * 3000 + 20 * 15000
    (day,) = days.values()
    assert day["cached_tokens"] == 4000 and day["cache_write_tokens"] == 500
    lines = {line["request_id"]: line for line in map(orjson.loads, log.read_bytes().splitlines())}
    assert lines["req_cached"]["cached_tokens"] == 4000
    assert lines["req_cached"]["cache_write_tokens"] == 500 and lines["req_cached"]["reasoning_tokens"] == 12
    assert lines["req_cached"]["cost"] == 0.003675
    assert not {"cached_tokens", "cache_write_tokens", "reasoning_tokens"} & set(lines["req_plain"])
