"""A large section written in block style is read as fast as one flow entry per line, to exactly PyYAML's document."""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from tollgate.config import flow_lines
from tollgate.config.flow_lines import MIN_LINES, load_yaml

HEAD = "upstreams:\n  u: {base_url: 'http://127.0.0.1:9/v1'}\n"
TAIL = "models:\n  m: {deployments: [{upstream: u}]}\n"


def _file(entry: str, count: int = MIN_LINES + 10) -> str:
    return HEAD + "tenants:\n" + "".join(entry.format(i=i) for i in range(count)) + TAIL


def _fast(text: str) -> bool:
    try:
        return flow_lines._load_sections(text, yaml.SafeLoader) is not None
    except flow_lines._NotFlowLines:
        return False


def _same_as_pyyaml(text: str) -> Any:
    try:
        expected: Any = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        with pytest.raises(yaml.YAMLError) as raised:
            load_yaml(text)
        assert str(raised.value) == str(exc)  # the same message, at the same line of the file
        return None
    got = load_yaml(text)
    assert got == expected and list(got) == list(expected) and list(got["tenants"]) == list(expected["tenants"])
    return got


BLOCK_ENTRIES = [
    '  t{i}:\n    plan: bench\n    keys:\n      - id: k{i}\n        sha256: "{i:064x}"\n',
    '  t{i}:\n    plan: bench\n    keys:\n    - id: k{i}\n      sha256: "{i:064x}"\n      models:\n      - m1\n      - m2\n',
    "  t{i}:\n    plan: bench  # the plan\n    # a comment inside\n\n    status: suspended\n",
    "  t{i}:\n    plan: bench\n    metadata:\n    limits: {{concurrency: {i}, monthly_requests: 0x1f}}\n",
    "  t{i}:\n    plan: bench\n    x:\n      - a\n      - [b, c]\n      - {{d: e}}\n    flag: yes\n",
    "  t{i}:\n    a: 1\n    a: 2\n",  # a repeated key: the last wins, as in PyYAML
    "  \"t{i}\":\n    'q k': 's v'\n",
    "  t{i}:\n    k:\n      -   a: 1\n          b: 2\n",
    "  t{i}:\n    k:\n    - a\n    j: 1\n",
    "  t{i}:\n",  # null
    "  t{i}: {{plan: bench}}\n",  # flow entries after a block one
]


@pytest.mark.parametrize("entry", BLOCK_ENTRIES)
def test_block_sections_in_the_narrow_form_read_fast_to_pyyamls_values(entry: str) -> None:
    text = _file("  b{i}:\n    plan: bench\n" + entry)  # each file's first entry in block style
    assert _fast(text)
    _same_as_pyyaml(text)


OTHER_ENTRIES = [
    "  t{i}:\n    name: abc#def\n",  # a '#' inside a plain scalar
    "  t{i}:\n    name: two words\n",
    "  t{i}:\n    name: first\n      second\n",  # a plain scalar over two lines
    "  t{i}:\n    keys:\n      -\n        id: a{i}\n",  # an item's value on the lines after its dash
    "  t{i}:\n    keys:\n      - - a\n",
    "  t{i}:\n    plan: bench\n      bad: 1\n",  # indentation that does not line up: PyYAML's error
    "  t{i}:\n    plan: bench\n   bad: 1\n",
    "  t{i}:\n    k:\n    - a\n  - b\n",
    "  t{i}:\n\tk: 1\n",  # a tab
    "  t{i}:\n    k: &x{i} 1\n",  # an anchor
    "  t{i}:\n    k: [a,\n      b]\n",  # a flow over two lines
    "  t{i}:\n    k: |\n      text\n",  # a block scalar
    "  t{i}:\n    ? complex\n",
    "  t{i}:\n    k: ~\n",
]


@pytest.mark.parametrize("entry", OTHER_ENTRIES)
def test_other_block_forms_are_read_by_pyyaml_alone_with_the_same_result(entry: str) -> None:
    text = _file(entry)
    assert not _fast(text)
    _same_as_pyyaml(text)


def test_a_block_file_of_20000_tenants_reads_faster_than_pyyaml_to_the_same_document() -> None:
    text = _file(BLOCK_ENTRIES[0], count=20_000)
    started = time.process_time()
    got = load_yaml(text, yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader)
    fast = time.process_time() - started
    started = time.process_time()
    expected = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    slow = time.process_time() - started
    assert got == expected
    assert fast < slow, f"{fast:.2f} s against PyYAML's {slow:.2f} s"
