"""Reading YAML fast where a large section is written one flow-style entry per line, with PyYAML's result.

A file of 100,000 tenants is mostly lines like ``  t1: {plan: bench, keys: [{id: k1, sha256: "..."}]}``.
PyYAML makes a node, two marks and a resolver call for every scalar of them: seconds per 100,000 lines
even on libyaml. Such a line is JSON once its plain scalars are written as JSON, so a top-level section
of many lines is read here line by line with orjson, every plain scalar resolved and built by PyYAML's
own resolver and constructor (``yes`` is still ``True``, ``0x1f`` still 31, ``k1`` a string). The rest
of the file, with that section's lines left out, goes to PyYAML.

Only a narrow form is taken: each line ``<indent><key>: <flow or scalar>`` on its own, the same indent
throughout, plain scalars of letters, digits and ``_.+/@-``, quoted strings without escapes, comments.
A section in block style (mappings and sequences by indentation, each value a scalar or a flow collection
on the line of its key or dash) is first written that way, one entry per line, its scalars as they are.
Anything else (anchors, tags, flows or scalars over several lines, escapes, unusual characters) leaves
the whole file to PyYAML: the same document, only slower, and the same error messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator
from typing import Any

import orjson
import yaml
from yaml.nodes import ScalarNode

__all__ = ["MIN_LINES", "FlowSection", "NotJson", "load_yaml", "read_flow_lines"]

# Sections shorter than this are left to PyYAML (the fast path pays only on large ones).
MIN_LINES = 256

_PLAIN_CHARS = "A-Za-z0-9_.+/@-"
_PLAIN = rf"[A-Za-z0-9_][{_PLAIN_CHARS}]*+"
_DQ = r'"[^"\\\x00-\x1f\x7f-\x9f]*+"'
_SQ = r"'[^'\x00-\x1f\x7f-\x9f]*+'"
_SCALAR = f"(?:{_DQ}|{_SQ}|{_PLAIN}(?![{_PLAIN_CHARS}]))"
_DEPTH = 4  # flow collections nested deeper than this leave the file to PyYAML


def _flow_value(depth: int) -> str:
    """A flow value nested at most ``depth`` deep, on one line: the pattern ensures it is one value, whole."""
    inner = _SCALAR
    for _level in range(depth):
        mapping = rf"\{{ *(?:{_SCALAR}: +{inner} *(?:, *|(?=\}})))*+\}}"
        sequence = rf"\[ *(?:{inner} *(?:, *|(?=\])))*+\]"
        inner = f"(?:{_SCALAR}|{mapping}|{sequence})"
    return inner


# One line of the section: an entry (kept, without its comment) or a blank or comment line (dropped).
_LINE = rf"^( +{_SCALAR}: +{_flow_value(_DEPTH)}) *(?: #.*)?$|^ *(?:#.*)?$"
_ENTRY_LINES: dict[int, re.Pattern[str]] = {}
_FIRST_INDENT = re.compile(r"^( +)[^ \n#]", re.MULTILINE)
_DQ_SPLIT = re.compile(f"({_DQ})")
_PLAIN_SPLIT = re.compile(f"({_PLAIN})")
_TOKEN = re.compile(f"{_DQ}|{_SQ}|{_PLAIN}")
# Plain scalars PyYAML might resolve to something else than a string: those that start with a digit, and the
# words of its bool and null resolvers; every other implicit resolver wants a sign, dot or symbol first.
_NOT_STR_WORDS = frozenset(
    form
    for word in ("yes", "no", "true", "false", "on", "off", "null")
    for form in (word, word.capitalize(), word.upper())
)
# A top-level key alone on its line, and a line's first character at column 0 (neither blank nor a comment). Each is
# found after a line feed, and at the text's start apart: a pattern that starts with a "\n" is searched for as that
# character, ten times faster over a large file than "^" tried at every position.
_TOP_KEY_LINE = r"([A-Za-z_][A-Za-z0-9_-]*):[ ]*(?:#.*)?$"
_TOP_KEY_FIRST = re.compile(_TOP_KEY_LINE, re.MULTILINE)
_TOP_KEY = re.compile("\n" + _TOP_KEY_LINE, re.MULTILINE)
_COLUMN0_FIRST = re.compile(r"[^\s#]")
_COLUMN0 = re.compile(r"\n[^\s#]")
# Characters YAML refuses anywhere in a file (libyaml's reader): such a file is left to PyYAML to refuse.
_NOT_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PRINTABLE_ASCII = bytes([0x09, 0x0A, 0x0D, *range(0x20, 0x7F)])
_INT_BOUND = 2**63


def _entry_lines(indent: int) -> re.Pattern[str]:
    pattern = _ENTRY_LINES.get(indent)
    if pattern is None:
        pattern = _ENTRY_LINES[indent] = re.compile(_LINE.replace("( +", f"( {{{indent}}}", 1), re.MULTILINE)
    return pattern


class _NotFlowLines(Exception):
    """The section is not in the narrow form: PyYAML reads it."""


class _Scalars:
    """Plain scalars as JSON text, resolved as PyYAML resolves them, each distinct one once."""

    def __init__(self) -> None:
        self._loader = yaml.SafeLoader("")
        self._json: dict[str, str] = {}

    def convert(self, m: re.Match[str]) -> str:
        token = m.group()
        first = token[0]
        if first == '"':
            return token
        if first == "'":
            return orjson.dumps(token[1:-1]).decode()
        known = self._json.get(token)
        if known is None:
            known = self._json[token] = self._plain(token)
        return known

    def _plain(self, token: str) -> str:
        loader = self._loader
        tag = loader.resolve(ScalarNode, token, (True, False))  # type: ignore[no-untyped-call]
        if tag == "tag:yaml.org,2002:str":
            return f'"{token}"'
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"):
            if tag == "tag:yaml.org,2002:null":
                return "null"
            raise _NotFlowLines(f"plain scalar {token!r} is a {tag}")
        value = loader.yaml_constructors[tag](loader, ScalarNode(tag, token))
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            if not -_INT_BOUND < value < _INT_BOUND:
                raise _NotFlowLines(f"integer {token!r} out of range")
            return str(value)
        if not isinstance(value, float) or value != value or value in (float("inf"), float("-inf")):
            raise _NotFlowLines(f"plain scalar {token!r} is not a finite number")
        return repr(value)


# One line of a block-style section: its indent, a "- " (or several spaces after the dash) when it starts an item,
# then ``key:`` with a value or none, or a value alone (after a dash only); a comment (after a space) may end it,
# or be all of it.
_VALUE = _flow_value(_DEPTH)
_BLOCK_LINES = re.compile(
    rf"^( *)(?:(- +)?(?:({_SCALAR}):(?: +({_VALUE}))?|({_VALUE}))?(?: +#.*| *)|#.*)$", re.MULTILINE
)
_BLOCK_START = re.compile(rf"^ +{_SCALAR}: *(?: #.*)?$", re.MULTILINE)


def _as_flow_lines(body: str) -> str:
    """``body`` itself when its first entry is written on one line; else (block style) the same entries written
    one flow entry per line, their scalars as they are (:func:`read_flow_lines` then checks and reads them)."""
    first = _FIRST_INDENT.search(body)
    if first is None:
        return body
    if _BLOCK_START.match(body, first.start()) is None:
        return body
    return _BlockSection(body).flow_lines(len(first.group(1)))


class _BlockSection:
    """A block-style section in a narrow form: mappings and sequences by indentation, each value a scalar or a flow
    collection on its line. Anything else (an item's value on the lines after its dash, a plain scalar over two lines,
    indentation that does not line up) is :class:`_NotFlowLines`."""

    __slots__ = ("cols", "keys", "n", "values")

    def __init__(self, body: str) -> None:
        # One token per item dash and per key or value: its column, its key (None: a dash, or a value alone), its value.
        cols: list[int] = []
        keys: list[str | None] = []
        values: list[str | None] = []
        lines = _BLOCK_LINES.findall(body)  # one match a line (a match never spans two): all, or some line is not
        if len(lines) != body.count("\n") + 1:
            raise _NotFlowLines("a line of the block section is outside the narrow form")
        for indent, dash, key, value, alone in lines:  # "" for a part the line has not
            col = len(indent)
            if dash:
                cols.append(col)
                keys.append(None)
                values.append(None)
                col += len(dash)
            if key:
                cols.append(col)
                keys.append(key)
                values.append(value or None)
            elif alone:
                if not dash:  # a plain scalar continued on this line, or a second value
                    raise _NotFlowLines("a value alone on its line")
                cols.append(col)
                keys.append(None)
                values.append(alone)
            elif dash:
                raise _NotFlowLines("an item's value on the lines after its dash")
        self.cols, self.keys, self.values, self.n = cols, keys, values, len(cols)

    def flow_lines(self, indent: int) -> str:
        """Each entry at ``indent`` as one line ``<indent><key>: <flow value>``."""
        lines: list[str] = []
        pad = " " * indent
        i = 0
        while i < self.n:
            key = self.keys[i]
            if key is None or self.cols[i] != indent:
                raise _NotFlowLines("an entry of the section is not at its indent")
            value, i = self._value_of(i, indent)
            lines.append(f"{pad}{key}: {value}")
        return "\n".join(lines)

    def _value_of(self, i: int, col: int) -> tuple[str, int]:
        """The value of the key at token ``i`` (at column ``col``), and the token after it."""
        value = self.values[i]
        i += 1
        if value is not None:
            return value, i
        if i < self.n:
            deeper = self.cols[i]
            if deeper > col:
                return self._node(i, deeper)
            if deeper == col and self.keys[i] is None and self.values[i] is None:  # a sequence not indented
                return self._sequence(i, col)
        return "null", i

    def _node(self, i: int, col: int) -> tuple[str, int]:
        if self.keys[i] is not None:
            return self._mapping(i, col)
        if self.values[i] is None:
            return self._sequence(i, col)
        raise _NotFlowLines("a value alone, apart from its dash")

    def _mapping(self, i: int, col: int) -> tuple[str, int]:
        parts: list[str] = []
        cols, keys = self.cols, self.keys
        while i < self.n and cols[i] == col and keys[i] is not None:
            key = keys[i]
            value, i = self._value_of(i, col)
            parts.append(f"{key}: {value}")
        return "{" + ", ".join(parts) + "}", i

    def _sequence(self, i: int, col: int) -> tuple[str, int]:
        items: list[str] = []
        cols, keys, values = self.cols, self.keys, self.values
        while i < self.n and cols[i] == col and keys[i] is None and values[i] is None:
            i += 1  # the dash; its value starts on the same line, further right
            if i == self.n or cols[i] <= col:
                raise _NotFlowLines("an empty item")
            if keys[i] is None and values[i] is not None:
                items.append(values[i])  # type: ignore[arg-type]
                i += 1
                continue
            item, i = self._node(i, cols[i])
            items.append(item)
        return "[" + ", ".join(items) + "]", i


def read_flow_lines(body: str, scalars: _Scalars | None = None) -> dict[Any, Any]:
    """The mapping written by ``body`` (the lines of a block mapping), or :class:`_NotFlowLines`."""
    return _flow_section(body, scalars or _Scalars()).load()


def _flow_section(body: str, scalars: _Scalars) -> FlowSection:
    """The section written by ``body``, checked and written as JSON; :class:`_NotFlowLines` when it is not in the form.

    The pattern of a line takes only entries whose value is whole on that line; their plain scalars are
    then quoted (or, where one may be no string, written as PyYAML reads it), so that the whole is JSON for
    orjson. Each step runs over many lines at once, in C, never once per scalar; a large section is written a
    slice of lines at a time, so that its text's temporaries (three strings a line from the split, the joined
    text) exist for one slice only.
    """
    first = _FIRST_INDENT.search(body)
    if first is None:
        raise _NotFlowLines("no entry")
    pattern = _entry_lines(len(first.group(1)))
    texts: list[str] = []
    start, end = 0, len(body)
    while start < end:
        stop = body.find("\n", start + _SLICE_CHARS)
        stop = end if stop < 0 else stop
        texts.append(_slice_json(body[start:stop], pattern, scalars))
        start = stop + 1
    return FlowSection(texts)


# The characters of one slice of a large section (about 10,000 lines of 100 characters).
_SLICE_CHARS = 1 << 18


def _slice_json(lines: str, pattern: re.Pattern[str], scalars: _Scalars) -> str:
    parts = pattern.split(lines)  # between, entry or None, between, ...
    if any(between not in ("", "\n") for between in parts[0::2]):
        raise _NotFlowLines("a line is not a one-line flow entry")
    entries = "\n".join(entry for entry in parts[1::2] if entry)
    del parts
    text = _quoted(entries) if "'" not in entries else None
    if text is None:  # single quotes, or a plain scalar that may be no string: scalar by scalar
        text = _TOKEN.sub(scalars.convert, entries)
    return "{" + text.replace("\n", ",") + "}"


class NotJson(Exception):
    """A slice of a :class:`FlowSection` that orjson refused after all: PyYAML reads the file."""


class FlowSection:
    """A large section checked and written as JSON, a slice of lines at a time, and parsed only when read: what the
    tenants of a file cost while they are read is then one slice's mapping, not the whole section's."""

    __slots__ = ("_texts",)

    def __init__(self, texts: list[str]) -> None:
        self._texts = texts

    def slices(self) -> Iterator[dict[Any, Any]]:
        """The section's mapping, one slice of lines at a time, in the file's order (a key may repeat across two);
        :class:`NotJson` when a slice is not JSON after all."""
        for text in self._texts:
            try:
                out = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise NotJson(f"not JSON once quoted: {text[:200]!r}") from None
            yield out

    def load(self) -> dict[Any, Any]:
        """The whole mapping: dict.update as orjson builds one object (a repeated key keeps its first place and
        takes the last value)."""
        out: dict[Any, Any] = {}
        for part in self.slices():
            out.update(part)
        return out

    def __repr__(self) -> str:
        return f"FlowSection({len(self._texts)} slices)"


def _quoted(entries: str) -> str | None:
    """``entries`` with every plain scalar in double quotes, when each is a string to PyYAML; else None."""
    pieces = _DQ_SPLIT.split(entries)  # outside, "quoted", outside, ...: plain scalars are outside
    outside = "\x00".join(pieces[0::2])  # no NUL in a file that passed _NOT_PRINTABLE
    split = _PLAIN_SPLIT.split(outside)  # between, plain, between, plain, ...
    plain = split[1::2]
    # min() < ":" when a plain scalar starts with a digit (digits sort before ":", letters and "_" after it)
    if (plain and min(plain) < ":") or not _NOT_STR_WORDS.isdisjoint(plain):
        return None
    pieces[0::2] = '"'.join(split).split("\x00")
    return "".join(pieces)


def _unprintable(text: str) -> bool:
    """Whether ``text`` has a character YAML refuses (``_NOT_PRINTABLE``); for ASCII text, in one pass over its bytes
    that keeps only those (a large file's search character by character took longer than the rest of its reading)."""
    if text.isascii():
        return bool(text.encode("ascii").translate(None, _PRINTABLE_ASCII))
    return _NOT_PRINTABLE.search(text) is not None


def load_yaml(text: str, loader: type[yaml.SafeLoader] = yaml.SafeLoader, *, lazy: Collection[str] = ()) -> Any:
    """``yaml.load(text, Loader=loader)``, with large one-line-flow top-level sections read fast; those named in
    ``lazy`` are left as a :class:`FlowSection` (read through it, or :class:`NotJson`: then PyYAML reads the text)."""
    try:
        fast = _load_sections(text, loader, lazy)
    except (_NotFlowLines, NotJson, yaml.YAMLError):
        fast = None
    if fast is not None:
        return fast
    return yaml.load(text, Loader=loader)


def _load_sections(text: str, loader: type[yaml.SafeLoader], lazy: Collection[str] = ()) -> Any:
    """The document with its large sections read by :func:`read_flow_lines`; None when none qualifies."""
    if "\r" in text or _unprintable(text):
        return None
    first = _TOP_KEY_FIRST.match(text)
    keys = [(first.group(1), 0, first.end())] if first is not None else []
    keys += [(m.group(1), m.start(1), m.end()) for m in _TOP_KEY.finditer(text)]
    names = [name for name, _s, _e in keys]
    column0 = [0] if _COLUMN0_FIRST.match(text) else []
    column0 += [m.start() + 1 for m in _COLUMN0.finditer(text)]
    pieces: list[str] = []
    sections: dict[str, tuple[str, dict[Any, Any] | FlowSection]] = {}
    done = 0
    scalars = _Scalars()
    for name, start, end in keys:
        if names.count(name) != 1:
            continue
        body_end = next((c for c in column0 if c > end), len(text))
        body = text[end + 1 : body_end] if end < len(text) else ""
        if body.count("\n") < MIN_LINES:
            continue
        section = _flow_section(_as_flow_lines(body), scalars)
        del body
        entries = section if name in lazy else section.load()
        marker = f"tollgate-section-{os.urandom(8).hex()}"
        pieces.append(text[done:start])
        pieces.append(f'{name}: "{marker}"\n')
        done = body_end
        sections[name] = (marker, entries)
    if not sections:
        return None
    pieces.append(text[done:])
    doc = yaml.load("".join(pieces), Loader=loader)
    if not isinstance(doc, dict):
        return None
    for name, (marker, entries) in sections.items():
        if doc.get(name) != marker:
            return None
        doc[name] = entries
    return doc
