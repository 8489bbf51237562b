"""The gateway's ids of stored responses: they round-trip, and nothing else decodes as one."""

from __future__ import annotations

import base64

import orjson
import pytest

from tollgate.upstream.response_ids import PREFIX, gateway_id, relabel, stored_response
from tollgate.upstream.sse import PASS, SseParser


def test_a_gateway_id_names_its_upstream_tenant_and_the_upstreams_id() -> None:
    ident = gateway_id("east", "acme", "resp_0123abc")
    ref = stored_response(ident)
    assert ref is not None and (ref.upstream, ref.tenant, ref.id) == ("east", "acme", "resp_0123abc")
    assert ident.startswith(PREFIX) and "=" not in ident


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        "resp_0123abc",
        PREFIX,
        PREFIX + "!!!not base64",
        PREFIX + base64.urlsafe_b64encode(b"not json").decode(),
        PREFIX + base64.urlsafe_b64encode(orjson.dumps(["east", "acme"])).decode(),
        PREFIX + base64.urlsafe_b64encode(orjson.dumps(["east", "", "x"])).decode(),
        PREFIX + base64.urlsafe_b64encode(orjson.dumps({"a": 1})).decode(),
        PREFIX + "A" * 5000,
    ],
)
def test_anything_else_is_not_a_stored_response(value: object) -> None:
    assert stored_response(value) is None


def test_relabel_gives_a_response_and_the_previous_one_it_echoes_the_gateways_ids_once() -> None:
    response = {"id": "resp_new", "object": "response", "previous_response_id": "resp_old"}
    assert relabel(response, "west", "acme")
    assert response["id"] == gateway_id("west", "acme", "resp_new")
    assert response["previous_response_id"] == gateway_id("west", "acme", "resp_old")
    assert not relabel(response, "west", "acme")  # already the gateway's: unchanged
    assert not relabel({"object": "response"}, "west", "acme")


class _Rewriter:
    def on_event(self, data: object) -> int | bytes:
        return orjson.dumps({"rewritten": True}) if data == {"type": "response.created"} else PASS

    async def cover(self) -> None:
        return None

    def on_end(self, outcome: str) -> None:
        return None


def test_an_event_whose_data_a_monitor_replaces_keeps_its_event_line() -> None:
    parser = SseParser(_Rewriter(), frozenset({"response.completed"}))  # type: ignore[arg-type]
    out = parser.feed(
        b'event: response.created\ndata: {"type":"response.created"}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed"}\n\n'
    )
    assert out == (
        b'event: response.created\ndata: {"rewritten":true}\n\n'
        b'event: response.completed\ndata: {"type":"response.completed"}\n\n'
    )
    assert parser.done  # the dialect's terminal event ended the stream
