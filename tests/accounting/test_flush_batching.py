"""The flusher folds a batch into groups before it touches metrics: the figures equal one update per request, in both metric modes."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tollgate.accounting import Accounting, GatewayMetrics
from tollgate.accounting import metrics as metrics_module
from tollgate.accounting import tally as tally_module
from tollgate.accounting.access_log import line_of, lines_of
from tollgate.accounting.aggregates import USER_FIELDS, Batch
from tollgate.accounting.pricing import NANOS
from tollgate.accounting.records import DISCONNECTED_STATUS, entry_from
from tollgate.config import config_from_dict
from tollgate.config.accounting import MetricsConfig
from tollgate.config.identity import Limits
from tollgate.config.model import Deployment
from tollgate.identity.directory import Principal
from tollgate.pipeline.account import capture
from tollgate.upstream.usage import Usage

from ..support.contexts import request_context
from ..support.processes import REPO

WALL = 1_790_000_000.0  # a fixed wall time, so two processes derive the same records
DOC: dict[str, Any] = {
    "upstreams": {"mock": {"base_url": "http://127.0.0.1:9/v1"}, "backup": {"base_url": "http://127.0.0.1:9/v1"}},
    "models": {
        "gpt-4o-mini": {"deployments": [{"upstream": "mock"}]},
        "gpt-4o": {"deployments": [{"upstream": "backup"}]},
    },
    "usage": {"backend": "memory", "flush_interval": "1h", "batch_size": 100_000, "max_pending": 100_000},
    "pricing": {
        "models": {
            "gpt-4o-mini": {"input_per_1k": 0.15, "output_per_1k": 0.6},
            "gpt-4o": {"input_per_1k": 2.5, "output_per_1k": 10},
        }
    },
    "metrics": {"tenant_labels": "top", "top_n": 3, "sla": {"default": "3ms", "plans": {"enterprise": "1ms"}}},
    "access_log": {"enabled": False},
}
PER_REQUEST = {
    "tollgate_requests",
    "tollgate_request_duration_seconds",
    "tollgate_upstream_duration_seconds",
    "tollgate_gateway_overhead_seconds",
    "tollgate_time_to_first_byte_seconds",
    "tollgate_tokens",
    "tollgate_cost",
    "tollgate_sla_violations",
}
# Latencies spread over every bucket of both histogram layouts, edges included (a value equal to a bound is in that bucket).
SECONDS = (0.0, 0.00005, 0.0001, 0.0004, 0.001, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.7, 2.5, 9.0, 45.0, 200.0)


def varied_requests(n: int = 600) -> list[tuple[Any, float]]:
    """``(context, end)`` pairs: six tenants on two plans, every status the flusher treats apart, estimated and reported usage,
    a third of them with one of four end users."""
    principals = [
        Principal(
            tenant=f"t{i}",
            plan="enterprise" if i % 2 else "personal",
            limits=Limits(),
            allowed_models=None,
            key_id=f"k{i}",
        )
        for i in range(6)
    ]
    out = []
    for i in range(n):
        started = 100.0 + i
        upstream_s = SECONDS[i % len(SECONDS)]
        overhead = SECONDS[(i * 7) % len(SECONDS)] / 10
        status = (200, 200, 200, 429, 401, 200, 502)[i % 7]
        model = ("gpt-4o-mini", "gpt-4o", "unpriced")[i % 3]
        reached = status in (200, 502)
        ctx = request_context(
            request_id=f"req_{i}",
            started=started,
            body=b"x" * (i % 50),
            model=model,
            model_served=model,
            upstream_name=("mock" if i % 2 else "backup") if reached else None,
            status=status,
            stream=i % 4 == 0,
            client_disconnected=i % 11 == 0,
            first_byte_at=started + upstream_s / 2 if reached and i % 5 else None,
            finished_at=started + upstream_s if reached else None,
            usage=Usage(10 + i % 13, i % 17, bool(i % 3)) if reached and i % 6 else None,
            principal=principals[(i * 5) % 7] if (i * 5) % 7 < 6 else None,
            end_user=f"user-{i % 4}" if i % 3 == 0 else None,
            attempts=1,
            deployment=Deployment(upstream="backup", model=f"{model}-2024", provider="azure") if reached else None,
        )
        out.append((ctx, started + upstream_s + overhead))
    return out


def reference_samples(
    entries: list[Any], config: MetricsConfig, currency: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What one ``observe`` / ``inc`` per request gives: the flusher before batching, through prometheus_client itself
    (a model the config does not name counts as ``other``)."""
    known = metrics_module.configured_models(config_from_dict(DOC))
    reg = CollectorRegistry()
    latency = metrics_module._LATENCY
    requests = Counter("tollgate_requests", "", ("tenant", "model", "status"), registry=reg)
    request_s = Histogram("tollgate_request_duration_seconds", "", ("tenant", "model"), registry=reg, buckets=latency)
    upstream_s = Histogram(
        "tollgate_upstream_duration_seconds", "", ("model", "upstream"), registry=reg, buckets=latency
    )
    overhead_s = Histogram(
        "tollgate_gateway_overhead_seconds", "", ("plan",), registry=reg, buckets=metrics_module._OVERHEAD
    )
    ttfb_s = Histogram("tollgate_time_to_first_byte_seconds", "", ("model",), registry=reg, buckets=latency)
    tokens = Counter("tollgate_tokens", "", ("tenant", "model", "kind", "source"), registry=reg)
    cost = Counter("tollgate_cost", "", ("tenant", "model", "currency"), registry=reg)
    sla = Counter("tollgate_sla_violations", "", ("plan",), registry=reg)
    label = GatewayMetrics(config).tenant_label
    for e in entries:
        priced = e.priced_model
        model = "unknown" if priced is None else priced if priced in known else "other"
        tenant, plan = label(e.tenant), e.plan or "none"
        requests.labels(tenant, model, str(e.status)).inc()
        request_s.labels(tenant, model).observe(e.total_s)
        if e.upstream is not None:
            upstream_s.labels(model, e.upstream).observe(e.upstream_s)
        overhead_s.labels(plan).observe(e.overhead_s)
        if e.ttfb_s is not None:
            ttfb_s.labels(model).observe(e.ttfb_s)
        source = "reported" if e.usage_reported else "estimated"
        if e.prompt_tokens:
            tokens.labels(tenant, model, "prompt", source).inc(e.prompt_tokens)
        if e.completion_tokens:
            tokens.labels(tenant, model, "completion", source).inc(e.completion_tokens)
        if e.cost_nanos:
            cost.labels(tenant, model, currency).inc(e.cost_nanos / NANOS)
        target = config.sla_target(plan)
        if target is not None and e.overhead_s > target:
            sla.labels(plan).inc()
    return samples_of(generate_latest(reg).decode())


def samples_of(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of the families the flusher counts requests in (``_created`` left out: it is a time)."""
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name not in PER_REQUEST:
            continue
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def assert_same_samples(got: dict[Any, float], want: dict[Any, float]) -> None:
    assert set(got) == set(want), (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


async def flushed(doc: dict[str, Any], requests: list[tuple[Any, float]], *, batch: int) -> Accounting:
    acc = Accounting(config_from_dict(doc), wall=lambda: WALL)
    await acc.start()
    for i, (ctx, end) in enumerate(requests):
        acc.record(capture(ctx, end, acc.wall()))
        if (i + 1) % batch == 0:
            await acc.flush()
    await acc.flush()
    return acc


@pytest.mark.parametrize("batch", [1, 7, 600])
async def test_batched_metrics_equal_one_observation_per_request(batch: int) -> None:
    requests = varied_requests()
    acc = await flushed(DOC, requests, batch=batch)
    try:
        pricing = acc.pricing()
        entries = [entry_from(capture(ctx, end, WALL), pricing) for ctx, end in requests]
        assert {e.status for e in entries} >= {200, 401, 429, 502, DISCONNECTED_STATUS}
        want = reference_samples(entries, acc.current.metrics, pricing.currency)
        assert any(
            labels == (("tenant", "other"),) or ("tenant", "other") in labels for _n, labels in want
        )  # top_n folded some away
        got = samples_of(acc.metrics.exposition().decode())
        assert_same_samples(got, want)
    finally:
        await acc.close()


async def test_batched_aggregates_and_sla_equal_one_update_per_request() -> None:
    requests = varied_requests()
    acc = await flushed(DOC, requests, batch=50)
    try:
        pricing = acc.pricing()
        entries = [entry_from(capture(ctx, end, WALL), pricing) for ctx, end in requests]
        want = Batch()
        for e in entries:
            if e.upstream is not None:
                want.add(e)
        for (tenant, month), fields in want.months.items():
            stored, days = await acc.store.read(tenant, month)
            assert stored == dict(fields)
            assert days == {day: dict(f) for (t, day), f in want.days.items() if t == tenant}
            users = {u: dict(zip(USER_FIELDS, counts)) for u, counts in want.users.get((tenant, month), {}).items()}
            assert await acc.store.users(tenant, month) == users
        assert sum(len(u) for u in want.users.values()) > 4  # end users of several tenants were summed
        report = acc.sla.report(acc.current.metrics)["plans"]
        for plan in ("enterprise", "personal", "none"):
            overheads = [e.overhead_s for e in entries if (e.plan or "none") == plan]
            target = acc.current.metrics.sla_target(plan)
            assert report[plan]["requests"] == len(overheads)
            assert report[plan]["violations"] == sum(1 for v in overheads if target is not None and v > target)
        assert acc.principals == {e.tenant: e.principal for e in entries if e.principal is not None}
    finally:
        await acc.close()


# A fresh interpreter in multiprocess mode: the varied requests flushed, then the exposition (JSON on its last line).
_MULTIPROCESS_SCRIPT = (
    "import asyncio, json\n"
    "from tests.accounting.test_flush_batching import DOC, flushed, varied_requests\n"
    "async def main():\n"
    "    acc = await flushed(DOC, varied_requests(), batch=64)\n"
    "    assert acc.metrics.multiprocess_path\n"
    "    print(json.dumps(acc.metrics.exposition().decode()))\n"
    "    await acc.close()\n"
    "asyncio.run(main())\n"
)


def multiprocess_exposition(directory: Path) -> str:
    """The exposition of the varied requests flushed by prometheus_client in multiprocess mode, its files in
    ``directory``."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", _MULTIPROCESS_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text: str = json.loads(done.stdout.strip().splitlines()[-1])
    return text


def assert_reference_figures(text: str) -> None:
    """``text`` holds the in-memory reference's figures for the varied requests."""
    acc = Accounting(config_from_dict(DOC))
    pricing = acc.pricing()
    entries = [entry_from(capture(ctx, end, WALL), pricing) for ctx, end in varied_requests()]
    assert_same_samples(samples_of(text), reference_samples(entries, acc.current.metrics, pricing.currency))


@pytest.mark.process
def test_metric_files_of_the_multiprocess_mode_hold_the_same_figures(tmp_path: Path) -> None:
    """prometheus_client in multiprocess mode (a fresh interpreter with PROMETHEUS_MULTIPROC_DIR) against the in-memory reference."""
    text = multiprocess_exposition(tmp_path)
    assert list(tmp_path.glob("histogram_*.db")), "no histogram file was written"
    assert_reference_figures(text)


@pytest.mark.process
def test_a_scrape_in_multiprocess_mode_skips_a_metric_file_a_worker_is_still_creating(tmp_path: Path) -> None:
    """prometheus_client creates a worker's file empty and sizes it just after: a scrape in between (or after a worker
    was killed in between) still answers every other worker's figures instead of failing."""
    (tmp_path / "counter_999999.db").write_bytes(b"")  # the moment between creating and sizing, or a killed worker's
    assert_reference_figures(multiprocess_exposition(tmp_path))


def test_a_histogram_child_without_the_known_internals_is_observed_one_value_at_a_time() -> None:
    seen: list[float] = []
    GatewayMetrics._observe_many(SimpleNamespace(observe=seen.append), [0.3, 0.1, 0.2])
    assert seen == [0.3, 0.1, 0.2]


def entries_built(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The request ids of the Entries the flusher builds from now on, in order."""
    built: list[Any] = []
    real_entry = tally_module.Entry

    def counting_entry(*fields: Any) -> Any:
        built.append(fields[0])
        return real_entry(*fields)

    monkeypatch.setattr(tally_module, "Entry", counting_entry)
    return built


@pytest.mark.interpreted  # counts Entry constructions through a patch of tally, which compiled tally code bypasses
async def test_entries_are_built_only_for_the_security_watch_and_lines_only_for_what_the_log_samples_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The flusher builds an Entry only for the statuses the security watch reads (401, 403); the access log renders
    its lines from the records' fields, so a logged error costs no Entry and a sampled-away request neither."""
    built = entries_built(monkeypatch)
    path = tmp_path / "access.jsonl"
    requests = varied_requests(70)
    acc = await flushed({**DOC, "access_log": {"path": str(path), "sample": 0.0, "errors": True}}, requests, batch=70)
    await acc.close()
    pricing = acc.pricing()
    entries = [entry_from(capture(ctx, end, WALL), pricing) for ctx, end in requests]
    errors = [e for e in entries if e.status >= 400 or e.client_disconnected]
    assert 0 < len(errors) < len(entries)
    watched = [e.request_id for e in entries if e.status in (401, 403)]
    assert watched and len(watched) < len(errors)  # logged errors that are not watched: no Entry for them
    assert sorted(built) == sorted(watched)
    assert path.read_bytes() == lines_of(errors, pricing.currency)
    assert [orjson.loads(line)["request_id"] for line in path.read_bytes().splitlines()] == [
        e.request_id for e in errors
    ]


@pytest.mark.interpreted  # counts Entry constructions through a patch of tally, which compiled tally code bypasses
async def test_an_access_log_taking_every_line_logs_every_request_without_an_entry_each(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``sample: 1`` takes every request without a draw per request: the file holds one line per request, in order,
    each the line of its Entry; Entries are built only for the requests the security watch reads."""
    built = entries_built(monkeypatch)
    path = tmp_path / "access.jsonl"
    requests = varied_requests(70)
    acc = await flushed({**DOC, "access_log": {"path": str(path), "sample": 1.0}}, requests, batch=30)
    assert acc.access_log.takes_every_line
    await acc.close()
    pricing = acc.pricing()
    entries = [entry_from(capture(ctx, end, WALL), pricing) for ctx, end in requests]
    assert path.read_bytes() == b"".join(line_of(e, pricing.currency) for e in entries)
    assert sorted(built) == sorted(e.request_id for e in entries if e.status in (401, 403))
    assert len(built) < len(entries)


def test_the_lines_of_a_batch_are_its_lines_one_after_the_other() -> None:
    acc = Accounting(config_from_dict(DOC))
    pricing = acc.pricing()
    entries = [
        entry_from(capture(ctx, end, WALL + i * 0.37), pricing) for i, (ctx, end) in enumerate(varied_requests(40))
    ]
    assert lines_of(entries, "EUR") == b"".join(line_of(e, "EUR") for e in entries)
    first = orjson.loads(line_of(entries[1], "EUR"))
    assert first["ts"] == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(WALL + 0.37)) + ".370Z"
    assert first["request_id"] == "req_1" and first["currency"] == "EUR"


def test_lines_with_optional_fields_and_odd_times_are_the_line_by_line_ones() -> None:
    """Prompt cache parts, reasoning, a response cache hit and a first byte before the start: the column renderer's
    optional ends and its negative-time branch give what line_of gives."""
    acc = Accounting(config_from_dict(DOC))
    pricing = acc.pricing()
    records = []
    for i, (ctx, end) in enumerate(varied_requests(60)):
        if i % 4 == 1 and ctx.usage is not None:
            ctx.usage = Usage(
                100 + i, 20, True, cached_tokens=i % 3 * 10, cache_write_tokens=i % 2 * 5, reasoning_tokens=i % 5
            )
        if i % 9 == 2 and ctx.first_byte_at is not None:
            ctx.first_byte_at = ctx.started - 0.0042
        rec = capture(ctx, end, WALL + i * 0.37)
        if i % 10 == 3:
            rec += (SimpleNamespace(prompt_tokens=30, completion_tokens=12, charge_nanos=7),)
        records.append(rec)
    entries = [entry_from(rec, pricing) for rec in records]
    assert any(e.cache_hit for e in entries) and any(e.cached_tokens for e in entries)
    assert any(e.reasoning_tokens for e in entries) and any(e.ttfb_s is not None and e.ttfb_s < 0 for e in entries)
    assert lines_of(entries, "USD") == b"".join(line_of(e, "USD") for e in entries)


def test_milliseconds_of_random_durations_are_rendered_as_the_line_by_line_renderer_does() -> None:
    rng = random.Random(22)
    acc = Accounting(config_from_dict(DOC))
    ctx, end = varied_requests(1)[0]
    base = entry_from(capture(ctx, end, WALL), acc.pricing())
    entries = []
    for _ in range(3000):
        scale = 10.0 ** rng.randint(-7, 3)
        total = rng.random() * scale
        upstream = total * rng.random()
        entries.append(
            dataclasses.replace(
                base,
                total_s=total,
                upstream_s=upstream,
                overhead_s=total - upstream,
                ttfb_s=rng.choice((None, upstream * rng.random(), -rng.random() * scale)),
            )
        )
    assert lines_of(entries, "USD") == b"".join(line_of(e, "USD") for e in entries)


def test_entry_fields_are_derived_in_declaration_order() -> None:
    ctx, end = varied_requests(23)[22]  # a 200 whose client went away, reported usage, tenant t5 (enterprise)
    pricing = Accounting(config_from_dict(DOC)).pricing()
    e = entry_from(capture(ctx, end, WALL), pricing)
    assert (e.request_id, e.wall, e.endpoint, e.namespace, e.attempts) == ("req_22", WALL, "chat", "default", 1)
    assert (e.tenant, e.key_id, e.user, e.plan, e.principal) == ("t5", "k5", None, "enterprise", ctx.principal)
    assert (e.model, e.model_served, e.priced_model, e.upstream) == ("gpt-4o", "gpt-4o", "gpt-4o", "backup")
    assert (e.provider, e.deployment_model) == ("azure", "gpt-4o-2024")
    assert (e.status, e.error, e.stream, e.client_disconnected, e.client_ip) == (
        DISCONNECTED_STATUS,
        None,
        False,
        True,
        "127.0.0.1",
    )
    assert (e.prompt_tokens, e.completion_tokens, e.usage_reported) == (19, 5, True)
    assert e.cost_nanos == pricing.cost_nanos("gpt-4o", 19, 5) > 0
    assert e.total_s == pytest.approx(end - ctx.started) and e.upstream_s == pytest.approx(
        ctx.finished_at - ctx.started
    )
    assert e.overhead_s == pytest.approx(e.total_s - e.upstream_s) and e.ttfb_s == pytest.approx(
        ctx.first_byte_at - ctx.started
    )
