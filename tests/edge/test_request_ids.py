"""Request ids the gateway makes: ``req_`` and 24 lower-case hex digits (96 random bits), never repeated."""

from __future__ import annotations

import re

from tollgate.edge.answers import new_request_id, request_id_from

_MADE = re.compile(r"req_[0-9a-f]{24}")


def test_a_made_request_id_is_req_and_24_hex_digits_and_ids_do_not_repeat() -> None:
    ids = [new_request_id() for _ in range(5000)]
    assert all(_MADE.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)
    # Leading zero bits keep their digits: every position takes every hex digit over enough ids.
    assert all(len({i[4 + k] for i in ids}) == 16 for k in range(24))


def test_a_clients_well_formed_id_is_kept_and_a_malformed_one_replaced() -> None:
    assert request_id_from("client-id_1.2:3") == "client-id_1.2:3"
    replaced = request_id_from("bad id with spaces")
    assert _MADE.fullmatch(replaced)
    assert _MADE.fullmatch(request_id_from(None))
