"""The embedded keyspace answers each command the scripts use exactly as Redis 7 does (checked against a real server)."""

from __future__ import annotations

import random
import socket

import hiredis
import pytest

from tests.support.redis import RedisServer
from tollgate.limiter.store.keyspace import Keyspace, ReplyError, Status

NOW_NS = 1_700_000_000_123_456_789

# (command, args) sequences whose every reply must match Redis; no TIME-dependent expiry in them.
SEQUENCES = [
    [
        ("GET", "s"),
        ("SET", "s", "10"),
        ("GET", "s"),
        ("SET", "s", "11", "PX", "60000"),
        ("GET", "s"),
        ("DEL", "s", "nope"),
        ("GET", "s"),
    ],
    [
        ("PTTL", "s"),
        ("SET", "s", "1"),
        ("PTTL", "s"),
        ("PEXPIRE", "s", "5000"),
        ("PEXPIRE", "nope", "5"),
        ("PEXPIRE", "s", "0"),
        ("GET", "s"),
    ],
    [
        ("HSET", "h", "w", "1", "n", "2"),
        ("HSET", "h", "n", "3"),
        ("HMGET", "h", "w", "n", "x"),
        ("HMGET", "h", "n"),
        ("HMGET", "h", "x"),
        ("HINCRBY", "h", "n", "-5"),
        ("HINCRBY", "h", "z", "7"),
        ("HDEL", "h", "w", "x"),
        ("HGETALL", "h"),
        ("HDEL", "h", "n", "z"),
        ("HGETALL", "h"),
        ("HMGET", "h", "a"),
    ],
    [
        ("ZADD", "z", "10", "a", "20", "b"),
        ("ZADD", "z", "XX", "30", "a", "5", "c"),
        ("ZSCORE", "z", "a"),
        ("ZSCORE", "z", "c"),
        ("ZCOUNT", "z", "(10", "+inf"),
        ("ZCOUNT", "z", "-inf", "20"),
        ("ZADD", "z", "1700000000123", "d"),
        ("ZRANGEBYSCORE", "z", "(20", "+inf", "WITHSCORES", "LIMIT", "0", "1"),
        ("ZRANGEBYSCORE", "z", "-inf", "+inf"),
        ("ZRANGE", "z", "0", "0", "WITHSCORES"),
        ("ZRANGE", "z", "0", "-1", "WITHSCORES"),
        ("ZRANGE", "z", "1", "2"),
        ("ZRANGE", "z", "-2", "-1", "WITHSCORES"),
        ("ZRANGE", "z", "5", "9"),
        ("ZRANGE", "nope", "0", "0", "WITHSCORES"),
        ("ZCARD", "z"),
        ("ZCARD", "nope"),
        ("ZREMRANGEBYSCORE", "z", "-inf", "20"),
        ("ZREM", "z", "a", "nope"),
        ("ZCOUNT", "z", "-inf", "+inf"),
        ("ZREM", "z", "d"),
        ("ZCOUNT", "z", "-inf", "+inf"),
    ],
    [("SET", "k", "x"), ("HMGET", "k", "f"), ("ZADD", "k", "1", "m"), ("HSET", "k", "f", "v")],  # WRONGTYPE
]


class RawConnection:
    """RESP2 over a plain socket, parsed by hiredis: replies exactly as Redis sends them (no client conversions)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.reader = hiredis.Reader()

    def call(self, *args: str):  # type: ignore[no-untyped-def]
        parts = [f"*{len(args)}\r\n".encode()]
        for a in args:
            data = a.encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))
        while True:
            reply = self.reader.gets()
            if reply is not False:
                return reply
            self.reader.feed(self.sock.recv(65536))

    def close(self) -> None:
        self.sock.close()


def _redis_reply(conn: RawConnection, args):  # type: ignore[no-untyped-def]
    reply = conn.call(*args)
    if isinstance(reply, hiredis.ReplyError):
        return ("error", str(reply).split(" ")[0])
    return _norm(reply)


def _norm(reply):  # type: ignore[no-untyped-def]
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, list):
        return [_norm(r) for r in reply]
    return reply


def _keyspace_reply(ks: Keyspace, args):  # type: ignore[no-untyped-def]
    try:
        reply = ks.call(*args)
    except ReplyError as exc:
        return ("error", str(exc).split(" ")[0])
    if isinstance(reply, Status):
        return str(reply)
    return reply


@pytest.mark.parametrize("sequence", SEQUENCES, ids=["string", "ttl", "hash", "zset", "wrongtype"])
def test_each_command_replies_like_redis(redis_standalone: RedisServer, sequence: list[tuple[str, ...]]) -> None:
    redis_standalone.flushall()
    ks = Keyspace()
    ks.begin(NOW_NS)
    conn = RawConnection(redis_standalone.port)
    try:
        for args in sequence:
            expected = _redis_reply(conn, args)
            got = _keyspace_reply(ks, args)
            if args[0] == "PTTL" and isinstance(expected, int) and expected > 0:
                assert 0 < got <= 5000 and expected <= 5000  # Redis' clock moved on; ours is frozen
                continue
            assert got == expected, args
    finally:
        conn.close()


def _random_zset_op(rng: random.Random) -> tuple[str, ...]:
    """A sorted-set command over few members and few scores, so that ties and a moving minimum are common."""
    member = lambda: rng.choice("abcdef")  # noqa: E731
    score = lambda: str(rng.randint(0, 6))  # noqa: E731
    bound = lambda: rng.choice(["-inf", "+inf", score(), "(" + score()])  # noqa: E731
    kinds = [
        "ZADD",
        "ZADD",
        "ZADD1",
        "ZADDXX",
        "ZREM",
        "ZREMRANGEBYSCORE",
        "ZCOUNT",
        "ZCOUNT",
        "ZFIRST",
        "ZRANGEBYSCORE",
    ]
    kind = rng.choice([*kinds, "ZLOWEST", "ZCARD", "ZRANGE"])
    if kind == "ZADD":
        return ("ZADD", "z", score(), member(), score(), member())
    if kind == "ZADD1":  # one pair, as the concurrency script adds a lease
        return ("ZADD", "z", score(), member())
    if kind == "ZADDXX":
        return ("ZADD", "z", "XX", score(), member())
    if kind == "ZREM":
        return ("ZREM", "z", member())
    if kind == "ZREMRANGEBYSCORE":
        return ("ZREMRANGEBYSCORE", "z", rng.choice(["-inf", score()]), bound())
    if kind == "ZCOUNT":
        return ("ZCOUNT", "z", bound(), rng.choice(["+inf", bound()]))
    if kind == "ZLOWEST":  # what the concurrency script asks first: the lowest member, live or not
        return ("ZRANGE", "z", "0", "0", "WITHSCORES")
    if kind == "ZCARD":
        return ("ZCARD", "z")
    if kind == "ZRANGE":
        return ("ZRANGE", "z", str(rng.randint(-3, 3)), str(rng.randint(-3, 3)), "WITHSCORES")
    if kind == "ZFIRST":  # the earliest live lease, when expired ones are still held
        return ("ZRANGEBYSCORE", "z", bound(), "+inf", "WITHSCORES", "LIMIT", "0", "1")
    return ("ZRANGEBYSCORE", "z", "-inf", "+inf", "WITHSCORES")


@pytest.mark.parametrize("seed", range(4))
def test_sorted_set_replies_match_redis_over_random_commands(redis_standalone: RedisServer, seed: int) -> None:
    """The keyspace caches a sorted set's lowest member; any command sequence must still reply as Redis does."""
    redis_standalone.flushall()
    rng = random.Random(seed)
    ks = Keyspace()
    ks.begin(NOW_NS)
    conn = RawConnection(redis_standalone.port)
    try:
        for step in range(600):
            args = _random_zset_op(rng)
            assert _keyspace_reply(ks, args) == _redis_reply(conn, args), (step, args)
    finally:
        conn.close()


def test_keys_expire_when_the_clock_passes_their_ttl() -> None:
    ks = Keyspace()
    ks.begin(NOW_NS)
    ks.call("SET", "a", "1", "PX", "100")
    ks.call("HSET", "b", "f", "1")
    ks.call("PEXPIRE", "b", "200")
    ks.begin(NOW_NS + 99_000_000)
    assert ks.call("GET", "a") == "1" and ks.ttl_ms("a") == 1
    ks.begin(NOW_NS + 100_000_000)
    assert ks.call("GET", "a") is None and len(ks) == 1
    ks.begin(NOW_NS + 250_000_000)
    assert len(ks) == 0


def test_an_unknown_command_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ReplyError, match="not implemented by the embedded keyspace"):
        Keyspace().call("INCR", "x")


def test_time_answers_seconds_and_microseconds_of_the_frozen_clock() -> None:
    ks = Keyspace()
    ks.begin(NOW_NS)
    assert ks.call("TIME") == ["1700000000", "123456"]


def test_an_expired_key_reads_as_missing_before_the_sweep_reaches_it() -> None:
    ks = Keyspace()
    ks.begin(NOW_NS)
    for i in range(500):
        ks.call("SET", f"k{i}", "1", "PX", "100")
    ks.begin(NOW_NS + 100_000_000)  # one sweep step: far fewer than 500 keys
    assert ks.table.held()[0] > 0
    assert ks.call("GET", "k499") is None and ks.call("PTTL", "k498") == -2 and ks.call("DEL", "k497") == 0


def test_the_sweep_frees_expired_keys_that_are_never_read_again() -> None:
    ks = Keyspace()
    ks.begin(NOW_NS)
    for i in range(5_000):
        ks.call("HSET", f"h{i}", "f", "1")
        ks.call("PEXPIRE", f"h{i}", str(1 + i % 50))
    for step in range(1, 200):  # scripts keep running; nobody reads the old keys
        ks.begin(NOW_NS + step * 1_000_000)
    assert ks.table.held() == (0, 0)


def test_a_key_whose_ttl_keeps_moving_holds_one_heap_entry() -> None:
    ks = Keyspace()
    for i in range(10_000):
        ks.begin(NOW_NS + i * 1_000_000)
        ks.call("SET", "tat", str(i), "PX", "60000")  # later every time
        if i % 3:
            ks.call("PEXPIRE", "quota", "5000")  # the same expiry again and again
        else:
            ks.call("HSET", "quota", "n", str(i))
    keys, heap = ks.table.held()
    assert keys == 2 and heap <= 4
    ks.begin(NOW_NS + 10_000 * 1_000_000 + 60_000 * 1_000_000)
    assert len(ks) == 0 and ks.table.held() == (0, 0)


def test_numbers_reach_the_keyspace_as_redis_formats_them() -> None:
    ks = Keyspace()
    ks.begin(NOW_NS)
    get = ks.lua.eval(
        "function(call) call('SET', 'a', 1700000000123456) call('HSET', 'h', 7, 2.5) "
        "call('ZADD', 'z', 1e20, 'm') return call('GET', 'a'), call('HMGET', 'h', '7')[1], call('ZSCORE', 'z', 'm') end"
    )
    assert get(ks.table.call) == ("1700000000123456", "2.5", "1e+20")
    with pytest.raises(ReplyError, match="not an integer"):
        ks.call("PEXPIRE", "a", "007")
    with pytest.raises(ReplyError, match="wrong number of arguments"):
        ks.call("GET", "a", "b")
