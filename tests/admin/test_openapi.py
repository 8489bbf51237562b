"""The admin API's OpenAPI document is generated from the routes served: it names each of them and no other, it is
valid OpenAPI 3.1, and every answer of every route fits the schema the document gives for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from tollgate.admin import Probes, make_admin_app
from tollgate.admin.app_keys import STATE
from tollgate.admin.models import parse
from tollgate.admin.openapi import openapi_document, served_routes
from tollgate.admin.routes import OPEN_PATHS
from tollgate.admin.tenant_routes import BulkTenants
from tollgate.config import load_config
from tollgate.errors import BadRequest
from tollgate.process.public import healthz, public_lifecycle, readyz
from tollgate.process.server import reload_here
from tollgate.runtime.state import GatewayState

from ..identity.conftest import ADMIN_TOKEN, identity_doc

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


@pytest.fixture
async def admin(tmp_path: Path, aiohttp_client: MakeClient) -> AsyncIterator[tuple[Client, web.Application, Path]]:
    """The admin application of an in-process gateway started from a config file, as the process wires it."""
    doc = identity_doc(
        listeners={"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": True, "token": ADMIN_TOKEN}},
        registry={"file": str(tmp_path / "registry.json")},
    )
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(doc))
    state = GatewayState(load_config(path), config_path=str(path))
    async with public_lifecycle(state):
        app = make_admin_app(state, probes=Probes(healthz, readyz), reload=reload_here)
        yield await aiohttp_client(app), app, path


async def _document(client: Client) -> dict[str, Any]:
    async with client.get("/admin/openapi.json") as r:
        assert r.status == 200
        document: dict[str, Any] = await r.json()
    return document


async def test_the_document_names_every_served_route_and_no_other_and_is_valid_openapi_3_1(
    admin: tuple[Client, web.Application, Path],
) -> None:
    client, app, _path = admin
    document = await _document(client)
    served = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    gets = {path for method, path in served if method == "GET"}
    assert {path for method, path in served if method == "HEAD"} <= gets  # HEAD only as the twin of a GET
    documented = {(method.upper(), path) for path, ops in document["paths"].items() for method in ops}
    assert documented == {(method, path) for method, path in served if method != "HEAD"}
    for route in ("POST /admin/reload", "GET /metrics", "GET /admin/usage.csv", "GET /admin/audit", "GET /admin/sla"):
        method, path = route.split()
        assert (method, path) in documented
    assert document["openapi"] == "3.1.0"
    validate(document)


async def test_only_the_probes_and_the_document_are_open_and_every_other_route_states_its_role(
    admin: tuple[Client, web.Application, Path],
) -> None:
    client, _app, _path = admin
    document = await _document(client)
    open_ops = {(m, p) for p, ops in document["paths"].items() for m, op in ops.items() if op.get("security") == []}
    assert open_ops == {("get", p) for p in OPEN_PATHS}
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            if (method, path) not in open_ops:
                assert "401" in op["responses"] and "403" in op["responses"], (method, path)
                assert op["x-tollgate-role"] in ("viewer", "operator", "admin"), (method, path)
    for path in OPEN_PATHS:
        async with client.get(path) as r:
            assert r.status == 200, path
    async with client.get("/admin/sla") as r:
        assert r.status == 401


def _check(document: dict[str, Any], method: str, template: str, status: int, media: str, body: Any) -> None:
    answers = document["paths"][template][method.lower()]["responses"]
    assert str(status) in answers, (method, template, status, body)
    content = answers[str(status)]["content"]
    assert media in content, (method, template, media)
    if media == "application/json":
        schema = {**content[media]["schema"], "components": document["components"]}
        jsonschema.validate(body, schema, cls=jsonschema.Draft202012Validator)


_NS, _M, _R = "/api/v1/namespaces/{namespace_id}", "/api/v1/matchers/{matcher_id}", "/api/v1/rules/{rule_id}"
_COUNTER = "/api/v1/counters/{counter_key}"
_CHANNEL = {"matcher_type": "header", "match_field": "channelcode", "match_operator": "equals", "match_value": "wechat"}
_RPM = {"rule_type": "request_limit", "rule_config": {"max_requests_per_minute": 3}}
_CONFIG_CENTER_CALLS: list[tuple[str, str, str, Any, int]] = [
    ("POST", "/api/v1/namespaces", "/api/v1/namespaces", {"namespace_code": "wechat"}, 201),
    ("POST", "/api/v1/namespaces", "/api/v1/namespaces", {"namespace_code": "wechat"}, 409),
    ("GET", "/api/v1/namespaces", "/api/v1/namespaces", None, 200),
    ("GET", _NS, "/api/v1/namespaces/1", None, 200),
    ("GET", _NS, "/api/v1/namespaces/99", None, 404),
    ("PUT", _NS, "/api/v1/namespaces/1", {"description": "the wechat channel"}, 200),
    ("POST", f"{_NS}/matchers", "/api/v1/namespaces/1/matchers", _CHANNEL, 201),
    ("POST", f"{_NS}/matchers", "/api/v1/namespaces/1/matchers", {**_CHANNEL, "match_operator": "like"}, 400),
    ("GET", f"{_NS}/matchers", "/api/v1/namespaces/1/matchers", None, 200),
    ("GET", _M, "/api/v1/matchers/1", None, 200),
    ("PUT", _M, "/api/v1/matchers/1", {"priority": 5}, 200),
    ("POST", f"{_NS}/rules", "/api/v1/namespaces/1/rules", _RPM, 201),
    ("GET", f"{_NS}/rules", "/api/v1/namespaces/1/rules", None, 200),
    ("GET", _R, "/api/v1/rules/1", None, 200),
    ("PUT", _R, "/api/v1/rules/1", {"status": 0}, 200),
    ("GET", _COUNTER, "/api/v1/counters/1", None, 200),
    ("POST", f"{_COUNTER}/increment", "/api/v1/counters/1:wechat/increment", {"amount": 2}, 200),
    ("POST", f"{_COUNTER}/reset", "/api/v1/counters/1:wechat/reset", None, 200),
    ("DELETE", _M, "/api/v1/matchers/1", None, 200),
    ("DELETE", _R, "/api/v1/rules/1", None, 200),
    ("DELETE", _NS, "/api/v1/namespaces/1", None, 200),
    ("GET", "/api/v1/health", "/api/v1/health", None, 200),
    ("GET", "/api/v1/stats", "/api/v1/stats", None, 200),
    ("POST", "/api/v1/sync", "/api/v1/sync", None, 409),  # no database here
]


async def test_every_route_answers_as_its_documented_schema_says(admin: tuple[Client, web.Application, Path]) -> None:
    client, app, path = admin
    document = await _document(client)
    rule = {"type": "request_limit", "limit": 5, "per": "minute", "attach": {"tenants": ["acme"]}}
    matchers = [{"type": "header", "field": "x-channel", "op": "equals", "value": "batch"}]
    calls: list[tuple[str, str, str, Any, int]] = [
        ("GET", "/healthz", "/healthz", None, 200),
        ("GET", "/readyz", "/readyz", None, 200),
        ("GET", "/admin/openapi.json", "/admin/openapi.json", None, 200),
        ("GET", "/admin/plans", "/admin/plans", None, 200),
        ("GET", "/admin/tenants", "/admin/tenants?limit=2", None, 200),
        ("GET", "/admin/tenants", "/admin/tenants?limit=0", None, 400),
        ("POST", "/admin/tenants", "/admin/tenants", {"id": "initech", "plan": "personal", "keys": [{}]}, 201),
        ("POST", "/admin/tenants", "/admin/tenants", {"id": "initech", "plan": "personal"}, 409),
        ("POST", "/admin/tenants/bulk", "/admin/tenants/bulk", {"tenants": [{"id": "b-1", "plan": "personal"}]}, 201),
        ("POST", "/admin/tenants/bulk", "/admin/tenants/bulk", {"tenant": []}, 400),
        ("GET", "/admin/tenants/{tenant}", "/admin/tenants/acme", None, 200),
        ("GET", "/admin/tenants/{tenant}", "/admin/tenants/nobody", None, 404),
        ("PATCH", "/admin/tenants/{tenant}", "/admin/tenants/initech", {"limits": {"concurrency": 2}}, 200),
        ("POST", "/admin/tenants/{tenant}/suspend", "/admin/tenants/initech/suspend", None, 200),
        ("POST", "/admin/tenants/{tenant}/resume", "/admin/tenants/initech/resume", None, 200),
        ("GET", "/admin/tenants/{tenant}/keys", "/admin/tenants/acme/keys", None, 200),
        ("POST", "/admin/tenants/{tenant}/keys", "/admin/tenants/acme/keys", {"name": "ci"}, 201),
        ("GET", "/admin/keys/{key}", "/admin/keys/acme-main", None, 200),
        ("POST", "/admin/keys/{key}/revoke", "/admin/keys/nope/revoke", None, 404),
        ("DELETE", "/admin/tenants/{tenant}", "/admin/tenants/initech?dry_run=true", None, 200),
        ("DELETE", "/admin/tenants/{tenant}", "/admin/tenants/b-1", None, 200),
        ("POST", "/admin/namespaces", "/admin/namespaces", {"name": "batch", "matchers": matchers}, 201),
        ("POST", "/admin/namespaces", "/admin/namespaces", {"matchers": matchers}, 400),
        ("GET", "/admin/namespaces", "/admin/namespaces", None, 200),
        ("GET", "/admin/namespaces/{name}", "/admin/namespaces/batch", None, 200),
        ("PUT", "/admin/namespaces/{name}", "/admin/namespaces/batch", {"priority": 2, "matchers": matchers}, 200),
        ("POST", "/admin/rules", "/admin/rules", {"name": "acme-5rpm", **rule}, 201),
        ("GET", "/admin/rules", "/admin/rules", None, 200),
        ("GET", "/admin/rules/{name}", "/admin/rules/acme-5rpm", None, 200),
        ("PUT", "/admin/rules/{name}", "/admin/rules/acme-6rpm", {**rule, "limit": 6}, 201),
        ("PATCH", "/admin/rules/{name}", "/admin/rules/acme-5rpm", {"shadow": True}, 200),
        ("PATCH", "/admin/rules/{name}", "/admin/rules/acme-5rpm", {}, 400),
        ("GET", "/admin/rules/{name}/counter", "/admin/rules/acme-5rpm/counter?tenant=acme", None, 200),
        ("DELETE", "/admin/rules/{name}", "/admin/rules/acme-6rpm", None, 200),
        ("DELETE", "/admin/namespaces/{name}", "/admin/namespaces/batch", None, 200),
        *_CONFIG_CENTER_CALLS,
        ("GET", "/admin/dead-letters", "/admin/dead-letters?limit=5", None, 200),
        ("GET", "/admin/resilience", "/admin/resilience", None, 200),
        ("GET", "/metrics", "/metrics", None, 200),
        ("GET", "/admin/tenants/{tenant}/usage", "/admin/tenants/acme/usage", None, 200),
        ("GET", "/admin/tenants/{tenant}/usage", "/admin/tenants/acme/usage?user=bob", None, 200),
        ("GET", "/admin/tenants/{tenant}/usage", "/admin/tenants/acme/usage?period=2024-13", None, 400),
        ("GET", "/admin/tenants/{tenant}/usage.csv", "/admin/tenants/acme/usage.csv", None, 200),
        ("GET", "/admin/tenants/{tenant}/usage/users", "/admin/tenants/acme/usage/users", None, 200),
        ("GET", "/admin/usage.csv", "/admin/usage.csv", None, 200),
        ("GET", "/admin/tenants/{tenant}/quota", "/admin/tenants/acme/quota", None, 200),
        ("GET", "/admin/sla", "/admin/sla", None, 200),
        ("GET", "/admin/pricing", "/admin/pricing", None, 200),
        ("GET", "/admin/stats", "/admin/stats", None, 200),
        ("POST", "/admin/sync", "/admin/sync", None, 409),  # no database here (tests/database: with one)
        ("GET", "/admin/spend", "/admin/spend?status=abc", None, 400),
        (
            "GET",
            "/admin/spend",
            "/admin/spend",
            None,
            503,
        ),  # no database here (tests/admin/test_spend_routes.py: with one)
        ("GET", "/admin/bills/{tenant}", "/admin/bills/acme?month=2026-11", None, 503),
        ("GET", "/admin/whoami", "/admin/whoami", None, 200),
        ("GET", "/admin/principals", "/admin/principals", None, 200),
        ("POST", "/admin/reload", "/admin/reload", None, 200),
        ("GET", "/admin/tenants/{tenant}/audit", "/admin/tenants/initech/audit", None, 200),
        ("GET", "/admin/audit", "/admin/audit?since=2000-01-01T00:00:00Z", None, 200),
        ("GET", "/admin/audit", "/admin/audit?since=yesterday", None, 400),
        ("GET", "/admin/scaling", "/admin/scaling", None, 200),
        ("GET", "/admin/scaling/{pool}/history", "/admin/scaling/nope/history", None, 404),
        ("GET", "/admin/cache", "/admin/cache", None, 200),
        ("DELETE", "/admin/cache", "/admin/cache?tenant=acme", None, 200),
    ]
    exercised = set()
    for method, template, url, body, status in calls:
        if (method, template) == ("POST", "/admin/reload"):
            await app[STATE].accounting.audit.flush()  # the audit routes below then list the writes above
        async with client.request(method, url, json=body, headers=AUTH) as r:
            assert r.status == status, (method, url, await r.text())
            media = r.content_type
            answer = await r.json() if media == "application/json" else await r.text()
        _check(document, method, template, status, media, answer)
        exercised.add((method.lower(), template))
    path.write_text("listeners: [not, a, mapping]\n")
    async with client.post("/admin/reload", headers=AUTH) as r:
        _check(document, "POST", "/admin/reload", r.status, r.content_type, await r.json())
        assert r.status == 422
    async with client.get("/admin/audit", headers=AUTH) as r:
        assert (await r.json())["events"], "the audit routes were checked with events in them"
    documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert exercised == documented


async def test_a_route_without_a_declaration_cannot_be_left_out_of_the_document() -> None:
    async def undeclared(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(LookupError, match="GET /admin/undeclared"):
        openapi_document([("GET", "/admin/undeclared", undeclared)])
    app = web.Application()
    app.router.add_get("/admin/undeclared", undeclared)
    assert served_routes(app.router) == [("GET", "/admin/undeclared", undeclared)]


def test_a_body_that_does_not_fit_its_model_is_refused_with_each_problem_named_by_its_field() -> None:
    with pytest.raises(BadRequest) as refused:
        parse(BulkTenants, {"tenants": [], "colour": "red"})
    assert refused.value.message == "invalid input: colour: unknown key" and refused.value.param == "colour"
    with pytest.raises(BadRequest) as refused:
        parse(BulkTenants, {})
    assert "tenants: is required" in refused.value.message
    assert parse(BulkTenants, {"tenants": "checked by the config parser"}).tenants == "checked by the config parser"
