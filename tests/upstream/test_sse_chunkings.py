"""Random streams cut at random: whatever the chunks, the parser relays the same bytes, asks the monitor the same
things, and ends with the same counts, as when every event is parsed and fed one at a time.

A stream mixes what upstreams send: LF or CRLF lines, comments, ``event:`` and ``id:`` lines, data split over
lines, chat chunks of the learned shape (with and without a varying padding member), chunks that differ from it,
contents that need unescaping, a usage event the monitor drops, one whose data it replaces, a hold and resume, an
end of the stream, a malformed event, ``[DONE]`` with or without its blank line."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson

from tests.upstream.chat_chunks import COMMON
from tollgate.upstream.sse import DROP, HOLD, PASS, EndStream, SseParser

_WORDS = ["Hi", " there", " wörld", " 日本", "", " a", "x" * 30, " " + "é" * 20]
_WORDS += ['say "hi"', "tab\there", " back\\slash"]  # contents that need unescaping: parsed


def _content_of(doc: Any) -> str | None:
    """The content of a chat chunk whose one choice's delta is only a ``content``: what on_content stands for."""
    if type(doc) is not dict or doc.get("usage") is not None:
        return None
    choices = doc.get("choices")
    if type(choices) is not list or len(choices) != 1 or type(choices[0]) is not dict:
        return None
    choice = choices[0]
    delta = choice.get("delta")
    if choice.get("finish_reason") is not None or type(delta) is not dict or list(delta) != ["content"]:
        return None
    return delta["content"] if type(delta["content"]) is str else None


class Judge:
    """Judges a content by its length in characters, whether the parser parsed its chunk (``on_event``) or judged
    it on its length (``on_content``, when ``chat_chunks``): the same verdicts either way. Holds the ``hold_at``-th
    content once and ends the stream at the ``end_at``-th; drops usage, replaces the data of an event asking so."""

    def __init__(self, chat_chunks: bool, hold_at: int, end_at: int) -> None:
        self.chat_chunks = chat_chunks
        self.hold_at = hold_at
        self.end_at = end_at
        self.asked: list[Any] = []  # every question and its verdict, in order
        self.judged = 0  # contents judged without their chunk being parsed

    def on_event(self, doc: Any) -> int | bytes | EndStream:
        content = _content_of(doc)
        if content is not None:
            return self._content(len(content)) if content else PASS
        if doc.get("usage"):
            verdict: int | bytes = DROP
        elif "replace" in doc:
            verdict = orjson.dumps({"replaced": doc["replace"]})
        else:
            verdict = PASS
        self.asked.append((doc, verdict))
        return verdict

    def on_content(self, chars: int) -> int | EndStream:
        self.judged += 1
        return self._content(chars)

    def _content(self, chars: int) -> int | EndStream:
        n = len(self.asked)
        verdict: int | EndStream = PASS
        if n == self.hold_at:
            verdict = HOLD
        elif n == self.end_at:
            verdict = EndStream("the token budget is exhausted", "token_budget_exceeded")
        self.asked.append((chars, verdict if type(verdict) is int else "end"))
        return verdict

    async def cover(self) -> None:
        return None

    def on_end(self, outcome: str) -> None:
        return None


def _stream(rng: random.Random) -> tuple[list[bytes], bytes]:
    """A random stream's events (each with its separator) and its separator."""
    nl = b"\r\n" if rng.random() < 0.3 else b"\n"
    sep = nl + nl
    padded = rng.random() < 0.4
    spaced = rng.random() < 0.2  # JSON written with spaces after its commas and colons, not as orjson writes it

    def data(doc: dict[str, Any]) -> bytes:
        return b"data: " + (json.dumps(doc, ensure_ascii=False).encode() if spaced else orjson.dumps(doc))

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        doc = {**COMMON, "choices": [choice], "usage": None, **extra}
        if padded:
            doc["obfuscation"] = "".join(rng.choice("abcXYZ019") for _ in range(rng.randint(1, 12)))
        return doc

    events = [data(chunk({"role": "assistant", "content": ""}))]
    for _ in range(rng.randint(0, 25)):
        kind = rng.random()
        if kind < 0.6:
            events.append(data(chunk({"content": rng.choice(_WORDS)})))
        elif kind < 0.65:  # other members than the learned shape's
            events.append(data(chunk({"content": rng.choice(_WORDS)}, system_fingerprint="fp_other")))
        elif kind < 0.7 and padded:  # a padding that needs unescaping
            doc = chunk({"content": "pad"})
            doc["obfuscation"] = 'q"uote'
            events.append(data(doc))
        elif kind < 0.75:
            events.append(b": keep-alive")
        elif kind < 0.8:
            events.append(b"event: message" + nl + b"id: 7" + nl + data(chunk({"content": rng.choice(_WORDS)})))
        elif kind < 0.85:  # data split over two lines
            text = data(chunk({"content": rng.choice(_WORDS)}))[6:]
            cut = text.index(b",") + 1
            events.append(b"data: " + text[:cut] + nl + b"data: " + text[cut:])
        elif kind < 0.87:
            events.append(b"event: note" + nl + data({"replace": rng.randint(0, 9)}))
        elif kind < 0.9:  # a data line of JSON, then another line
            doc = {"replace": 1} if rng.random() < 0.5 else chunk({"content": rng.choice(_WORDS)})
            events.append(data(doc) + nl + b"id: 9")
        elif kind < 0.93:  # a content chunk whose bytes are not UTF-8: malformed, however it is read
            events.append(data(chunk({"content": "zz"})).replace(b'"zz"', b'"z\xffz"'))
        else:
            events.append(data(chunk({}, "stop")))
    if rng.random() < 0.5:
        events.append(data({**COMMON, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}))
    events.append(b"data: [DONE]")
    # Some events followed by one more blank line (not the last: a blank line alone at the end is not relayed).
    events = [e + sep + (nl if rng.random() < 0.1 else b"") for e in events[:-1]] + [events[-1] + sep]
    if rng.random() < 0.2:
        events[-1] = events[-1].rstrip(b"\r\n")  # the last event without its blank line: flushed
    return events, sep


def _run(pieces: list[bytes], judge: Judge, rng: random.Random | None) -> tuple[Any, ...]:
    """The relay's loop over ``pieces``: what the client gets; with ``rng``, a held event sometimes waits while
    more pieces arrive."""
    parser = SseParser(judge)
    out: list[bytes] = []
    i = 0
    while i < len(pieces) and parser.stop is None:
        out.append(parser.feed(pieces[i]))
        i += 1
        while parser.holding and parser.stop is None:
            if rng is not None and i < len(pieces) and rng.random() < 0.5:
                out.append(parser.feed(pieces[i]))  # arrives while held: kept for resume()
                i += 1
            else:
                out.append(parser.resume())
    if parser.stop is None:
        out.append(parser.flush())
        while parser.holding:
            out.append(parser.resume())
    # After a stop the relay reads no more: what the parser kept of a later event does not matter.
    pending = parser.pending if parser.stop is None else None
    return b"".join(out), judge.asked, parser.events, parser.done, parser.stop, parser.holding, pending


def _reference(events: list[bytes], sep: bytes, judge: Judge) -> tuple[Any, ...]:
    """What the parser must relay, from the stream's events one by one, every one parsed: the events as they came,
    but for a dropped one, one whose data was replaced (its other lines kept, the data line last), and the events
    from a malformed one or a monitor's end of the stream on. A blank line more between events passes."""
    nl = sep[: len(sep) // 2]
    text = b"".join(events)
    if not text.endswith(sep):
        text += sep  # flushed
    out: list[bytes] = []
    count, done, stop = 0, False, None
    for event in text.split(sep)[:-1]:
        while event.startswith(nl):
            out.append(nl)
            event = event[len(nl) :]
        lines = event.split(nl)
        data = b"\n".join(line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:"))
        done = done or data == b"[DONE]"
        if not data or data == b"[DONE]":
            out.append(event + sep)
            continue
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            stop = ("upstream sent a malformed stream event", "upstream_malformed_event")
            break
        verdict = judge.on_event(doc)
        while verdict == HOLD:
            verdict = judge.on_event(doc)
        count += 1
        if type(verdict) is EndStream:
            stop = (verdict.message, verdict.code)
            break
        if type(verdict) is bytes:
            out.append(nl.join([line for line in lines if not line.startswith(b"data:")] + [b"data: " + verdict]) + sep)
        elif verdict == PASS:
            out.append(event + sep)
    return b"".join(out), judge.asked, count, done, stop


def _cuts(rng: random.Random, events: list[bytes]) -> list[bytes]:
    """The stream cut at random: anywhere, or between events, several events a piece."""
    whole = b"".join(events)
    if rng.random() < 0.5:
        pieces, at = [], 0
        while at < len(events):
            size = rng.randint(1, 6)
            pieces.append(b"".join(events[at : at + size]))
            at += size
        return pieces
    points = sorted(rng.sample(range(1, len(whole)), min(len(whole) - 1, rng.randint(1, 12))))
    return [whole[a:b] for a, b in zip([0, *points], [*points, len(whole)], strict=True)]


def test_any_chunking_relays_and_judges_as_one_event_at_a_time_with_every_event_parsed() -> None:
    judged = multi = 0
    for seed in range(300):
        rng = random.Random(seed)
        events, sep = _stream(rng)
        hold_at, end_at = rng.randint(0, 30), rng.choice([-1, -1, rng.randint(0, 30)])
        expected = _run(events, Judge(False, hold_at, end_at), None)
        reference = _reference(events, sep, Judge(False, hold_at, end_at))
        differ = [i for i, (a, b) in enumerate(zip(reference, expected[:5], strict=True)) if a != b]
        assert not differ, f"seed {seed}, one event at a time: fields {differ} differ from the reference"
        whole = b"".join(events)
        shapes = [[whole], [whole[i : i + 1] for i in range(len(whole))], events]
        shapes += [_cuts(rng, events) for _ in range(6)]
        for shape, pieces in enumerate(shapes):
            for chat_chunks in (True, False):
                judge = Judge(chat_chunks, hold_at, end_at)
                got = _run(pieces, judge, rng)
                differ = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
                assert not differ, f"seed {seed}, shape {shape}, chat_chunks {chat_chunks}: fields {differ} differ"
                judged += judge.judged
                multi += judge.judged and any(p.count(sep) > 1 for p in pieces)
    # The chunks were judged on their content's length, in pieces of several events too: the paths compared ran.
    assert judged > 5_000 and multi > 1_000


def test_the_learned_path_relays_the_stream_s_bytes_unchanged() -> None:
    # Nothing dropped, held or replaced: the client gets the upstream's bytes as they came, whatever the cuts.
    rng = random.Random(7)
    judged = 0
    for _ in range(50):
        events, sep = _stream(rng)
        events = [e for e in events if b"replace" not in e and b"prompt_tokens" not in e and b"\xff" not in e]
        if not events[-1].endswith(sep):
            events[-1] += sep
        judge = Judge(True, -1, -1)
        out = _run(_cuts(rng, events), judge, rng)
        same = out[0] == b"".join(events)
        assert same and out[4] is None
        judged += judge.judged
    assert judged > 100


def test_chunks_written_with_spaces_are_learned_as_compact_ones_are() -> None:
    # orjson writes compact JSON; another writer's spaces make the learning parse its proof instead of writing it.
    for compact in (True, False):
        docs = [{**COMMON, "choices": [{"delta": {"content": w}}]} for w in "abcd"]
        texts = [orjson.dumps(doc) if compact else json.dumps(doc).encode() for doc in docs]
        events = [b"data: " + text + b"\n\n" for text in texts]
        judge = Judge(True, -1, -1)
        assert _run(events, judge, None)[0] == b"".join(events) and judge.judged == 3
