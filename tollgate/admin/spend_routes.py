"""Admin routes over the per-request spend log: filtered pages by cursor, the same as CSV, monthly bills from it.

The rows live in the database of record (``database.url``); without one
these routes answer 503. ``GET /admin/spend`` pages newest first by an opaque
cursor (keyset on (ts_ms, request_id)); ``format=csv`` streams every page of
the same filter. ``GET /admin/bills/{tenant}`` sums a month of the tenant's
rows per model: unlike ``/admin/tenants/{tenant}/usage`` (the usage
aggregates, kept per day and priced model whatever the retention), it counts
each request of record once, and a row past ``database.retention`` is gone.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import Field

from tollgate.accounting.pricing import to_money
from tollgate.admin.app_keys import STATE
from tollgate.admin.models import View
from tollgate.admin.operations import AdminHandler, DocumentedAnswer, Param, operation, query
from tollgate.admin.responses import json_response
from tollgate.database.spend import SPEND_COLUMNS, SpendDatabase, SpendFilter, select_bill, select_spend
from tollgate.errors import BadRequest, StoreUnavailable

__all__ = ["SPEND_ROUTES", "Bill", "SpendPage"]

MAX_LIMIT = 1000
_CSV_PAGE = 1000
_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")
_TEXT_FILTERS = ("tenant", "key_id", "end_user", "model")
_MAX_FILTER_LENGTH = 256


# -- answers, for the document ---------------------------------------------------------


class SpendRow(View):
    """One answered request as the spend log keeps it."""

    request_id: str
    ts_ms: int = Field(description="when the request ended, epoch milliseconds")
    tenant: str
    key_id: str | None
    end_user: str | None
    namespace: str | None
    endpoint: str | None = Field(description="the endpoint kind, e.g. chat")
    model: str | None = Field(description="the model the client asked for")
    model_served: str | None
    provider: str | None
    upstream: str | None
    deployment_model: str | None = Field(description="the model name the upstream was sent")
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    usage_reported: bool = Field(description="false: the tokens are the gateway's estimate")
    cost_nanos: int = Field(description="cost in billionths of the currency")
    cost: float
    currency: str
    status: int = Field(description="the HTTP status answered; 499: the client went away")
    error: str | None = Field(description="the error code, if any")
    total_ms: float
    ttfb_ms: float | None
    stream: bool
    cut: bool = Field(description="a stream ended by a token or money budget")
    attempts: int | None
    cache_hit: bool = Field(description="answered from the gateway's response cache: no tokens, the cache's price")


class SpendPage(View):
    """A page of spend rows, newest first."""

    data: list[SpendRow]
    has_more: bool
    next_cursor: str | None = Field(description="give it as cursor= (with the same filters) for the next page")


class BillLineView(View):
    model: str | None = Field(description="the model that served (the one asked for when none served)")
    currency: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost: float


class Bill(View):
    """A tenant's month from the spend log: totals and one line per model and currency."""

    tenant: str
    month: str = Field(description="YYYY-MM, UTC")
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost: dict[str, float] = Field(description="per currency")
    by_model: list[BillLineView]


# -- parameters ------------------------------------------------------------------------

_TIME = {"type": "string", "description": "ISO 8601 time, or epoch milliseconds"}
_SPEND_PARAMS: tuple[Param, ...] = (
    query("tenant", {"type": "string"}, "only this tenant's rows"),
    query("key_id", {"type": "string"}, "only this API key's rows (its id)"),
    query("end_user", {"type": "string"}, "only this end user's rows"),
    query("model", {"type": "string"}, "only rows of this requested model"),
    query("status", {"type": "integer", "minimum": 100, "maximum": 599}, "only rows answered with this status"),
    query("from", _TIME, "rows at or after this time"),
    query("to", _TIME, "rows before this time"),
    query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 100}, "rows per page"),
    query("cursor", {"type": "string"}, "the next_cursor of the previous page"),
    query("format", {"type": "string", "enum": ["json", "csv"], "default": "json"}, "csv: every page, as CSV"),
)


def _database(request: web.Request) -> SpendDatabase:
    spend = request.app[STATE].accounting.spend_log
    if spend is None:
        raise StoreUnavailable("the spend log needs a database (database.url is not set)", code="no_database")
    database: SpendDatabase = spend.database
    return database


def _time_ms(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw.isdigit():
        return int(raw)
    try:
        when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"{name} must be an ISO 8601 time or epoch milliseconds", param=name, code="invalid_time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _filter(request: web.Request) -> SpendFilter:
    text: dict[str, str | None] = {}
    for name in _TEXT_FILTERS:
        value = request.query.get(name)
        if value is not None and (not value or len(value) > _MAX_FILTER_LENGTH):
            raise BadRequest(f"{name} must be 1 to {_MAX_FILTER_LENGTH} characters", param=name, code="invalid_value")
        text[name] = value
    status = None
    if "status" in request.query:
        raw = request.query["status"]
        if not (raw.isdigit() and 100 <= int(raw) <= 599):
            raise BadRequest("status must be an HTTP status, 100..599", param="status", code="invalid_value")
        status = int(raw)
    since, until = _time_ms(request, "from"), _time_ms(request, "to")
    if since is not None and until is not None and since > until:
        raise BadRequest("from must not be after to", param="from", code="invalid_time")
    return SpendFilter(
        tenant=text["tenant"],
        key_id=text["key_id"],
        end_user=text["end_user"],
        model=text["model"],
        status=status,
        since_ms=since,
        until_ms=until,
    )


def encode_cursor(ts_ms: int, request_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts_ms, request_id])).decode().rstrip("=")


def _cursor(request: web.Request) -> tuple[int, str] | None:
    raw = request.query.get("cursor")
    if raw is None:
        return None
    try:
        value = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, binascii.Error):
        value = None
    if not (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], str)
    ):
        raise BadRequest("cursor is not one this API gave", param="cursor", code="invalid_cursor")
    return value[0], value[1]


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    if not (raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
        raise BadRequest(f"limit must be an integer within 1..{MAX_LIMIT}", param="limit", code="invalid_limit")
    return int(raw)


def _row_view(row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(SPEND_COLUMNS, row, strict=True))
    for flag in ("usage_reported", "stream", "cut", "cache_hit"):
        out[flag] = bool(out[flag])
    out["cost"] = to_money(out["cost_nanos"])
    return out


# -- routes ----------------------------------------------------------------------------


@operation(
    "spend rows (one per answered request), filtered, newest first, a page at a time; format=csv: all of them",
    tag="spend",
    answers={200: DocumentedAnswer("a page of rows (format=csv: text/csv, every matching row)", SpendPage)},
    params=_SPEND_PARAMS,
    errors=(400, 503),
    role="viewer",
    tenant_admin="query",
)
async def spend(request: web.Request) -> web.StreamResponse:
    where = _filter(request)
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise BadRequest("format must be json or csv", param="format", code="invalid_value")
    before = _cursor(request)
    database = _database(request)
    if fmt == "csv":
        return await _csv(request, database, where, before)
    limit = _limit(request)
    rows = await select_spend(database, where, limit=limit + 1, before=before)
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more else None
    return json_response(
        {
            "data": [_row_view(r) for r in rows],
            "has_more": more,
            "next_cursor": encode_cursor(last[1], last[0]) if last is not None else None,
        }
    )


async def _csv(
    request: web.Request, database: SpendDatabase, where: SpendFilter, before: tuple[int, str] | None
) -> web.StreamResponse:
    rows = await select_spend(database, where, limit=_CSV_PAGE, before=before)  # errors before the 200 goes out
    answer = web.StreamResponse(
        headers={"Content-Type": "text/csv; charset=utf-8", "Content-Disposition": 'attachment; filename="spend.csv"'}
    )
    await answer.prepare(request)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow((*SPEND_COLUMNS, "cost"))
    while True:
        for row in rows:
            writer.writerow((*row, f"{to_money(row[18]):.9f}"))
        await answer.write(out.getvalue().encode())
        out.seek(0)
        out.truncate()
        if len(rows) < _CSV_PAGE:
            break
        rows = await select_spend(database, where, limit=_CSV_PAGE, before=(rows[-1][1], rows[-1][0]))
    await answer.write_eof()
    return answer


def _month(request: web.Request) -> tuple[str, int, int]:
    raw = request.query.get("month")
    if raw is None:
        raise BadRequest("month is required, as YYYY-MM", param="month", code="invalid_period")
    match = _MONTH.fullmatch(raw)
    if match is None:
        raise BadRequest("month must be a month as YYYY-MM", param="month", code="invalid_period")
    year, month = int(match[1]), int(match[2])
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return raw, int(start.timestamp() * 1000), int(end.timestamp() * 1000)


@operation(
    "the tenant's bill for a month from the spend log: totals and per model requests, tokens and cost",
    tag="spend",
    answers={200: DocumentedAnswer("the bill", Bill)},
    params=(query("month", {"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])$"}, "the month, YYYY-MM (UTC)"),),
    errors=(400, 503),
    role="viewer",
    tenant_admin="path",
)
async def bill(request: web.Request) -> web.Response:
    tenant = request.match_info["tenant"]
    month, since, until = _month(request)
    lines = await select_bill(_database(request), tenant, since, until)
    fields = (
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
    )
    totals = {f: sum(getattr(line, f) for line in lines) for f in fields}
    cost: dict[str, int] = {}
    for line in lines:
        cost[line.currency] = cost.get(line.currency, 0) + line.cost_nanos
    return json_response(
        {
            "tenant": tenant,
            "month": month,
            **totals,
            "total_tokens": totals["prompt_tokens"] + totals["completion_tokens"],
            "cost": {c: to_money(n) for c, n in sorted(cost.items())},
            "by_model": [
                {
                    "model": line.model,
                    "currency": line.currency,
                    **{f: getattr(line, f) for f in fields},
                    "total_tokens": line.prompt_tokens + line.completion_tokens,
                    "cost": to_money(line.cost_nanos),
                }
                for line in lines
            ],
        }
    )


SPEND_ROUTES: tuple[tuple[str, str, AdminHandler], ...] = (
    ("GET", "/admin/spend", spend),
    ("GET", "/admin/bills/{tenant}", bill),
)
