"""Namespaces and rules managed at runtime through the admin API: validated like the config file, in force on
every gateway process within a second (file and Redis registries), kept across restarts and reloads."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml

from tollgate.config import config_from_dict
from tollgate.registry.rule_records import NAMESPACE, RULE, RuleBook, namespace_doc, record_name, rule_doc

from ..support.processes import Proc, gateway_config, gateway_process, wait_for_port
from ..support.redis import RedisServer

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

ACME_KEY = "tg_rules_admin_acme_key_0123456789abcdefgh"
GLOBEX_KEY = "tg_rules_admin_globex_key_0123456789abcdef"
TOKEN = "admin-token-for-the-rules-admin-tests"
MSG = [{"role": "user", "content": "hello"}]


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def doc(
    mock: Proc,
    *,
    registry: dict[str, Any] | None = None,
    rules: dict[str, Any] | None = None,
    namespaces: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Two tenants on a plan with no limits of its own, the admin listener on, and the given file rules."""
    config = gateway_config(
        f"{mock.url}/v1",
        listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": TOKEN}},
        identity={"chain": ["api_key"]},
        plans={"open": {"monthly_requests": 10_000_000, "concurrency": 10_000}},
        tenants={
            "acme": {"plan": "open", "keys": [{"id": "acme-1", "sha256": _sha(ACME_KEY)}]},
            "globex": {"plan": "open", "keys": [{"id": "globex-1", "sha256": _sha(GLOBEX_KEY)}]},
        },
        **extra,
    )
    if registry is not None:
        config["registry"] = registry
    if rules is not None:
        config["rules"] = rules
    if namespaces is not None:
        config["namespaces"] = namespaces
    return config


@contextmanager
def gateway(config: dict[str, Any]) -> Iterator[Proc]:
    """A gateway process whose admin listener is up too (it binds a moment after the public one)."""
    with gateway_process(config) as proc:
        wait_for_port(proc.extra_ports["admin"], proc=proc.popen)
        yield proc


def _registry(backend: str, tmp_path: Path, redis: RedisServer) -> dict[str, Any]:
    if backend == "file":
        return {"file": str(tmp_path / "registry.json")}
    return {"redis": redis.url, "prefix": f"rules-test-{time.monotonic_ns()}"}


async def admin(s: aiohttp.ClientSession, gw: Proc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{gw.extra_ports['admin']}{path}"
    async with s.request(method, url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        return r.status, await r.json()


async def chat(s: aiohttp.ClientSession, gw: Proc, key: str = ACME_KEY, **headers: str) -> tuple[int, str]:
    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 5}
    async with s.post(
        f"{gw.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}", **headers}
    ) as r:
        return r.status, (await r.read()).decode()


async def until(probe: Callable[[], Awaitable[bool]], *, within: float, since: float) -> float:
    """Poll until ``probe`` holds; the seconds it took from ``since``. Fails past ``within``."""
    while True:
        held = await probe()
        elapsed = time.perf_counter() - since
        if held:
            return elapsed
        assert elapsed < within, f"still not after {elapsed:.3f}s"
        await asyncio.sleep(0.01)


def rpm(limit: int, **attach: Any) -> dict[str, Any]:
    return {
        "type": "request_limit",
        "limit": limit,
        "per": "minute",
        "scope": ["tenant"],
        "attach": attach or {"tenants": ["acme"]},
    }


# -- documents and merging, in process -------------------------------------------------

_RICH_FILE: dict[str, Any] = {
    "upstreams": {"u": {"base_url": "http://127.0.0.1:1/v1"}},
    "models": {"m": {"deployments": [{"upstream": "u"}]}},
    "namespaces": {
        "support": {
            "priority": 5,
            "matchers": [{"type": "header", "field": "x-channel", "op": "regex", "value": "^supp"}],
        },
        "batch": {
            "matchers": [
                {"type": "body", "field": "metadata.kind", "op": "in", "value": ["batch", "bulk"]},
                {"type": "header_and_body", "field": "user", "header": "x-user", "op": "exists"},
                {"type": "body", "field": "stream", "op": "exists", "value": False},
            ]
        },
    },
    "rules": {
        "rpm": {
            "type": "request_limit",
            "limit": 10,
            "per": "second",
            "algorithm": "gcra",
            "scope": ["key", "model"],
            "attach": {"global": True},
        },
        "tpm": {
            "type": "token_limit",
            "limit": 1000,
            "on_exceed": "allow",
            "fail_mode": "local",
            "attach": {"plans": ["p"], "tenants": ["t"]},
        },
        "tpmonth": {"type": "token_limit", "limit": 10**6, "per": "month", "attach": {"namespaces": ["batch"]}},
        "conc": {"type": "connection_limit", "limit": 3, "scope": ["ip"], "shadow": True, "attach": {"global": True}},
        "quota": {
            "type": "quota",
            "limit": 500,
            "unit": "tokens",
            "priority": 7,
            "enabled": False,
            "attach": {"tenants": ["t"]},
        },
        "cap": {
            "type": "field_check",
            "field": "max_tokens",
            "op": "lte",
            "value": 100,
            "attach": {"namespaces": ["support"]},
        },
        "has": {
            "type": "field_check",
            "field": "user",
            "op": "exists",
            "message": "say who",
            "attach": {"global": True},
        },
    },
    "admission": {"default_max_tokens": 777},
}


def test_documents_of_every_rule_type_and_matcher_parse_back_to_the_same_specs() -> None:
    rules = config_from_dict(_RICH_FILE, env={}).rules
    book = RuleBook(rules, {})
    parsed, problems = book.parse()
    assert problems == []
    assert parsed == rules
    # and the documents are the config file's shape: they load as a config file of their own
    assert config_from_dict({**_RICH_FILE, **book.document()}, env={}).rules == rules
    assert rule_doc(rules.rules[0])["type"] and namespace_doc(rules.namespaces[0])["matchers"]


def test_a_record_replaces_the_declared_entry_in_place_and_new_records_follow_in_name_order() -> None:
    rules = config_from_dict(_RICH_FILE, env={}).rules
    records = {
        record_name(RULE, "zz-new"): rpm(1),
        record_name(RULE, "aa-new"): rpm(2),
        record_name(RULE, "rpm"): {**rule_doc(rules.rules[0]), "limit": 99},
        "t:acme": {"plan": "open"},  # a tenant record: not the book's business
    }
    book = RuleBook(rules, records)
    entries = book.entries(RULE)
    assert list(entries)[-2:] == ["aa-new", "zz-new"]
    assert entries["rpm"].source == "config+api" and entries["rpm"].doc["limit"] == 99
    assert entries["tpm"].source == "config" and entries["aa-new"].source == "api"
    compiled = book.compile()
    assert {r.name: r.limit for r in compiled.rules}["rpm"] == 99
    assert {"aa-new", "zz-new"} <= {r.name for r in compiled.rules}


def test_compile_leaves_out_only_the_records_that_no_longer_fit_the_file() -> None:
    rules = config_from_dict(_RICH_FILE, env={}).rules
    records = {
        record_name(RULE, "orphan"): rpm(1, namespaces=["gone"]),  # e.g. the reloaded file dropped namespace "gone"
        record_name(RULE, "fine"): rpm(2),
        record_name(NAMESPACE, "broken"): {"matchers": []},
    }
    book = RuleBook(rules, records)
    _parsed, problems = book.parse()
    assert any(p.startswith("rules.orphan.attach.namespaces:") for p in problems)
    assert any(p.startswith("namespaces.broken.matchers:") for p in problems)
    compiled = book.compile()
    names = {r.name for r in compiled.rules}
    assert "fine" in names and "orphan" not in names and "rpm" in names
    assert "broken" not in {ns.name for ns in compiled.namespaces}


# -- through real gateway processes ------------------------------------------------------


@pytest.mark.parametrize("backend", ["file", "redis"])
async def test_rule_created_on_process_a_limits_process_b_within_one_second_and_stops_within_one_second_of_its_delete(
    backend: str, mock: Proc, redis: RedisServer, tmp_path: Path
) -> None:
    config = doc(mock, registry=_registry(backend, tmp_path, redis))
    with gateway(config) as a, gateway(config) as b:
        async with aiohttp.ClientSession() as s:
            started = time.perf_counter()
            status, body = await admin(s, a, "POST", "/admin/rules", {"name": "acme-2rpm", **rpm(2)})
            assert status == 201, body
            assert body["source"] == "api" and body["limit"] == 2

            async def b_knows() -> bool:
                return (await admin(s, b, "GET", "/admin/rules/acme-2rpm"))[0] == 200

            elapsed = await until(b_knows, within=1.0, since=started)
            print(f"{backend}: rule in force on process B {elapsed * 1000:.0f} ms after the create call")
            assert [(await chat(s, b))[0] for _ in range(2)] == [200, 200]
            status, text = await chat(s, b)
            assert status == 429 and "acme-2rpm" in text
            assert (await chat(s, b, GLOBEX_KEY))[0] == 200  # attached to acme only

            started = time.perf_counter()
            status, body = await admin(s, a, "DELETE", "/admin/rules/acme-2rpm")
            assert status == 200 and body["deleted"] is True

            async def b_admits() -> bool:
                return (await chat(s, b))[0] == 200

            elapsed = await until(b_admits, within=1.0, since=started)
            print(f"{backend}: rule gone on process B {elapsed * 1000:.0f} ms after the delete call")
            assert (await admin(s, b, "GET", "/admin/rules/acme-2rpm"))[0] == 404


async def test_invalid_rule_and_invalid_regex_matcher_are_refused_with_every_field_path_and_change_nothing(
    mock: Proc, tmp_path: Path
) -> None:
    config = doc(mock, registry={"file": str(tmp_path / "registry.json")}, rules={"declared": rpm(5)})
    with gateway(config) as gw:
        async with aiohttp.ClientSession() as s:
            _, rules_before = await admin(s, gw, "GET", "/admin/rules")
            _, namespaces_before = await admin(s, gw, "GET", "/admin/namespaces")

            bad_rule = {
                "name": "bad",
                "type": "request_limit",
                "limit": 0,
                "per": "fortnight",
                "scope": ["galaxy"],
                "attach": {"namespaces": ["nowhere"]},
                "colour": "red",
            }
            status, body = await admin(s, gw, "POST", "/admin/rules", bad_rule)
            assert status == 400
            message = body["error"]["message"]
            for path in (
                "rules.bad.limit: must be >= 1",
                "rules.bad.per:",
                "rules.bad.scope: unknown scope 'galaxy'",
                "rules.bad.attach.namespaces: unknown namespace 'nowhere'",
                "rules.bad.colour: unknown key",
            ):
                assert path in message, (path, message)

            bad_ns = {
                "name": "support",
                "matchers": [{"type": "header", "field": "x-channel", "op": "regex", "value": "(unclosed"}],
            }
            status, body = await admin(s, gw, "POST", "/admin/namespaces", bad_ns)
            assert status == 400
            assert "namespaces.support.matchers[0].value: invalid regular expression" in body["error"]["message"]

            status, body = await admin(s, gw, "PUT", "/admin/rules/declared", {**rpm(5), "limit": -3})
            assert status == 400 and "rules.declared.limit: must be >= 1" in body["error"]["message"]
            status, body = await admin(s, gw, "PATCH", "/admin/rules/declared", {"fail_mode": "panic"})
            assert status == 400 and "rules.declared.fail_mode: must be one of" in body["error"]["message"]
            status, body = await admin(s, gw, "POST", "/admin/rules", {"name": "bad name!", **rpm(1)})
            assert status == 400 and "invalid name" in body["error"]["message"]

            assert await admin(s, gw, "GET", "/admin/rules") == (200, rules_before)
            assert await admin(s, gw, "GET", "/admin/namespaces") == (200, namespaces_before)
            assert [(await chat(s, gw))[0] for _ in range(6)] == [200] * 5 + [429]  # still the declared limit of 5
            assert not (tmp_path / "registry.json").exists()  # nothing was written


async def test_namespace_created_at_runtime_routes_requests_by_header_to_its_rule(mock: Proc) -> None:
    with gateway(doc(mock)) as gw:
        async with aiohttp.ClientSession() as s:
            ns = {
                "name": "support",
                "priority": 10,
                "matchers": [{"type": "header", "field": "X-Channel", "op": "equals", "value": "support"}],
            }
            status, body = await admin(s, gw, "POST", "/admin/namespaces", ns)
            assert status == 201 and body["source"] == "api", body
            rule = {
                "name": "support-1rpm",
                "type": "request_limit",
                "limit": 1,
                "scope": ["tenant", "namespace"],
                "attach": {"namespaces": ["support"]},
            }
            status, body = await admin(s, gw, "POST", "/admin/rules", rule)
            assert status == 201, body

            assert (await chat(s, gw, **{"X-Channel": "support"}))[0] == 200
            status, text = await chat(s, gw, **{"X-Channel": "support"})
            assert status == 429 and "support-1rpm" in text
            assert (await chat(s, gw, **{"X-Channel": "web"}))[0] == 200  # the default namespace has no such rule

            # the namespace cannot go while a rule attaches to it
            status, body = await admin(s, gw, "DELETE", "/admin/namespaces/support")
            assert (
                status == 400
                and "rules.support-1rpm.attach.namespaces: unknown namespace 'support'" in body["error"]["message"]
            )
            assert (await admin(s, gw, "DELETE", "/admin/rules/support-1rpm"))[0] == 200
            assert (await admin(s, gw, "DELETE", "/admin/namespaces/support"))[0] == 200
            assert (await admin(s, gw, "GET", "/admin/namespaces"))[1]["data"] == []


async def test_counter_shows_what_a_tenant_consumed_without_consuming(mock: Proc) -> None:
    with gateway(doc(mock)) as gw:
        async with aiohttp.ClientSession() as s:
            rule = {
                "name": "per-key",
                "type": "request_limit",
                "limit": 5,
                "scope": ["key"],
                "attach": {"global": True},
            }
            assert (await admin(s, gw, "POST", "/admin/rules", rule))[0] == 201
            assert [(await chat(s, gw))[0] for _ in range(3)] == [200] * 3
            for _ in range(2):  # reading twice: the read itself consumes nothing
                status, counter = await admin(s, gw, "GET", "/admin/rules/per-key/counter?tenant=acme&key=acme-1")
                assert status == 200, counter
                assert (counter["limit"], counter["used"], counter["remaining"]) == (5, 3, 2)
                assert counter["scope"] == {"key": "acme-1"} and counter["unit"] == "requests"
            status, other = await admin(s, gw, "GET", "/admin/rules/per-key/counter?tenant=globex&key=globex-1")
            assert status == 200 and other["used"] == 0
            status, body = await admin(s, gw, "GET", "/admin/rules/per-key/counter?tenant=acme")
            assert status == 400 and body["error"]["param"] == "key"
            assert (await admin(s, gw, "GET", "/admin/rules/nope/counter?tenant=acme"))[0] == 404


async def test_declared_rule_is_not_deleted_but_can_be_disabled_shadowed_and_reverted_and_every_change_is_audited(
    mock: Proc,
) -> None:
    with gateway(doc(mock, rules={"declared": rpm(1)})) as gw:
        async with aiohttp.ClientSession() as s:
            status, body = await admin(s, gw, "DELETE", "/admin/rules/declared")
            assert status == 400 and body["error"]["code"] == "declared_in_config"
            assert (
                "declared in the config file" in body["error"]["message"]
                and '{"enabled": false}' in body["error"]["message"]
            )
            status, body = await admin(s, gw, "POST", "/admin/rules", {"name": "declared", **rpm(3)})
            assert status == 409 and body["error"]["code"] == "already_exists"

            status, body = await admin(s, gw, "PATCH", "/admin/rules/declared", {"enabled": False})
            assert status == 200 and body["enabled"] is False and body["source"] == "config+api"
            assert [(await chat(s, gw))[0] for _ in range(3)] == [200] * 3

            status, body = await admin(s, gw, "PATCH", "/admin/rules/declared", {"enabled": True, "shadow": True})
            assert status == 200 and body["shadow"] is True
            assert [(await chat(s, gw))[0] for _ in range(3)] == [200] * 3  # counted, never refused

            status, body = await admin(s, gw, "DELETE", "/admin/rules/declared?revert=true")
            assert status == 200 and body["reverted"] is True and body["source"] == "config" and body["shadow"] is False
            assert (await chat(s, gw))[0] == 429  # the file's limit of 1 again, over the shadow's count

            async def audited() -> bool:  # the audit log is written by the accounting flusher, so wait for it
                _, audit = await admin(s, gw, "GET", "/admin/audit?limit=100")
                changes = [
                    (e["detail"]["method"], e["detail"]["route"], e["detail"]["status"])
                    for e in audit["events"]
                    if e["kind"] == "admin_change"
                ]
                return {("PATCH", "/admin/rules/{name}", 200), ("DELETE", "/admin/rules/{name}", 400)} <= set(changes)

            await until(audited, within=5.0, since=time.perf_counter())


async def test_restart_and_reload_keep_runtime_rules_and_namespaces(mock: Proc, tmp_path: Path) -> None:
    config = doc(mock, registry={"file": str(tmp_path / "registry.json")}, rules={"declared": rpm(50)})
    ns = {"matchers": [{"type": "header", "field": "x-channel", "op": "equals", "value": "batch"}]}
    async with aiohttp.ClientSession() as s:
        with gateway(config) as gw:
            assert (await admin(s, gw, "PUT", "/admin/namespaces/batch", ns))[0] == 201
            assert (await admin(s, gw, "POST", "/admin/rules", {"name": "batch-2rpm", **rpm(2, namespaces=["batch"])}))[
                0
            ] == 201
            assert (await admin(s, gw, "PUT", "/admin/rules/declared", rpm(40)))[0] == 200
            _, rules_before = await admin(s, gw, "GET", "/admin/rules")
            _, namespaces_before = await admin(s, gw, "GET", "/admin/namespaces")

        with gateway(config) as gw:
            assert await admin(s, gw, "GET", "/admin/rules") == (200, rules_before)
            assert await admin(s, gw, "GET", "/admin/namespaces") == (200, namespaces_before)
            sources = {r["name"]: (r["source"], r["limit"]) for r in rules_before["data"]}
            assert sources == {"declared": ("config+api", 40), "batch-2rpm": ("api", 2)}
            assert [(await chat(s, gw, **{"x-channel": "batch"}))[0] for _ in range(3)] == [200, 200, 429]

            # a SIGHUP reload with a new declaration keeps the runtime changes
            assert gw.config_path is not None
            on_disk = yaml.safe_load(gw.config_path.read_text())
            on_disk["rules"]["globex-1rpm"] = rpm(1, tenants=["globex"])
            gw.config_path.write_text(yaml.safe_dump(on_disk))
            gw.signal(signal.SIGHUP)

            async def reloaded() -> bool:
                return (await admin(s, gw, "GET", "/admin/rules/globex-1rpm"))[0] == 200

            await until(reloaded, within=5.0, since=time.perf_counter())
            _, after = await admin(s, gw, "GET", "/admin/rules")
            assert {r["name"]: r["source"] for r in after["data"]} == {
                "declared": "config+api",
                "globex-1rpm": "config",
                "batch-2rpm": "api",
            }
            assert (await chat(s, gw, **{"x-channel": "batch"}))[0] == 429  # the runtime rule still applies
            assert [(await chat(s, gw, GLOBEX_KEY))[0] for _ in range(2)] == [200, 429]  # and so does the new file rule


async def test_writes_need_the_admin_token_and_the_openapi_document_describes_the_routes(mock: Proc) -> None:
    with gateway(doc(mock)) as gw:
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{gw.extra_ports['admin']}"
            async with s.post(
                f"{url}/admin/rules", json={"name": "x", **rpm(1)}, headers={"Authorization": f"Bearer {ACME_KEY}"}
            ) as r:
                assert r.status == 401
            async with s.get(f"{url}/admin/rules/x") as r:
                assert r.status == 401
            async with s.get(f"{url}/admin/openapi.json") as r:
                paths = orjson.loads(await r.read())["paths"]
            assert {"put", "patch", "delete", "get"} <= set(paths["/admin/rules/{name}"])
            assert "get" in paths["/admin/rules/{name}/counter"] and "post" in paths["/admin/namespaces"]
            assert (await admin(s, gw, "GET", "/admin/rules/x"))[0] == 404


async def test_reload_that_drops_a_namespace_leaves_out_only_the_runtime_rule_attached_to_it(
    mock: Proc, tmp_path: Path
) -> None:
    ns = {"batch": {"matchers": [{"type": "header", "field": "x-channel", "op": "equals", "value": "batch"}]}}
    config = doc(mock, registry={"file": str(tmp_path / "registry.json")}, namespaces=ns)
    async with aiohttp.ClientSession() as s:
        with gateway(config) as gw:
            assert (await admin(s, gw, "POST", "/admin/rules", {"name": "batch-1rpm", **rpm(1, namespaces=["batch"])}))[
                0
            ] == 201
            assert (await admin(s, gw, "POST", "/admin/rules", {"name": "acme-2rpm", **rpm(2)}))[0] == 201
            assert gw.config_path is not None
            on_disk = yaml.safe_load(gw.config_path.read_text())
            del on_disk["namespaces"]
            gw.config_path.write_text(yaml.safe_dump(on_disk))
            gw.signal(signal.SIGHUP)

            async def left_out() -> bool:
                return (await admin(s, gw, "GET", "/admin/rules/batch-1rpm"))[1]["in_force"] is False

            await until(left_out, within=5.0, since=time.perf_counter())
            _, listed = await admin(s, gw, "GET", "/admin/rules")
            assert {r["name"]: r["in_force"] for r in listed["data"]} == {"acme-2rpm": True, "batch-1rpm": False}
            assert [(await chat(s, gw, **{"x-channel": "batch"}))[0] for _ in range(3)] == [
                200,
                200,
                429,
            ]  # acme-2rpm, not batch-1rpm
            assert "batch-1rpm" in gw.log() and "left out" in gw.log()
