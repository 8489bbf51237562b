"""Request ids the gateway makes: ``req_`` and 24 lower-case hex digits (96 random bits), never repeated."""

from __future__ import annotations

import os
import re

import pytest

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


@pytest.mark.process
def test_a_forked_process_draws_its_own_ids_not_those_its_parent_drew_ahead() -> None:
    new_request_id()  # the parent has ids drawn ahead of their use
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, to the parent
        try:
            os.write(write, new_request_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    theirs = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    ours = [new_request_id() for _ in range(300)]  # past the parent's batch
    assert _MADE.fullmatch(theirs) and theirs not in ours
