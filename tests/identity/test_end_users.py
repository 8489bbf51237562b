"""End users through real gateway processes: per-end-user limits, the sources and their precedence, bounded values."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest

from ..support.processes import Proc, gateway_process
from .conftest import ACME_KEY, GLOBEX_KEY, HS_SECRET, identity_doc

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

HEADER = "x-acme-end-user"
LIMIT = 2
# Every request of a tenant's end user counts against its own counter of this rule.
PER_END_USER = {
    "per-end-user": {
        "type": "request_limit",
        "limit": LIMIT,
        "per": "minute",
        "scope": ["tenant", "user"],
        "attach": {"global": True},
    }
}


def _doc(mock: Proc, log: Path, end_user: dict[str, Any]) -> dict[str, Any]:
    return identity_doc(
        f"{mock.url}/v1",
        identity={
            "chain": ["api_key", "jwt"],
            "jwt": {"keys": [{"kid": "hs", "algorithm": "HS256", "secret": HS_SECRET}]},
            "end_user": end_user,
        },
        rules=PER_END_USER,
        access_log={"path": str(log)},
        usage={"flush_interval": "100ms"},
    )


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("end-users") / "access.log"


@pytest.fixture(scope="module")
def gateway(mock: Proc, log_path: Path) -> Iterator[Proc]:
    """Every source, in the order jwt, body, header; each test uses end users of its own (the counters live a minute)."""
    with gateway_process(_doc(mock, log_path, {"from": ["jwt", "body", "header"], "header": HEADER})) as proc:
        yield proc


def _token(sub: str | None, tenant: str = "acme") -> str:
    claims: dict[str, Any] = {"tenant": tenant, "exp": int(time.time()) + 600}
    if sub is not None:
        claims["sub"] = sub
    return jwt.encode(claims, HS_SECRET, algorithm="HS256", headers={"kid": "hs"})


async def _chat(
    s: aiohttp.ClientSession,
    gw: Proc,
    *,
    key: str = ACME_KEY,
    user: Any = None,
    headers: dict[str, str] | None = None,
    rid: str = "",
) -> tuple[int, dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    if user is not None:
        body["user"] = user
    sent = {"Authorization": f"Bearer {key}", **({"x-request-id": rid} if rid else {}), **(headers or {})}
    async with s.post(f"{gw.url}/v1/chat/completions", json=body, headers=sent) as r:
        return r.status, await r.json(content_type=None), dict(r.headers)


async def _log_lines(path: Path, request_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The access-log lines of ``request_ids`` once all are written (the flush runs every 100 ms)."""
    deadline = time.monotonic() + 10
    while True:
        lines = [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
        found = {line["request_id"]: line for line in lines if line["request_id"] in request_ids}
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_two_end_users_of_one_api_key_each_get_their_own_limit(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        first = [await _chat(s, gateway, user="limits-alice") for _ in range(LIMIT)]
        third = await _chat(s, gateway, user="limits-alice")
        others = [await _chat(s, gateway, user="limits-bob") for _ in range(LIMIT)]
        again = await _chat(s, gateway, user="limits-alice")
    assert [status for status, _, _ in first] == [200] * LIMIT
    assert [h["x-ratelimit-remaining-requests"] for _, _, h in first] == ["1", "0"]
    status, body, headers = third
    assert status == 429 and "per-end-user" in body["error"]["message"] and int(headers["Retry-After"]) >= 1
    # bob's counter is his own: alice's refusal took nothing from it, and his requests take nothing from hers
    assert [status for status, _, _ in others] == [200] * LIMIT
    assert [h["x-ratelimit-remaining-requests"] for _, _, h in others] == ["1", "0"]
    assert again[0] == 429


async def test_requests_without_an_end_user_share_one_counter_and_an_empty_user_is_none(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        # globex: a tenant no other test sends without an end user
        results = [await _chat(s, gateway, key=GLOBEX_KEY, user=u) for u in (None, "", None)]
    assert [status for status, _, _ in results] == [200, 200, 429]


async def test_the_configured_header_names_the_end_user_and_the_body_field_comes_before_it(
    gateway: Proc, log_path: Path
) -> None:
    async with aiohttp.ClientSession() as s:
        by_header = [
            await _chat(s, gateway, headers={HEADER: "header-carol"}, rid=f"req_header_{i}") for i in range(LIMIT + 1)
        ]
        # With both, the body's user counts (dave): carol's spent counter does not refuse it.
        both = await _chat(s, gateway, user="header-dave", headers={HEADER: "header-carol"}, rid="req_header_both")
    assert [status for status, _, _ in by_header] == [200] * LIMIT + [429]
    assert both[0] == 200 and both[2]["x-ratelimit-remaining-requests"] == str(LIMIT - 1)
    lines = await _log_lines(log_path, {"req_header_0", "req_header_both"})
    assert lines["req_header_0"]["user"] == "header-carol" and lines["req_header_both"]["user"] == "header-dave"


async def test_the_body_field_is_ignored_when_only_the_header_is_a_source(mock: Proc, tmp_path: Path) -> None:
    with gateway_process(_doc(mock, tmp_path / "access.log", {"from": ["header"], "header": HEADER})) as gw:
        async with aiohttp.ClientSession() as s:
            # Three different body users are one caller without an end user here.
            body_only = [await _chat(s, gw, user=f"ignored-{i}") for i in range(LIMIT + 1)]
            by_header = await _chat(s, gw, user="ignored-0", headers={HEADER: "erin"})
    assert [status for status, _, _ in body_only] == [200] * LIMIT + [429]
    assert by_header[0] == 200


async def test_a_jwt_user_claim_is_authoritative_over_body_and_header(gateway: Proc, log_path: Path) -> None:
    token = _token("jwt-frank")
    async with aiohttp.ClientSession() as s:
        # The client names a new end user in the body and the header each time: the token's sub counts all the same.
        results = [
            await _chat(
                s, gateway, key=token, user=f"jwt-body-{i}", headers={HEADER: f"jwt-header-{i}"}, rid=f"req_jwt_{i}"
            )
            for i in range(LIMIT + 1)
        ]
        # A token without a user claim: the body's user counts, as for an API key.
        no_claim = await _chat(s, gateway, key=_token(None), user="jwt-grace", rid="req_jwt_noclaim")
    assert [status for status, _, _ in results] == [200] * LIMIT + [429]
    assert no_claim[0] == 200 and no_claim[2]["x-ratelimit-remaining-requests"] == str(LIMIT - 1)
    lines = await _log_lines(log_path, {"req_jwt_0", "req_jwt_1", "req_jwt_noclaim"})
    assert [lines[f"req_jwt_{i}"]["user"] for i in range(2)] == ["jwt-frank", "jwt-frank"]
    assert lines["req_jwt_noclaim"]["user"] == "jwt-grace"


async def test_a_forged_body_user_cannot_change_the_tenant(gateway: Proc, log_path: Path) -> None:
    async with aiohttp.ClientSession() as s:
        # acme's key with end users that look like another tenant, its key id, or a counter key of it
        forged = ["globex", "globex-main", "{t.globex}", "t.globex:user=-"]
        results = [await _chat(s, gateway, user=u, rid=f"req_forged_{i}") for i, u in enumerate(forged)]
        # globex's own end user "globex" still has its whole limit
        status, _, headers = await _chat(s, gateway, key=GLOBEX_KEY, user="globex")
    assert [st for st, _, _ in results] == [200] * len(forged)
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == str(LIMIT - 1)
    lines = await _log_lines(log_path, {f"req_forged_{i}" for i in range(len(forged))})
    assert {(line["tenant"], line["key_id"]) for line in lines.values()} == {("acme", "acme-main")}
    assert sorted(line["user"] for line in lines.values()) == sorted(forged)


@pytest.mark.parametrize(
    ("user", "code", "text"),
    [
        ("x" * 257, "string_above_max_length", "maximum length 256, but got a string with length 257"),
        ("bad\nuser", "invalid_value", "control character"),
        ("bad\u2028user", "invalid_value", "control character"),
        (12345, "invalid_type", "expected a string, but got an integer"),
        (["a"], "invalid_type", "expected a string, but got an array"),
    ],
)
async def test_a_bad_body_user_is_a_400_naming_the_field(
    gateway: Proc, mock: Proc, user: Any, code: str, text: str
) -> None:
    async with aiohttp.ClientSession() as s:
        status, body, _ = await _chat(s, gateway, user=user)
    assert status == 400
    error = body["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, "user")
    assert text in error["message"] and "'user'" in error["message"]


async def test_the_longest_allowed_end_user_passes(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        status, _, _ = await _chat(s, gateway, user="é" * 256)  # characters, not bytes
    assert status == 200


async def _raw_post(gw: Proc, extra_header: bytes) -> tuple[int, dict[str, Any]]:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        + f"Authorization: Bearer {ACME_KEY}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
        + extra_header
        + b"\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(head + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), orjson.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.parametrize(
    ("value", "code"),
    [(b"\xff\xfe-not-utf8", "invalid_value"), (b"tab\there", "invalid_value"), (b"y" * 300, "string_above_max_length")],
)
async def test_a_bad_header_end_user_is_a_400_naming_the_header(gateway: Proc, value: bytes, code: str) -> None:
    status, body = await _raw_post(gateway, HEADER.encode() + b": " + value)
    assert status == 400
    assert (body["error"]["code"], body["error"]["param"]) == (code, HEADER)
    assert HEADER in body["error"]["message"]


async def test_an_unauthenticated_request_is_401_whatever_its_end_user(gateway: Proc) -> None:
    async with aiohttp.ClientSession() as s:
        status, body, _ = await _chat(s, gateway, key="tg_not-a-key-0123456789abcdef", user="x" * 1000)
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
