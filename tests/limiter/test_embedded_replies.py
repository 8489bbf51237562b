"""The embedded engine hands a script's reply back as Redis does, whichever of its two array paths it takes."""

from __future__ import annotations

import pytest
import redis

from tests.support.redis import RedisServer
from tollgate.clock import ManualClock
from tollgate.limiter.store import EmbeddedEngine, Script

# Replies of every shape a script can return: the all-integer arrays the limiter scripts return take the
# engine's fast path; the others are converted item by item. Redis' answer to the same source is the reference.
REPLIES = {
    "integers": "return {1, 0, -7, 1700000000123}",
    "empty array": "return {}",
    "a fraction": "return {1, 2.5, -2.5}",
    "a string": "return {1, 'a', 3}",
    "booleans": "return {1, true, false, 4}",
    "past 2^53": "return {2^60, -(2^60)}",
    "nested": "return {1, {2, 'b'}, 3}",
    "a number": "return 7.9",
    "a plain string": "return 'x'",
    "a status": "return {ok = 'DONE'}",
}


@pytest.mark.parametrize("source", REPLIES.values(), ids=REPLIES.keys())
def test_a_script_reply_comes_back_as_redis_sends_it(redis_standalone: RedisServer, source: str) -> None:
    client = redis.Redis(port=redis_standalone.port)
    try:
        expected = client.eval(source, 0)
    finally:
        client.close()
    engine = EmbeddedEngine(ManualClock(), scripts={"probe": Script("probe", source, "", "", source)})
    got = engine.run_sync("probe", [], [])
    if isinstance(expected, bytes) and source == "return {ok = 'DONE'}":
        expected = b"DONE"  # redis-py hands a status as bytes too
    assert got == expected
    assert (
        [type(x) for x in got] == [type(x) for x in expected] if isinstance(got, list) else type(got) is type(expected)
    )
