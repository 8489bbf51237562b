"""The fast reader of one-line flow sections gives exactly PyYAML's document, and leaves every other file to it."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tollgate.config import flow_lines
from tollgate.config.flow_lines import MIN_LINES, load_yaml

HEAD = "upstreams:\n  u: {base_url: 'http://127.0.0.1:9/v1'}\n"
TAIL = "models:\n  m: {deployments: [{upstream: u}]}\n"


def _file(line: str, count: int = MIN_LINES + 10, *, head: str = HEAD, tail: str = TAIL) -> str:
    body = "".join(line.format(i=i) + "\n" for i in range(count))
    return f"{head}tenants:\n{body}{tail}"


def _same_as_pyyaml(text: str) -> Any:
    expected = yaml.load(text, Loader=yaml.SafeLoader)
    got = load_yaml(text)
    assert got == expected
    assert type(got) is type(expected)
    if isinstance(expected, dict):
        assert list(got) == list(expected)  # the same key order
    return got


def _fast(text: str) -> bool:
    """Whether the fast path took the file (rather than leaving it to PyYAML)."""
    try:
        return flow_lines._load_sections(text, yaml.SafeLoader) is not None
    except flow_lines._NotFlowLines:
        return False


FAST_LINES = [
    '  t{i}: {{plan: bench, keys: [{{id: k{i}, sha256: "{i:064x}"}}]}}',
    "  t{i}: {{plan: bench, status: suspended, metadata: {{team: a/b, mail: x@example.com}}}}",
    '  "t{i}": {{plan: "bench", name: "Tenant #{i}: the one, [with] {{brackets}}"}}',
    "  t{i}: {{plan: bench}}  # a comment: with 'quotes' and \"more\"",
    "  t{i}: {{plan: 'it s', name: 'say \"hi\"'}}",
    "  t{i}: {{limits: {{concurrency: {i}, monthly_requests: 0x1f, rpm: 1_000, ratio: 1.5, flag: yes, other: NO}}}}",
    "  t{i}: {{allowed_models: [], metadata: {{}}, v: null, x: True, y: 1e3, z: 07, big: 9223372036854775807}}",
    "  t{i}: {{a: {{b: [c, [d]]}}}}",
    "  t{i}: plain{i}",
    "  t{i}: {{plan: bench, keys: [{{id: k{i}}}, {{id: j{i}}}]}}",
    "  t{i}: {{ plan: bench ,  keys: [ a , b ] }}",
]


@pytest.mark.parametrize("line", FAST_LINES)
def test_one_line_flow_sections_read_fast_to_pyyamls_values(line: str) -> None:
    text = _file(line)
    assert _fast(text)
    _same_as_pyyaml(text)


# Each of these is valid YAML (or an error PyYAML must report) outside the narrow form: PyYAML reads the file.
OTHER_LINES = [
    "  t{i}: {{plan: bench,\n      keys: []}}",  # a flow over two lines
    "  t{i}:\n    plan: bench",  # block style
    "  t{i}: &a{i} {{plan: bench}}",  # an anchor
    "  t{i}: !!str {i}",  # a tag
    '  t{i}: {{name: "tab\\there"}}',  # an escape
    "  t{i}: {{name: it''s}}",  # a plain scalar PyYAML reads whole
    "  t{i}: {{plan: bench, created: 2024-01-01}}",  # a timestamp
    "  t{i}: {{a:b}}",  # a plain scalar with a colon
    "  t{i}: {{plan: bench,}}",  # a trailing comma
    "  t{i}: {{a: [1, {{b: [2, {{c: [3, {{d: 4}}]}}]}}]}}",  # nested deeper than the fast path reads
    "  t{i}: plain value{i}",  # a plain scalar with a space
    "  t{i}: {{v: ~, off: no}}",  # a null written ~, a key PyYAML reads as False
    "  t{i}: [a\n  b]",  # a plain scalar folded over two lines
    "  t{i}: {{plan: bench}} {{x: 1}}",  # two values: PyYAML's error
    "  t{i}: {{a: 1, a: 2}}",  # a duplicate key (the last wins)
    "  {i}: {{plan: bench}}",  # a key that is no string
    "  yes: {{plan: bench}}",
    "  t{i}: {{n: 99999999999999999999999}}",  # an integer orjson would make a float
]


@pytest.mark.parametrize("line", OTHER_LINES)
def test_other_forms_are_read_by_pyyaml_alone_with_the_same_result(line: str) -> None:
    text = _file(line)
    try:
        expected: Any = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        with pytest.raises(yaml.YAMLError) as raised:
            load_yaml(text)
        assert str(raised.value) == str(exc)  # the same message, at the same line of the file
        return
    got = load_yaml(text)
    assert got == expected and list(got) == list(expected)


def test_entries_at_different_indents_and_repeated_sections_are_left_to_pyyaml() -> None:
    mixed = _file("  t{i}: {{plan: bench}}") + "".join(f"    x{i}: 1\n" for i in range(3))
    assert not _fast(_file("  t{i}: {{plan: bench}}").replace("\n  t3:", "\n   t3:"))
    twice = _file("  t{i}: {{plan: a}}") + "tenants: {}\n"
    assert not _fast(twice)
    assert load_yaml(twice) == yaml.load(twice, Loader=yaml.SafeLoader)
    with pytest.raises(yaml.YAMLError):
        yaml.load(mixed, Loader=yaml.SafeLoader)
    with pytest.raises(yaml.YAMLError):
        load_yaml(mixed)


def test_blank_and_comment_lines_inside_the_section_are_skipped() -> None:
    text = _file("  t{i}: {{plan: bench}}\n\n  # about the next one\n# at column 0")
    assert _fast(text)
    assert len(_same_as_pyyaml(text)["tenants"]) == MIN_LINES + 10


def test_small_sections_and_files_without_a_section_go_to_pyyaml() -> None:
    small = _file("  t{i}: {{plan: bench}}", count=3)
    assert not _fast(small)
    _same_as_pyyaml(small)
    _same_as_pyyaml(HEAD + TAIL)


def test_characters_yaml_refuses_leave_the_file_to_pyyamls_error() -> None:
    text = _file('  t{i}: {{name: "a\x07b"}}')
    with pytest.raises(yaml.YAMLError):
        load_yaml(text)


def test_the_sections_around_keep_their_order_and_values() -> None:
    text = "a: 1\n" + _file("  t{i}: {{plan: p}}", tail="z: [1, 2]\nb: {c: d}\n")
    doc = _same_as_pyyaml(text)
    assert list(doc) == ["a", "upstreams", "tenants", "z", "b"]


def test_the_section_is_found_on_the_first_line_and_after_a_leading_comment_or_blank() -> None:
    """Top-level keys and column-0 lines are found after a line feed and at the text's start apart: a section on
    the file's first line, or after a first line that is a comment or blank, reads as PyYAML reads it."""
    for head in ("", "# a comment first\n", "\n", "  \n"):
        text = head + _file("  t{i}: {{plan: p}}", head="")
        assert text.startswith(head + "tenants:")
        assert _fast(text), repr(head)
        assert len(_same_as_pyyaml(text)["tenants"]) == MIN_LINES + 10
    ends = _file("  t{i}: {{plan: p}}", tail="")  # the section runs to the end of the file
    assert _fast(ends) and len(_same_as_pyyaml(ends)["tenants"]) == MIN_LINES + 10


@pytest.mark.parametrize("code", [*range(0x80), 0x85, 0xA0, 0x2028, 0xD7FF, 0xE000, 0xFFFE, 0xFFFF, 0x1F600])
def test_a_character_is_refused_exactly_where_libyamls_reader_refuses_it(code: int) -> None:
    """The ASCII check (bytes kept by translate) and the pattern agree, character by character, ASCII or not."""
    text = f"a: b{chr(code)}c\n"
    assert flow_lines._unprintable(text) == (flow_lines._NOT_PRINTABLE.search(text) is not None)
    refused = (code < 0x20 and code not in (0x09, 0x0A, 0x0D)) or code in (0x7F, 0xFFFE, 0xFFFF)
    assert flow_lines._unprintable(text) == refused
