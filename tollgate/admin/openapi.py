"""The admin API's OpenAPI 3.1 document, served at ``/admin/openapi.json`` (a test checks it names every route)."""

from __future__ import annotations

from typing import Any

from tollgate.config.identity import LIMIT_FIELDS
from tollgate.config.rules import FIELD_CHECK_OPS, MATCHER_OPS, RULE_TYPES, SCOPES

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "invalid input (the message lists every problem with its field path)"),
    "401": _json(_ref("Error"), "no admin token configured, or a missing or wrong admin token"),
    "404": _json(_ref("Error"), "no such tenant, key, namespace or rule"),
    "409": _json(_ref("Error"), "a create named a tenant, key, namespace or rule that already exists"),
}
_TENANT_PARAM = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
}
_KEY_PARAM = {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}
_MODELS = {"type": ["array", "null"], "items": {"type": "string"}}
_LIMITS = {
    "type": "object",
    "properties": {f: {"type": ["integer", "null"], "minimum": 0} for f in LIMIT_FIELDS},
    "additionalProperties": False,
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "param": {"type": ["string", "null"]},
                },
            }
        },
    },
    "TenantInput": {
        "type": "object",
        "required": ["id", "plan"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"},
            "name": {"type": "string"},
            "plan": {"type": "string", "description": "a plan from the config's plans: (or the built-in tier table)"},
            "status": {"type": "string", "enum": ["active", "suspended"]},
            "subdomain": {"type": ["string", "null"]},
            "allowed_models": {**_MODELS, "description": "replaces the plan's allowed models"},
            "limits": {**_LIMITS, "description": "per-tenant overrides of the plan's limits"},
            "metadata": {"type": "object"},
            "keys": {"type": "array", "items": _ref("KeyInput"), "description": "keys to create with the tenant"},
        },
    },
    "TenantPatch": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            k: v
            for k, v in {
                "name": {"type": "string"},
                "plan": {"type": "string"},
                "status": {"type": "string", "enum": ["active", "suspended"]},
                "subdomain": {"type": ["string", "null"]},
                "allowed_models": _MODELS,
                "limits": _LIMITS,
                "metadata": {"type": "object"},
            }.items()
        },
    },
    "Tenant": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "plan": {"type": "string"},
            "status": {"type": "string", "enum": ["active", "suspended"]},
            "subdomain": {"type": ["string", "null"]},
            "allowed_models": _MODELS,
            "limits": _LIMITS,
            "metadata": {"type": "object"},
            "created": {"type": "number", "description": "epoch seconds"},
            "source": {"type": "string", "enum": ["config", "api", "config+api"]},
            "keys": {"type": "integer"},
        },
    },
    "KeyInput": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "expires": {"type": ["string", "number", "null"], "description": "ISO 8601 time or epoch seconds"},
            "models": {**_MODELS, "description": "restrict the key to these models"},
        },
    },
    "Key": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "tenant": {"type": "string"},
            "name": {"type": "string"},
            "created": {"type": "number"},
            "expires": {"type": ["number", "null"]},
            "revoked": {"type": "boolean"},
            "models": _MODELS,
            "source": {"type": "string", "enum": ["config", "api"]},
        },
    },
    "CreatedKey": {
        "allOf": [
            _ref("Key"),
            {
                "type": "object",
                "properties": {"key": {"type": "string", "description": "the key itself; shown only in this response"}},
            },
        ]
    },
    "Plan": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            **{f: {"type": ["integer", "null"]} for f in LIMIT_FIELDS},
            "allowed_models": _MODELS,
        },
    },
    "DeleteReport": {
        "type": "object",
        "properties": {
            "tenant": {"type": "string"},
            "dry_run": {"type": "boolean"},
            "keys": {"type": "array", "items": {"type": "string"}},
            "store": {"type": "object", "description": "limiter counters and usage keys of the tenant"},
        },
    },
}


_NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
}
_SOURCE = {
    "type": "string",
    "enum": ["config", "api", "config+api"],
    "description": "config+api: declared in the file, changed here",
}
_IN_FORCE = {
    "type": "boolean",
    "description": "false: a runtime change that no longer fits the reloaded config file, left out (see the log)",
}
_SCHEMAS.update(
    {
        "Matcher": {
            "type": "object",
            "required": ["type", "field", "op"],
            "properties": {
                "type": {"type": "string", "enum": ["header", "body", "header_and_body"]},
                "field": {"type": "string", "description": "a header name, or a body path such as messages.0.role"},
                "op": {"type": "string", "enum": list(MATCHER_OPS)},
                "value": {"description": "required except for exists; a list for in; a regular expression for regex"},
                "header": {
                    "type": "string",
                    "description": "header_and_body: the header tested alongside the body field",
                },
            },
        },
        "NamespaceInput": {
            "type": "object",
            "required": ["matchers"],
            "description": "shaped like an entry of the config file's namespaces: (POST adds its name)",
            "properties": {
                "priority": {"type": "integer"},
                "matchers": {"type": "array", "items": _ref("Matcher"), "minItems": 1},
            },
        },
        "Namespace": {
            "allOf": [
                _ref("NamespaceInput"),
                {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "source": _SOURCE, "in_force": _IN_FORCE},
                },
            ]
        },
        "RuleInput": {
            "type": "object",
            "required": ["type", "attach"],
            "description": "shaped like an entry of the config file's rules: (POST adds its name); validated by the config parser",
            "properties": {
                "type": {"type": "string", "enum": list(RULE_TYPES)},
                "attach": {
                    "type": "object",
                    "properties": {
                        "global": {"type": "boolean"},
                        "plans": {"type": "array", "items": {"type": "string"}},
                        "tenants": {"type": "array", "items": {"type": "string"}},
                        "namespaces": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "priority": {"type": "integer"},
                "enabled": {"type": "boolean"},
                "shadow": {"type": "boolean", "description": "evaluated and counted, never refuses"},
                "limit": {"type": "integer", "minimum": 1},
                "per": {"type": "string", "enum": ["second", "minute", "hour", "day", "month"]},
                "algorithm": {"type": "string", "enum": ["sliding_window", "gcra", "fixed_window"]},
                "scope": {"type": "array", "items": {"type": "string", "enum": list(SCOPES)}},
                "fail_mode": {"type": "string", "enum": ["fail_open", "fail_closed", "local"]},
                "on_exceed": {"type": "string", "enum": ["cut", "allow"]},
                "unit": {"type": "string", "enum": ["requests", "tokens"]},
                "count": {
                    "type": "string",
                    "enum": ["total", "input", "output"],
                    "description": "token_limit: which tokens count",
                },
                "amount": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": "budget: money per window, in the pricing currency",
                },
                "window": {
                    "type": "string",
                    "enum": ["calendar", "rolling"],
                    "description": "budget: UTC calendar window or the last hour/day/30 days",
                },
                "field": {"type": "string"},
                "op": {"type": "string", "enum": list(FIELD_CHECK_OPS)},
                "value": {},
                "message": {"type": "string"},
            },
        },
        "Rule": {
            "allOf": [
                _ref("RuleInput"),
                {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "source": _SOURCE, "in_force": _IN_FORCE},
                },
            ]
        },
        "RuleCounter": {
            "type": "object",
            "properties": {
                "rule": {"type": "string"},
                "type": {"type": "string"},
                "scope": {"type": "object", "additionalProperties": {"type": "string"}},
                "tenant": {"type": ["string", "null"], "description": "the hash-tag group of the counter"},
                "store": {"type": "string"},
                "unit": {
                    "type": "string",
                    "enum": ["requests", "tokens", "input_tokens", "output_tokens", "nanos"],
                    "description": "nanos: a money budget, in 1e-9 of the pricing currency",
                },
                "limit": {"type": "integer"},
                "remaining": {"type": "integer"},
                "used": {
                    "type": "integer",
                    "description": "what the counter holds now, past the limit after an overdraft",
                },
                "overdraft": {
                    "type": "integer",
                    "description": "used beyond the limit (usage settled after admission)",
                },
                "reset_ms": {
                    "type": "integer",
                    "description": "ms until the counter is full again (or the window resets)",
                },
                "enabled": {"type": "boolean"},
                "shadow": {"type": "boolean"},
            },
        },
    }
)


def _named(name: str) -> dict[str, Any]:
    return {"allOf": [_ref(name), {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}]}


def _rules_paths() -> dict[str, Any]:
    """Namespaces and rules at runtime; every change is validated like the config file and reaches every process."""
    ns_ok = {"200": _json(_ref("Namespace"), "the namespace")}
    rule_ok = {"200": _json(_ref("Rule"), "the rule")}
    revert = {
        "name": "revert",
        "in": "query",
        "schema": {"type": "boolean", "default": False},
        "description": "drop the runtime change of a declared entry",
    }
    deleted = {"200": _json({"type": "object"}, "deleted, or (revert) the file's version restored")}
    scope_params = [
        {"name": s, "in": "query", "schema": {"type": "string"}}
        for s in ("tenant", "key", "user", "ip", "namespace", "model")
    ]
    return {
        "/admin/namespaces": {
            "get": _op(
                "namespaces in force (the file's and the runtime's), with their source",
                {"200": _json(_list_of("Namespace"), "namespaces")},
            ),
            "post": _op(
                "create a namespace", {"201": _json(_ref("Namespace"), "created")}, body=_named("NamespaceInput")
            ),
        },
        "/admin/namespaces/{name}": {
            "get": _op("one namespace", ns_ok, params=[_NAME_PARAM]),
            "put": _op(
                "create or replace a namespace (a declared one is overridden)",
                {**ns_ok, "201": _json(_ref("Namespace"), "created")},
                params=[_NAME_PARAM],
                body=_ref("NamespaceInput"),
            ),
            "delete": _op(
                "delete a namespace created here (refused while rules attach to it, or when the file declares it)",
                deleted,
                params=[_NAME_PARAM, revert],
            ),
        },
        "/admin/rules": {
            "get": _op(
                "rules in force (the file's and the runtime's), with their source",
                {"200": _json(_list_of("Rule"), "rules")},
            ),
            "post": _op("create a rule", {"201": _json(_ref("Rule"), "created")}, body=_named("RuleInput")),
        },
        "/admin/rules/{name}": {
            "get": _op("one rule", rule_ok, params=[_NAME_PARAM]),
            "put": _op(
                "create or replace a rule (a declared one is overridden)",
                {**rule_ok, "201": _json(_ref("Rule"), "created")},
                params=[_NAME_PARAM],
                body=_ref("RuleInput"),
            ),
            "patch": _op(
                "change some fields, e.g. enabled or shadow; null resets a field to its default",
                rule_ok,
                params=[_NAME_PARAM],
                body={"type": "object"},
            ),
            "delete": _op(
                "delete a rule created here (a declared one: disable it, or revert its runtime change)",
                deleted,
                params=[_NAME_PARAM, revert],
            ),
        },
        "/admin/rules/{name}/counter": {
            "get": _op(
                "the rule's counter for one scope, read without consuming; give a value for each of the rule's scopes (- for none)",
                {"200": _json(_ref("RuleCounter"), "the limit state")},
                params=[_NAME_PARAM, *scope_params],
            )
        },
    }


def _list_of(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref(name)}},
    }


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[Any] | None = None,
    body: dict[str, Any] | None = None,
    auth: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **(_ERRORS if auth else {})}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if not auth:
        op["security"] = []
    return op


def openapi_document() -> dict[str, Any]:
    tenant_ok = {"200": _json(_ref("Tenant"), "the tenant")}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tollgate admin API",
            "version": "1",
            "description": "Tenants, API keys, namespaces and rules at runtime. Served only on the admin listener. "
            "Every /admin route except this document needs Authorization: Bearer <admin token>.",
        },
        "components": {"schemas": _SCHEMAS, "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}}},
        "security": [{"adminToken": []}],
        "paths": {
            "/healthz": {"get": _op("liveness", {"200": _json({"type": "object"}, "alive")}, auth=False)},
            "/readyz": {
                "get": _op(
                    "readiness",
                    {
                        "200": _json({"type": "object"}, "ready"),
                        "503": _json({"type": "object"}, "not ready, with the problems"),
                    },
                    auth=False,
                )
            },
            "/admin/openapi.json": {
                "get": _op("this document", {"200": _json({"type": "object"}, "OpenAPI 3.1")}, auth=False)
            },
            "/admin/plans": {
                "get": _op("list plans (from the config file)", {"200": _json(_list_of("Plan"), "plans")})
            },
            "/admin/tenants": {
                "get": _op(
                    "list tenants, ordered by id",
                    {
                        "200": _json(
                            {
                                **_list_of("Tenant"),
                                "properties": {
                                    **_list_of("Tenant")["properties"],
                                    "has_more": {"type": "boolean"},
                                    "next_after": {"type": ["string", "null"]},
                                },
                            },
                            "a page of tenants",
                        )
                    },
                    params=[
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100},
                        },
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "the next_after of the previous page",
                        },
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["active", "suspended"]},
                        },
                        {"name": "plan", "in": "query", "schema": {"type": "string"}},
                    ],
                ),
                "post": _op(
                    "create a tenant (and, optionally, its keys: shown once)",
                    {
                        "201": _json(
                            {
                                "allOf": [
                                    _ref("Tenant"),
                                    {
                                        "type": "object",
                                        "properties": {"created_keys": {"type": "array", "items": _ref("CreatedKey")}},
                                    },
                                ]
                            },
                            "created",
                        )
                    },
                    body=_ref("TenantInput"),
                ),
            },
            "/admin/tenants/bulk": {
                "post": _op(
                    "create up to 10,000 tenants in one call, all or none",
                    {
                        "201": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "created": {"type": "integer"},
                                    "tenants": {"type": "array", "items": {"type": "string"}},
                                    "created_keys": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "created",
                        )
                    },
                    body={
                        "type": "object",
                        "required": ["tenants"],
                        "properties": {"tenants": {"type": "array", "items": _ref("TenantInput"), "maxItems": 10000}},
                    },
                )
            },
            "/admin/tenants/{tenant}": {
                "get": _op("one tenant", tenant_ok, params=[_TENANT_PARAM]),
                "patch": _op(
                    "change a tenant's fields (a config-declared tenant changed here is overridden by the registry from then on)",
                    tenant_ok,
                    params=[_TENANT_PARAM],
                    body=_ref("TenantPatch"),
                ),
                "delete": _op(
                    "delete a tenant created through this API, its keys and its limiter counters; dry_run=true only reports",
                    {"200": _json(_ref("DeleteReport"), "what went (or would go)")},
                    params=[
                        _TENANT_PARAM,
                        {"name": "dry_run", "in": "query", "schema": {"type": "boolean", "default": False}},
                    ],
                ),
            },
            "/admin/tenants/{tenant}/suspend": {
                "post": _op("suspend: every request of the tenant gets 403", tenant_ok, params=[_TENANT_PARAM])
            },
            "/admin/tenants/{tenant}/resume": {
                "post": _op("resume a suspended tenant", tenant_ok, params=[_TENANT_PARAM])
            },
            "/admin/tenants/{tenant}/keys": {
                "get": _op(
                    "the tenant's keys (never the keys themselves)",
                    {"200": _json(_list_of("Key"), "keys")},
                    params=[_TENANT_PARAM],
                ),
                "post": _op(
                    "create a key; the response is the only time it is shown",
                    {"201": _json(_ref("CreatedKey"), "created")},
                    params=[_TENANT_PARAM],
                    body=_ref("KeyInput"),
                ),
            },
            "/admin/keys/{key}": {"get": _op("one key", {"200": _json(_ref("Key"), "the key")}, params=[_KEY_PARAM])},
            "/admin/keys/{key}/revoke": {
                "post": _op(
                    "revoke a key on every gateway process (within registry.poll_interval)",
                    {"200": _json(_ref("Key"), "the revoked key")},
                    params=[_KEY_PARAM],
                )
            },
            **_rules_paths(),
            "/admin/dead-letters": {
                "get": _op(
                    "requests that failed after every retry and fallback (metadata only), oldest first",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "object": {"const": "list"},
                                    "data": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "dead letters",
                        )
                    },
                    params=[
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1},
                            "description": "the newest this many",
                        }
                    ],
                )
            },
            "/admin/resilience": {
                "get": _op(
                    "breakers, in-flight counts, latencies and retry, fallback and shedding counters",
                    {"200": _json({"type": "object"}, "the live state")},
                )
            },
        },
    }
