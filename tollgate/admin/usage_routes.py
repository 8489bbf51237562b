"""Admin routes of accounting: ``/metrics``, usage and its CSV exports, quotas, SLA, pricing and the audit log.

Each handler declares itself for the OpenAPI document (``@operation``): its parameters and what it answers.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from tollgate.accounting.aggregates import (
    OTHER_USERS,
    USER_FIELDS,
    cache_savings,
    month_of,
    split_models,
    usage_amounts,
)
from tollgate.accounting.metrics import CONTENT_TYPE
from tollgate.admin.app_keys import STATE
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, Param, operation, query
from tollgate.admin.responses import json_response
from tollgate.admin.usage_views import AuditEvents, EndUsers, PriceTable, Quota, SlaReport, Usage
from tollgate.errors import BadRequest
from tollgate.identity.end_user import checked_end_user

__all__ = ["USAGE_ROUTES"]

_PERIOD = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
_CSV_HEADER = (
    "tenant",
    "date",
    "model",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "currency",
    "cached_tokens",
    "cache_write_tokens",
)


_PERIOD_PARAM = query(
    "period", {"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])$"}, "a month, YYYY-MM (default: this month, UTC)"
)
_TIME = {"type": "string", "description": "Unix seconds or an ISO 8601 time"}
_AUDIT_PARAMS: tuple[Param, ...] = (
    query("since", _TIME, "events at or after this time"),
    query("until", _TIME, "events at or before this time"),
    query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100}),
)
_CSV = DocumentedAnswer("one row per tenant, day and model", media_type="text/csv")


def _accounting(request: web.Request) -> Any:
    return request.app[STATE].accounting


def _period(request: web.Request) -> str:
    period = request.query.get("period") or month_of(time.time())
    if not _PERIOD.fullmatch(period):
        raise BadRequest("period must be a month as YYYY-MM", param="period", code="invalid_period")
    return period


def _usage_view(fields: dict[str, Any]) -> dict[str, Any]:
    totals, models = split_models(fields)
    return {
        **_billed(totals),
        "errors": totals["errors"],
        "estimated": {
            "requests": totals["est_requests"],
            "prompt_tokens": totals["est_prompt_tokens"],
            "completion_tokens": totals["est_completion_tokens"],
        },
        "by_model": {m: _billed(v) for m, v in sorted(models.items())},
        "response_cache": cache_savings(totals),
    }


def _billed(fields: dict[str, int]) -> dict[str, Any]:
    """The amounts of a tenant or of a model, with the parts of the prompt read from and written to a prompt cache."""
    return {
        **usage_amounts(fields),
        "cached_tokens": fields.get("cached_tokens", 0),
        "cache_write_tokens": fields.get("cache_write_tokens", 0),
    }


@operation(
    "the gateway's metrics in the Prometheus text format (every worker's values)",
    tag="metrics",
    answers={200: DocumentedAnswer("the exposition", media_type=CONTENT_TYPE.partition(";")[0])},
    role="viewer",
)
async def metrics(request: web.Request) -> web.Response:
    body = _accounting(request).metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _end_user_view(fields: dict[str, int]) -> dict[str, Any]:
    return {**usage_amounts(fields), "errors": fields.get("errors", 0)}


@operation(
    "the tenant's requests, tokens and cost in a month, by model and by day; with user=, one end user's",
    tag="usage",
    answers={200: DocumentedAnswer("the usage", Usage)},
    params=(_PERIOD_PARAM, query("user", {"type": "string"}, "an end user of the tenant")),
    errors=(400,),
    role="viewer",
    tenant_admin="path",
)
async def tenant_usage(request: web.Request) -> web.Response:
    acc = _accounting(request)
    tenant, period = request.match_info["tenant"], _period(request)
    if "user" in request.query:
        return await _end_user_usage(request, tenant, period)
    month, days = await acc.store.read(tenant, period)
    return json_response(
        {
            "tenant": tenant,
            "period": period,
            "currency": acc.pricing().currency,
            **_usage_view(month),
            "by_day": {day: _usage_view(fields) for day, fields in sorted(days.items())},
        }
    )


async def _end_user_usage(request: web.Request, tenant: str, period: str) -> web.Response:
    """One end user's usage in the period: zeros when none was kept for it (see ``usage.max_end_users``)."""
    acc = _accounting(request)
    limit = request.app[STATE].config.identity.end_user.max_length
    user = checked_end_user(request.query["user"], "user", limit, "user")
    if user is None:
        raise BadRequest("user must name an end user", param="user", code="invalid_value")
    fields = (await acc.store.users(tenant, period, user)).get(user, {})
    return json_response(
        {"tenant": tenant, "period": period, "currency": acc.pricing().currency, "user": user, **_end_user_view(fields)}
    )


@operation(
    "the usage of every end user of the tenant kept apart in a month, and the rest as other",
    tag="usage",
    answers={200: DocumentedAnswer("the end users' usage", EndUsers)},
    params=(_PERIOD_PARAM,),
    errors=(400,),
    role="viewer",
    tenant_admin="path",
)
async def tenant_end_users(request: web.Request) -> web.Response:
    acc = _accounting(request)
    tenant, period = request.match_info["tenant"], _period(request)
    users = await acc.store.users(tenant, period)
    other = users.pop(OTHER_USERS, dict.fromkeys(USER_FIELDS, 0))
    return json_response(
        {
            "tenant": tenant,
            "period": period,
            "currency": acc.pricing().currency,
            "max_end_users": acc.settings.usage.max_end_users,
            "users": {u: _end_user_view(fields) for u, fields in sorted(users.items())},
            # The end users past max_end_users this period, added up.
            "other": _end_user_view(other),
        }
    )


def _csv_rows(tenant: str, days: dict[str, dict[str, Any]], currency: str) -> list[tuple[Any, ...]]:
    rows = []
    for day, fields in sorted(days.items()):
        _totals, models = split_models(fields)
        for model, v in sorted(models.items()):
            a = _billed(v)
            rows.append(
                (
                    tenant,
                    day,
                    model,
                    a["requests"],
                    a["prompt_tokens"],
                    a["completion_tokens"],
                    a["total_tokens"],
                    f"{a['cost']:.9f}",
                    currency,
                    a["cached_tokens"],
                    a["cache_write_tokens"],
                )
            )
    return rows


def _csv_response(rows: list[tuple[Any, ...]], filename: str) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    writer.writerows(rows)
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@operation(
    "the tenant's usage in a month as CSV, one row per day and model",
    tag="usage",
    answers={200: _CSV},
    params=(_PERIOD_PARAM,),
    errors=(400,),
    role="viewer",
    tenant_admin="path",
)
async def tenant_usage_csv(request: web.Request) -> web.Response:
    acc = _accounting(request)
    tenant, period = request.match_info["tenant"], _period(request)
    _month, days = await acc.store.read(tenant, period)
    return _csv_response(_csv_rows(tenant, days, acc.pricing().currency), f"usage-{tenant}-{period}.csv")


@operation(
    "every tenant's usage in a month as CSV, one row per tenant, day and model",
    tag="usage",
    answers={200: _CSV},
    params=(_PERIOD_PARAM,),
    errors=(400,),
    role="viewer",
)
async def all_usage_csv(request: web.Request) -> web.Response:
    acc = _accounting(request)
    period = _period(request)
    currency = acc.pricing().currency
    rows: list[tuple[Any, ...]] = []
    for tenant in await acc.store.tenants(period):
        _month, days = await acc.store.read(tenant, period)
        rows.extend(_csv_rows(tenant, days, currency))
    return _csv_response(rows, f"usage-{period}.csv")


@operation(
    "used, limit and percent of each of the tenant's quotas this month, and the alerts fired",
    tag="usage",
    answers={200: DocumentedAnswer("the quotas", Quota)},
    role="viewer",
    tenant_admin="path",
)
async def tenant_quota(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_response(await state.accounting.quota(request.match_info["tenant"], state))


def _when(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        return float(raw)  # Unix seconds
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(f"{name} must be Unix seconds or an ISO 8601 time", param=name, code="invalid_time") from None


async def _audit_list(request: web.Request, tenant: str | None) -> web.Response:
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be an integer", param="limit", code="invalid_limit") from None
    if not 1 <= limit <= 10_000:
        raise BadRequest("limit must be within 1..10000", param="limit", code="invalid_limit")
    events = await _accounting(request).audit.list(
        tenant=tenant, since=_when(request, "since"), until=_when(request, "until"), limit=limit
    )
    return json_response({"events": events})


@operation(
    "the tenant's audit events, newest first",
    tag="audit",
    answers={200: DocumentedAnswer("audit events", AuditEvents)},
    params=_AUDIT_PARAMS,
    errors=(400,),
    role="viewer",
    tenant_admin="path",
)
async def tenant_audit(request: web.Request) -> web.Response:
    return await _audit_list(request, request.match_info["tenant"])


@operation(
    "audit events, newest first",
    tag="audit",
    answers={200: DocumentedAnswer("audit events", AuditEvents)},
    params=(query("tenant", {"type": "string"}, "only this tenant's events"), *_AUDIT_PARAMS),
    errors=(400,),
    role="viewer",
    tenant_admin="query",
)
async def audit(request: web.Request) -> web.Response:
    return await _audit_list(request, request.query.get("tenant"))


@operation(
    "per plan: the gateway's overhead p99 target, the observed p99 and the violations (this process)",
    tag="usage",
    answers={200: DocumentedAnswer("the SLA report", SlaReport)},
    role="viewer",
)
async def sla(request: web.Request) -> web.Response:
    acc = _accounting(request)
    return json_response(acc.sla.report(acc.current.metrics))


@operation(
    "the price table and cost rules in force",
    tag="usage",
    answers={200: DocumentedAnswer("the prices", PriceTable)},
    role="viewer",
)
async def pricing(request: web.Request) -> web.Response:
    return json_response(_accounting(request).pricing().table())


USAGE_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/metrics", metrics),
    ("GET", "/admin/tenants/{tenant}/usage", tenant_usage),
    ("GET", "/admin/tenants/{tenant}/usage.csv", tenant_usage_csv),
    ("GET", "/admin/tenants/{tenant}/usage/users", tenant_end_users),
    ("GET", "/admin/usage.csv", all_usage_csv),
    ("GET", "/admin/tenants/{tenant}/quota", tenant_quota),
    ("GET", "/admin/tenants/{tenant}/audit", tenant_audit),
    ("GET", "/admin/audit", audit),
    ("GET", "/admin/sla", sla),
    ("GET", "/admin/pricing", pricing),
)
