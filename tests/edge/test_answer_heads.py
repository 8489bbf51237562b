"""An answer's head as the server writes it: a CR, LF or NUL anywhere in a header name or value is never sent (a JSON
500 that closes the connection instead), however often the name was seen before, and a sound head is written as is."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from tollgate.edge.messages import Body, Request
from tollgate.edge.server import HttpServer, _Connection


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def _write(headers: Any) -> tuple[bytes, dict[str, str], bytes, bool]:
    """``headers`` written by one connection after a sound answer with the same names: status line, headers, body,
    and whether the connection is to close."""
    conn = _Connection(HttpServer(_handler))
    transport = _Transport()
    conn.transport = transport  # type: ignore[assignment]
    # The request being answered: HTTP/1.1, keep-alive, its body all read.
    asked = CIMultiDictProxy(CIMultiDict({"Host": "gateway"}))
    conn._serving = Request("GET", "/", "", 1, asked, (), transport, None, False, True, Body(conn, True, False))  # type: ignore[arg-type]
    names = [name for name, _ in (headers.items() if isinstance(headers, dict) else headers)]
    conn.write_head(200, [(name, "sound") for name in names if _sound(name)], None, body=b"{}", length=2)
    conn.write_head(200, headers, None, body=b"{}", length=2)
    head, _, body = transport.written[-1].partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines)
    return status.encode(), fields, body, conn.closing


async def _handler(request: Any) -> Any:
    raise AssertionError("not called")


def _sound(text: str) -> bool:
    return not any(c in text for c in "\r\n\x00")


async def test_a_sound_head_is_written_line_by_line_with_its_framing() -> None:
    status, fields, body, closing = _write({"Content-Type": "application/json", "X-Id": "r1", "content-length": "9"})
    assert status == b"HTTP/1.1 200 OK" and body == b"{}" and not closing
    assert {k: v for k, v in fields.items() if k != "Date"} == {
        "Content-Type": "application/json",
        "X-Id": "r1",
        "Content-Length": "2",
    }


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Bad": "a\r\nSet-Cookie: stolen=1"},
        {"X-Bad": "a\rb"},
        {"X-Bad": "a\nb"},
        {"X-Bad": "a\x00b"},
        {"X-Ok": "fine", "X-Bad\r\nSet-Cookie": "stolen=1"},
        {"X-Bad\n": "v"},
        {"X-Bad\x00": "v"},
        [("Content-Length", "1\r\n"), ("X-Bad", "\n")],  # past a framing header the server drops
    ],
    ids=["crlf-value", "cr-value", "lf-value", "nul-value", "crlf-name", "lf-name", "nul-name", "after-framing"],
)
async def test_a_line_break_or_nul_in_a_name_or_value_is_a_json_500_that_closes(headers: Any) -> None:
    status, fields, body, closing = _write(headers)
    assert status == b"HTTP/1.1 500 Internal Server Error" and closing and fields["Connection"] == "close"
    assert "Set-Cookie" not in fields and orjson.loads(body)["error"]["code"] == "internal_error"
