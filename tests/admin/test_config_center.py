"""The config-center API under /api/v1: every endpoint with the design's bodies, the same objects as the native admin
API and the config file, errors naming the field, integer ids that are never reused, and counters."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from tollgate.admin import Probes, make_admin_app
from tollgate.config import load_config
from tollgate.policy.matchers import NamespaceTable
from tollgate.process.public import healthz, public_lifecycle, readyz
from tollgate.process.server import reload_here
from tollgate.runtime.state import GatewayState

from ..identity.conftest import ADMIN_TOKEN, identity_doc

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

FILE_RULES = {
    "namespaces": {
        "batch": {
            "priority": 5,
            "matchers": [{"type": "header", "field": "x-channel", "op": "equals", "value": "batch"}],
        }
    },
    "rules": {
        "batch-rpm": {"type": "request_limit", "limit": 50, "per": "minute", "attach": {"namespaces": ["batch"]}},
        "acme-rpm": {"type": "request_limit", "limit": 9, "attach": {"tenants": ["acme"]}},
    },
}


@pytest.fixture
async def center(tmp_path: Path, aiohttp_client: MakeClient) -> AsyncIterator[tuple[Client, GatewayState]]:
    """The admin application of an in-process gateway whose config file declares a namespace and two rules."""
    doc = identity_doc(
        listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": ADMIN_TOKEN}},
        registry={"file": str(tmp_path / "registry.json")},
        **FILE_RULES,
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    state = GatewayState(load_config(path), config_path=str(path))
    async with public_lifecycle(state):
        app = make_admin_app(state, probes=Probes(healthz, readyz), reload=reload_here)
        yield await aiohttp_client(app), state


async def call(client: Client, method: str, url: str, body: Any = None, status: int = 200) -> Any:
    async with client.request(method, url, json=body, headers=AUTH) as r:
        answer = await r.json()
        assert r.status == status, (method, url, answer)
        return answer


WECHAT = {"namespace_code": "wechat", "namespace_name": "WeChat", "description": "the wechat channel", "status": 1}
CHANNEL = {
    "matcher_name": "channel code",
    "matcher_type": "header",
    "match_field": "channelcode",
    "match_operator": "equals",
    "match_value": "wechat",
    "priority": 10,
    "status": 1,
}
RULES = {
    "connection_limit": {"max_connections": 2, "window_size": 60},
    "request_limit": {"max_requests_per_minute": 3, "max_requests_per_hour": 100},
    "token_limit": {"max_tokens_per_hour": 10000, "max_tokens_per_day": 100000, "window_size": 3600},
    "field_check": {"field_path": "body.max_tokens", "operator": "lte", "value": 1000, "message": "max_tokens too big"},
}


async def test_namespaces_matchers_and_rules_round_trip_in_the_designs_shapes_and_are_native_objects(
    center: tuple[Client, GatewayState],
) -> None:
    client, state = center
    ns = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    assert isinstance(ns["id"], int) and {k: ns[k] for k in WECHAT} == WECHAT
    assert await call(client, "GET", f"/api/v1/namespaces/{ns['id']}") == ns
    matcher = await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/matchers", CHANNEL, 201)
    assert {k: matcher[k] for k in CHANNEL} == CHANNEL and matcher["namespace_id"] == ns["id"]
    created = {}
    for rule_type, config in RULES.items():
        body = {
            "rule_name": f"wechat {rule_type}",
            "rule_type": rule_type,
            "rule_config": config,
            "priority": 1,
            "status": 1,
        }
        rule = await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/rules", body, 201)
        assert {k: rule[k] for k in body} == body, "GET returns the shape that was POSTed"
        created[rule_type] = rule
    listed = await call(client, "GET", f"/api/v1/namespaces/{ns['id']}/rules")
    assert [r["id"] for r in listed["data"]] == [r["id"] for r in created.values()]
    assert (await call(client, "GET", f"/api/v1/namespaces/{ns['id']}/matchers"))["data"] == [matcher]

    # The native admin API shows the same objects, and the running rules enforce them.
    native_ns = await call(client, "GET", "/admin/namespaces/wechat")
    assert native_ns["match"] == "any" and native_ns["priority"] == 10 and native_ns["in_force"]
    assert native_ns["matchers"] == [{"type": "header", "field": "channelcode", "op": "equals", "value": "wechat"}]
    rid = created["request_limit"]["id"]
    assert created["request_limit"]["native_rules"] == [f"cc.{rid}.hour", f"cc.{rid}.minute"]
    minute = await call(client, "GET", f"/admin/rules/cc.{rid}.minute")
    assert (minute["type"], minute["limit"], minute["per"], minute["scope"]) == (
        "request_limit",
        3,
        "minute",
        ["namespace"],
    )
    assert minute["attach"] == {"namespaces": ["wechat"]}
    tid = created["token_limit"]["id"]
    day = await call(client, "GET", f"/admin/rules/cc.{tid}.day")
    assert (day["type"], day["limit"], day["per"], day["count"]) == ("token_limit", 100000, "day", "input")
    fid = created["field_check"]["id"]
    check = await call(client, "GET", f"/admin/rules/cc.{fid}")
    assert (check["field"], check["op"], check["value"], check["message"]) == (
        "max_tokens",
        "lte",
        1000,
        "max_tokens too big",
    )
    cid = created["connection_limit"]["id"]
    assert (await call(client, "GET", f"/admin/rules/cc.{cid}"))["limit"] == 2
    in_force = {r.name for r in state.runtime.rules_config.rules}
    assert {f"cc.{rid}.minute", f"cc.{rid}.hour", f"cc.{tid}.hour", f"cc.{fid}", f"cc.{cid}"} <= in_force


async def test_put_changes_what_it_names_and_a_rule_config_may_arrive_as_a_json_string(
    center: tuple[Client, GatewayState],
) -> None:
    client, _state = center
    ns = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    body = {"rule_type": "request_limit", "rule_config": json.dumps({"max_requests_per_minute": 5})}
    rule = await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/rules", body, 201)
    assert rule["rule_config"] == {"max_requests_per_minute": 5} and rule["native_rules"] == [f"cc.{rule['id']}.minute"]
    changed = await call(client, "PUT", f"/api/v1/rules/{rule['id']}", {"rule_config": {"max_requests_per_hour": 7}})
    assert changed["rule_config"] == {"max_requests_per_hour": 7} and changed["native_rules"] == [
        f"cc.{rule['id']}.hour"
    ]
    await call(client, "GET", f"/admin/rules/cc.{rule['id']}.minute", status=404)  # the stale window is gone
    disabled = await call(client, "PUT", f"/api/v1/rules/{rule['id']}", {**changed, "status": 0})  # PUT back a GET
    assert (
        disabled["status"] == 0
        and (await call(client, "GET", f"/admin/rules/cc.{rule['id']}.hour"))["enabled"] is False
    )
    renamed = await call(
        client, "PUT", f"/api/v1/namespaces/{ns['id']}", {"namespace_name": "WeChat mini", "status": 0}
    )
    assert (renamed["namespace_name"], renamed["status"], renamed["namespace_code"]) == ("WeChat mini", 0, "wechat")
    assert (await call(client, "GET", "/admin/namespaces/wechat"))["enabled"] is False


async def test_objects_of_the_config_file_are_listed_with_ids_and_are_read_only_here(
    center: tuple[Client, GatewayState],
) -> None:
    client, _state = center
    listed = (await call(client, "GET", "/api/v1/namespaces"))["data"]
    batch = next(n for n in listed if n["namespace_code"] == "batch")
    assert batch["source"] == "config" and batch["status"] == 1 and isinstance(batch["id"], int)
    assert (await call(client, "GET", "/api/v1/namespaces"))["data"] == listed, "ids are stable"
    rules = (await call(client, "GET", f"/api/v1/namespaces/{batch['id']}/rules"))["data"]
    assert [(r["rule_name"], r["rule_type"], r["rule_config"]) for r in rules] == [
        ("batch-rpm", "request_limit", {"max_requests_per_minute": 50})
    ]
    matchers = (await call(client, "GET", f"/api/v1/namespaces/{batch['id']}/matchers"))["data"]
    assert [(m["matcher_type"], m["match_field"], m["match_value"]) for m in matchers] == [
        ("header", "x-channel", "batch")
    ]
    refused = await call(client, "PUT", f"/api/v1/namespaces/{batch['id']}", {"status": 0}, 400)
    assert refused["error"]["code"] == "declared_elsewhere" and "config file" in refused["error"]["message"]
    await call(client, "PUT", f"/api/v1/rules/{rules[0]['id']}", {"status": 0}, 400)
    # A namespace created through the native API is listed too.
    native = {"name": "mobile", "matchers": [{"type": "body", "field": "metadata.app", "op": "equals", "value": "ios"}]}
    await call(client, "POST", "/admin/namespaces", native, 201)
    codes = [n["namespace_code"] for n in (await call(client, "GET", "/api/v1/namespaces"))["data"]]
    assert "mobile" in codes


async def test_ids_are_never_reused_after_a_delete_and_a_deleted_namespace_takes_its_matchers_and_rules(
    center: tuple[Client, GatewayState],
) -> None:
    client, _state = center
    first = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    await call(client, "POST", f"/api/v1/namespaces/{first['id']}/matchers", CHANNEL, 201)
    rule = await call(
        client,
        "POST",
        f"/api/v1/namespaces/{first['id']}/rules",
        {"rule_type": "connection_limit", "rule_config": {"max_connections": 1}},
        201,
    )
    gone = await call(client, "DELETE", f"/api/v1/namespaces/{first['id']}")
    assert gone["deleted"] and gone["rules"] == [rule["id"]] and len(gone["matchers"]) == 1
    await call(client, "GET", f"/api/v1/namespaces/{first['id']}", status=404)
    await call(client, "GET", f"/api/v1/rules/{rule['id']}", status=404)
    await call(client, "GET", "/admin/namespaces/wechat", status=404)
    await call(client, "GET", f"/admin/rules/cc.{rule['id']}", status=404)
    again = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    assert again["id"] > first["id"]
    m = await call(client, "POST", f"/api/v1/namespaces/{again['id']}/matchers", CHANNEL, 201)
    assert m["id"] > gone["matchers"][0]
    await call(client, "DELETE", f"/api/v1/matchers/{m['id']}")
    await call(client, "GET", f"/api/v1/matchers/{m['id']}", status=404)
    assert (await call(client, "GET", "/admin/namespaces/wechat"))["matchers"] == []


@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/api/v1/namespaces", {"namespace_name": "no code"}, "namespace_code"),
        ("/api/v1/namespaces", {"namespace_code": "has space"}, "namespace_code"),
        ("/api/v1/namespaces", {"namespace_code": "x", "status": 2}, "status"),
        ("/api/v1/namespaces", {"namespace_code": "x", "colour": "red"}, "colour"),
        ("{ns}/matchers", {**CHANNEL, "matcher_type": "cookie"}, "matcher_type"),
        ("{ns}/matchers", {**CHANNEL, "match_operator": "like"}, "match_operator"),
        ("{ns}/matchers", {**CHANNEL, "match_operator": "regex", "match_value": "("}, "match_value"),
        ("{ns}/matchers", {k: v for k, v in CHANNEL.items() if k != "match_field"}, "match_field"),
        ("{ns}/rules", {"rule_type": "quota", "rule_config": {}}, "rule_type"),
        ("{ns}/rules", {"rule_type": "request_limit", "rule_config": {}}, "rule_config"),
        (
            "{ns}/rules",
            {"rule_type": "request_limit", "rule_config": {"max_requests_per_minute": 0}},
            "rule_config.max_requests_per_minute",
        ),
        (
            "{ns}/rules",
            {"rule_type": "connection_limit", "rule_config": {"max_conn": 3}},
            "rule_config.max_connections",
        ),
        ("{ns}/rules", {"rule_type": "token_limit", "rule_config": "{not json"}, "rule_config"),
        (
            "{ns}/rules",
            {"rule_type": "field_check", "rule_config": {**RULES["field_check"], "operator": "gt", "value": "x"}},
            "rule_config.value",
        ),
        (
            "{ns}/rules",
            {"rule_type": "field_check", "rule_config": {**RULES["field_check"], "operator": "between"}},
            "rule_config.operator",
        ),
        ("{ns}/rules", {"rule_config": {"max_connections": 1}}, "rule_type"),
    ],
)
async def test_a_bad_shape_answers_400_naming_the_field(
    center: tuple[Client, GatewayState], url: str, body: dict[str, Any], field: str
) -> None:
    client, _state = center
    ns = await call(client, "POST", "/api/v1/namespaces", {"namespace_code": "shapes"}, 201)
    refused = await call(client, "POST", url.replace("{ns}", f"/api/v1/namespaces/{ns['id']}"), body, 400)
    assert refused["error"]["param"] == field, refused
    assert field in refused["error"]["message"]


async def test_unknown_ids_answer_404_and_an_existing_code_409(center: tuple[Client, GatewayState]) -> None:
    client, _state = center
    for url in ("/api/v1/namespaces/999", "/api/v1/matchers/999", "/api/v1/rules/999", "/api/v1/namespaces/999/rules"):
        await call(client, "GET", url, status=404)
    await call(client, "PUT", "/api/v1/rules/999", {"status": 0}, 404)
    await call(client, "DELETE", "/api/v1/matchers/999", status=404)
    await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    conflict = await call(client, "POST", "/api/v1/namespaces", WECHAT, 409)
    assert "wechat" in conflict["error"]["message"]
    await call(client, "POST", "/api/v1/namespaces", {"namespace_code": "batch"}, 409)  # the config file's


async def test_counters_are_read_incremented_and_reset_per_namespace_and_the_writes_are_audited(
    center: tuple[Client, GatewayState],
) -> None:
    client, state = center
    ns = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    body = {"rule_type": "request_limit", "rule_config": {"max_requests_per_minute": 3, "max_requests_per_hour": 100}}
    rule = await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/rules", body, 201)
    counter = await call(client, "GET", f"/api/v1/counters/{rule['id']}")
    assert counter["scope"] == {"namespace": "wechat"} and counter["counter_key"] == str(rule["id"])
    assert {c["window"]: (c["limit"], c["used"]) for c in counter["counters"]} == {"minute": (3, 0), "hour": (100, 0)}
    after = await call(client, "POST", f"/api/v1/counters/{rule['id']}:wechat/increment", {"amount": 2})
    assert {c["window"]: (c["used"], c["remaining"]) for c in after["counters"]} == {"minute": (2, 1), "hour": (2, 98)}
    after = await call(client, "POST", f"/api/v1/counters/{rule['id']}/increment")  # empty body: one
    assert [c["used"] for c in after["counters"]] == [3, 3]
    other = await call(client, "GET", f"/api/v1/counters/{rule['id']}:alipay")
    assert [c["used"] for c in other["counters"]] == [0, 0], "each scope value counts apart"
    reset = await call(client, "POST", f"/api/v1/counters/{rule['id']}/reset")
    assert [c["used"] for c in reset["counters"]] == [0, 0]
    await call(client, "GET", "/api/v1/counters/abc", status=400)
    await call(client, "GET", "/api/v1/counters/999", status=404)
    check = await call(
        client,
        "POST",
        f"/api/v1/namespaces/{ns['id']}/rules",
        {"rule_type": "field_check", "rule_config": RULES["field_check"]},
        201,
    )
    assert (await call(client, "GET", f"/api/v1/counters/{check['id']}", status=400))["error"]["code"] == "no_counter"
    await state.accounting.audit.flush()
    events = (await call(client, "GET", "/admin/audit?since=2000-01-01T00:00:00Z"))["events"]
    routes = [e.get("detail", {}).get("route") or json.dumps(e) for e in events]
    assert sum("/increment" in r for r in routes) == 2 and sum("/reset" in r for r in routes) == 1, routes


async def test_health_stats_and_sync_answer_under_api_v1(center: tuple[Client, GatewayState]) -> None:
    client, _state = center
    health = await call(client, "GET", "/api/v1/health")
    assert health == {
        "status": "healthy",
        "storage": {"redis": "embedded", "database": "not_configured", "registry": "healthy"},
    }
    assert await call(client, "GET", "/api/v1/stats") == await call(client, "GET", "/admin/stats")
    assert (await call(client, "POST", "/api/v1/sync", status=409))["error"]["code"] == "no_database"
    async with client.get("/api/v1/namespaces") as r:
        assert r.status == 401, "the same credentials as the admin API"


def test_a_namespace_matching_any_matcher_claims_a_request_one_of_them_holds_for_and_a_disabled_one_nothing() -> None:
    from tollgate.config.rules import MatcherSpec, NamespaceSpec

    header = MatcherSpec(type="header", field="channelcode", op="equals", value="wechat")
    body = MatcherSpec(type="body", field="channelcode", op="equals", value="wechat")
    either = NamespaceSpec("wechat", 1, (header, body), match="any")
    table = NamespaceTable((either,))
    assert table.match({"channelcode": "wechat"}, None) == "wechat"
    assert table.match({}, {"channelcode": "wechat"}) == "wechat"
    assert table.match({"channelcode": "alipay"}, {"channelcode": "x"}) == "default"
    assert NamespaceTable((NamespaceSpec("empty", 1, (), match="any"),)).match({}, {}) == "default"
    disabled = NamespaceSpec("wechat", 1, (header,), enabled=False)
    assert NamespaceTable((disabled,)).match({"channelcode": "wechat"}, None) == "default"


async def test_a_native_namespace_left_behind_by_a_concurrent_write_is_repaired_from_the_records(
    center: tuple[Client, GatewayState],
) -> None:
    from tollgate.admin.config_center_view import reconcile

    client, state = center
    ns = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/matchers", CHANNEL, 201)
    # What another process's write, derived before it saw this matcher, leaves: the namespace without it.
    await state.registry.write({"ns:wechat": {"priority": 0, "match": "any", "matchers": []}})
    assert (await call(client, "GET", "/admin/namespaces/wechat"))["matchers"] == []
    await reconcile(state, ns["id"])
    assert (await call(client, "GET", "/admin/namespaces/wechat"))["matchers"] == [
        {"type": "header", "field": "channelcode", "op": "equals", "value": "wechat"}
    ]


async def test_a_rule_never_takes_over_a_native_rule_of_the_name_it_would_have(
    center: tuple[Client, GatewayState],
) -> None:
    client, _state = center
    ns = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    squatter = {"name": "cc.1", "type": "connection_limit", "limit": 9, "attach": {"global": True}}
    await call(client, "POST", "/admin/rules", squatter, 201)
    body = {"rule_type": "connection_limit", "rule_config": {"max_connections": 1}}
    rule = await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/rules", body, 201)
    assert rule["id"] == 2 and rule["native_rules"] == ["cc.2"], "the id whose native name is taken is passed over"
    assert (await call(client, "GET", "/admin/rules/cc.1"))["limit"] == 9


async def test_the_running_gateway_matches_as_the_designs_matchers_say(center: tuple[Client, GatewayState]) -> None:
    client, state = center
    wechat = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    vip = await call(client, "POST", "/api/v1/namespaces", {"namespace_code": "vip"}, 201)
    either = {**CHANNEL, "matcher_type": "header_and_body", "priority": 1}
    await call(client, "POST", f"/api/v1/namespaces/{wechat['id']}/matchers", either, 201)
    body_in = {
        "matcher_type": "body",
        "match_field": "body.metadata.tier",
        "match_operator": "in",
        "match_value": "gold, platinum",
        "priority": 50,
    }
    await call(client, "POST", f"/api/v1/namespaces/{vip['id']}/matchers", body_in, 201)
    table = state.runtime.namespaces
    assert table.match({"channelcode": "wechat"}, None) == "wechat", "header_and_body: the header"
    assert table.match({}, {"channelcode": "wechat"}) == "wechat", "header_and_body: or the body field"
    assert table.match({}, {"metadata": {"tier": "platinum"}}) == "vip", "in takes a comma-separated string"
    both = {"channelcode": "wechat", "metadata": {"tier": "gold"}}
    assert table.match({}, both) == "vip", "the namespace of the higher-priority matcher wins"
    await call(client, "PUT", f"/api/v1/namespaces/{vip['id']}", {"status": 0})
    assert state.runtime.namespaces.match({}, both) == "wechat", "a disabled namespace matches nothing"
    assert state.runtime.namespaces.match({}, {"channelcode": "alipay"}) == "default"


async def test_what_this_api_creates_is_a_valid_config_file_entry_and_listed_back_from_the_file(
    center: tuple[Client, GatewayState], tmp_path: Path, aiohttp_client: MakeClient
) -> None:
    client, state = center
    ns = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/matchers", CHANNEL, 201)
    body = {"rule_type": "request_limit", "rule_config": RULES["request_limit"]}
    await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/rules", body, 201)
    shown = ("name", "source", "in_force")
    namespaces = {
        n["name"]: {k: v for k, v in n.items() if k not in shown}
        for n in (await call(client, "GET", "/admin/namespaces"))["data"]
    }
    rules = {
        r["name"]: {k: v for k, v in r.items() if k not in shown}
        for r in (await call(client, "GET", "/admin/rules"))["data"]
    }
    doc = identity_doc(
        listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": ADMIN_TOKEN}},
        namespaces=namespaces,
        rules=rules,
    )
    path = tmp_path / "exported.yaml"
    path.write_text(yaml.safe_dump(doc))
    exported = GatewayState(load_config(path), config_path=str(path))
    assert exported.config.rules == state.runtime.rules_config, "the same namespaces and rules, from the file"
    async with public_lifecycle(exported):
        other = await aiohttp_client(make_admin_app(exported, probes=Probes(healthz, readyz), reload=reload_here))
        listed = (await call(other, "GET", "/api/v1/namespaces"))["data"]
        wechat = next(n for n in listed if n["namespace_code"] == "wechat")
        assert (wechat["source"], wechat["status"]) == ("config", 1)
        rules_back = (await call(other, "GET", f"/api/v1/namespaces/{wechat['id']}/rules"))["data"]
        assert sorted((r["rule_name"], r["rule_config"]) for r in rules_back) == [
            (f"cc.{1}.hour", {"max_requests_per_hour": 100}),
            (f"cc.{1}.minute", {"max_requests_per_minute": 3}),
        ]


async def test_on_redis_counters_are_adjusted_in_redis_and_health_names_redis_when_it_is_down(
    tmp_path: Path, aiohttp_client: MakeClient, own_redis: Any
) -> None:
    doc = identity_doc(
        listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": ADMIN_TOKEN}},
        store={"backend": "redis", "url": own_redis.url},
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    state = GatewayState(load_config(path), config_path=str(path))
    async with public_lifecycle(state):
        client = await aiohttp_client(make_admin_app(state, probes=Probes(healthz, readyz), reload=reload_here))
        assert (await call(client, "GET", "/api/v1/health"))["storage"]["redis"] == "healthy"
        ns = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
        body = {"rule_type": "token_limit", "rule_config": {"max_tokens_per_hour": 500}}
        rule = await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/rules", body, 201)
        after = await call(client, "POST", f"/api/v1/counters/{rule['id']}/increment", {"amount": 120})
        assert (after["store"], after["counters"][0]["used"], after["counters"][0]["remaining"]) == (
            "default",
            120,
            380,
        )
        reset = await call(client, "POST", f"/api/v1/counters/{rule['id']}/reset")
        assert reset["counters"][0]["used"] == 0
        own_redis.stop()
        try:
            health = await call(client, "GET", "/api/v1/health")
            assert health["status"] == "degraded" and health["storage"]["redis"] == "unhealthy"
        finally:
            own_redis.start()


async def test_a_rule_changed_through_the_native_api_reads_here_as_it_is_enforced(
    center: tuple[Client, GatewayState],
) -> None:
    client, _state = center
    ns = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    body = {"rule_type": "request_limit", "rule_config": RULES["request_limit"], "priority": 1}
    rule = await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/rules", body, 201)
    await call(client, "PATCH", f"/admin/rules/cc.{rule['id']}.minute", {"limit": 9, "enabled": False})
    await call(client, "DELETE", f"/admin/rules/cc.{rule['id']}.hour")
    seen = await call(client, "GET", f"/api/v1/rules/{rule['id']}")
    assert (seen["rule_config"], seen["status"], seen["native_rules"]) == (
        {"max_requests_per_minute": 9},
        0,
        [f"cc.{rule['id']}.minute"],
    )
    check = {"rule_type": "field_check", "rule_config": RULES["field_check"]}
    made = await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/rules", check, 201)
    assert made["rule_config"] == RULES["field_check"], "the native form reads back as it was sent"


async def test_a_counter_of_a_file_rule_attached_to_a_namespace_is_read_and_adjusted_by_its_id(
    center: tuple[Client, GatewayState],
) -> None:
    client, _state = center
    batch = next(n for n in (await call(client, "GET", "/api/v1/namespaces"))["data"] if n["namespace_code"] == "batch")
    (rule,) = (await call(client, "GET", f"/api/v1/namespaces/{batch['id']}/rules"))["data"]
    refused = await call(client, "GET", f"/api/v1/counters/{rule['id']}", status=400)
    assert refused["error"]["param"] == "counter_key" and "tenant" in refused["error"]["message"]
    after = await call(client, "POST", f"/api/v1/counters/{rule['id']}:acme/increment", {"amount": 4})
    assert (after["scope"], after["counters"][0]["used"]) == ({"tenant": "acme"}, 4)
    native = await call(client, "GET", "/admin/rules/batch-rpm/counter?tenant=acme")
    assert native["used"] == 4, "the native admin API reads the same counter"


async def test_the_native_api_refuses_to_change_a_namespace_this_api_created_and_says_where_to(
    center: tuple[Client, GatewayState],
) -> None:
    """Its matchers are this API's records: a native change would be undone by the next write here, so it is
    refused (409, naming the /api/v1 routes) and nothing moves; a namespace made natively stays natively editable."""
    client, _state = center
    ns = await call(client, "POST", "/api/v1/namespaces", WECHAT, 201)
    await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/matchers", CHANNEL, 201)
    before = await call(client, "GET", "/admin/namespaces/wechat")
    edit = {"priority": 9, "matchers": [{"type": "header", "field": "x-other", "op": "equals", "value": "1"}]}
    refused = await call(client, "PUT", "/admin/namespaces/wechat", edit, 409)
    assert refused["error"]["code"] == "managed_by_config_center"
    assert f"/api/v1/namespaces/{ns['id']}/matchers" in refused["error"]["message"]
    refused = await call(client, "DELETE", "/admin/namespaces/wechat", status=409)
    assert refused["error"]["code"] == "managed_by_config_center"
    assert await call(client, "GET", "/admin/namespaces/wechat") == before
    await call(client, "POST", f"/api/v1/namespaces/{ns['id']}/matchers", {**CHANNEL, "match_value": "qq"}, 201)
    values = [m["value"] for m in (await call(client, "GET", "/admin/namespaces/wechat"))["matchers"]]
    assert values == ["wechat", "qq"], "both matchers written here are in force"
    native = {"name": "mobile", "matchers": [{"type": "body", "field": "metadata.app", "op": "equals", "value": "ios"}]}
    await call(client, "POST", "/admin/namespaces", native, 201)
    changed = await call(client, "PUT", "/admin/namespaces/mobile", {"priority": 3, "matchers": native["matchers"]})
    assert changed["priority"] == 3
    await call(client, "DELETE", "/admin/namespaces/mobile")
