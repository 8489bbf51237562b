"""A large tenants section read a slice at a time gives exactly the config PyYAML and the models give, and a reload
reuses the previous table's objects for the rows it reads unchanged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollgate.config import ConfigError, config_from_dict, flow_lines, load_config
from tollgate.config.model import Config
from tollgate.config.tenant_rows import Row, TenantRows

HEAD = """\
upstreams:
  u: {base_url: "http://127.0.0.1:9/v1"}
models:
  m: {deployments: [{upstream: u}]}
plans:
  bench: {monthly_requests: 1000000, concurrency: 100}
  personal: {monthly_requests: 100, concurrency: 2}
tenants:
"""
COUNT = 1_200  # about 120 KB of tenant lines: seven slices of the size below
SLICE_CHARS = 1 << 14


@pytest.fixture(autouse=True)
def _small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slices of 16 KiB instead of 256 KiB: the same paths through a file small enough to read fast."""
    monkeypatch.setattr(flow_lines, "_SLICE_CHARS", SLICE_CHARS)


def _line(i: int, *, plan: str = "bench", key: str | None = None, digest: str | None = None) -> str:
    return f'  t{i}: {{plan: {plan}, keys: [{{id: {key or f"k{i}"}, sha256: "{digest or f"{i:064x}"}"}}]}}'


def _lines() -> list[str]:
    return [_line(i) for i in range(COUNT)]


def _text(lines: list[str]) -> str:
    return HEAD + "\n".join(lines) + "\n"


def _read(tmp_path: Path, name: str, text: str) -> tuple[Config | None, list[str] | None]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    try:
        return load_config(path), None
    except ConfigError as exc:
        return None, exc.problems


def _reference(text: str, source: Path) -> tuple[Config | None, list[str] | None]:
    try:
        return config_from_dict(yaml.load(text, Loader=yaml.SafeLoader), source=str(source)), None
    except ConfigError as exc:
        return None, exc.problems


def _row(config: Config, tenant_id: str) -> Row | None:
    """The tenant's row object as the table keeps it (a reload that reuses it hands back this very object)."""
    assert isinstance(config.tenants, TenantRows)
    return config.tenants.row(tenant_id)


def _same_as_reference(tmp_path: Path, name: str, text: str) -> Config | None:
    got, problems = _read(tmp_path, name, text)
    want, want_problems = _reference(text, tmp_path / f"{name}.yaml")
    assert problems == want_problems
    assert got == want
    if got is not None and want is not None:
        assert list(got.tenants) == list(want.tenants)  # the file's order
        assert list(got.api_keys) == list(want.api_keys)
        assert [got.tenants[t] for t in got.tenants] == [want.tenants[t] for t in want.tenants]
    return got


def test_the_section_is_read_a_slice_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader takes the sliced path for these files, several slices of them (else the tests below prove little)."""
    real = flow_lines.FlowSection.slices
    read: list[int] = []

    def counted(self: flow_lines.FlowSection) -> Iterator[dict[Any, Any]]:
        for part in real(self):
            read.append(len(part))
            yield part

    monkeypatch.setattr(flow_lines.FlowSection, "slices", counted)
    config, problems = _read(tmp_path, "counted", _text(_lines()))
    assert problems is None and config is not None
    assert len(read) >= 5 and sum(read) == COUNT


def _repeat_in_a_later_slice_with_another_key(lines: list[str]) -> list[str]:
    return [*lines, _line(5, key="kdup", digest="ab" * 32)]


def _repeat_the_same_line_later(lines: list[str]) -> list[str]:
    return [*lines, lines[5]]


def _an_unusual_tenant(lines: list[str]) -> list[str]:
    lines[900] = lines[900].replace("{plan: bench,", "{plan: bench, name: Someone,")
    return lines


def _an_unknown_plan(lines: list[str]) -> list[str]:
    lines[1_000] = lines[1_000].replace("plan: bench", "plan: nosuch")
    return lines


def _two_problems_in_two_slices(lines: list[str]) -> list[str]:
    lines[1_000] = lines[1_000].replace("{plan: bench,", "{plan: bench, bogus: 1,")
    lines[10] = lines[10].replace("plan: bench", "plan: nosuch")
    return lines


def _comments_first(lines: list[str]) -> list[str]:
    return ["  # a comment"] * 300 + lines


CASES: dict[str, Callable[[list[str]], list[str]]] = {
    "plain": lambda lines: lines,
    "a tenant repeated in a later slice with another key": _repeat_in_a_later_slice_with_another_key,
    "a tenant line repeated in a later slice": _repeat_the_same_line_later,
    "a tenant the fast path leaves to the models": _an_unusual_tenant,
    "an unknown plan": _an_unknown_plan,
    "two problems in two slices": _two_problems_in_two_slices,
    "comments before the rows": _comments_first,
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_sliced_section_reads_as_pyyaml_and_the_models_read_it_with_the_same_problems(
    tmp_path: Path, case: str
) -> None:
    _same_as_reference(tmp_path, "case", _text(CASES[case](_lines())))


def test_a_file_with_a_variable_reference_reads_as_pyyaml_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TG_TEST_PLAN", "personal")
    lines = _lines()
    lines[3] = lines[3].replace("plan: bench", 'plan: "${TG_TEST_PLAN}"')
    config = _same_as_reference(tmp_path, "refs", _text(lines))
    assert config is not None and config.tenants["t3"].plan == "personal"


def test_a_slice_orjson_refuses_sends_the_file_to_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self: object) -> Iterator[dict[Any, Any]]:
        yield from ()
        raise flow_lines.NotJson("refused")

    monkeypatch.setattr(flow_lines.FlowSection, "slices", refused)
    config = _same_as_reference(tmp_path, "refused", _text(_lines()))
    assert config is not None and len(config.tenants) == COUNT


def test_changed_rows_are_read_afresh_after_unchanged_ones_were_reused(tmp_path: Path) -> None:
    before = _same_as_reference(tmp_path, "before", _text(_lines()))
    lines = _lines()
    lines[5] = _line(5, digest="ff" * 32)
    lines[6] = _line(6, plan="personal")
    lines[7] = _line(7, key="k7b")
    after = _same_as_reference(tmp_path, "after", _text(lines))
    assert before is not None and after is not None
    assert after.api_keys["k5"].digest == bytes.fromhex("ff" * 32)
    assert after.tenants["t6"].plan == "personal"
    assert "k7b" in after.api_keys and "k7" not in after.api_keys
    assert _row(after, "t8") is _row(before, "t8") is not None  # an unchanged row beside them kept its object


def test_a_reload_of_the_same_file_reuses_every_row_object(tmp_path: Path) -> None:
    first, _ = _read(tmp_path, "same", _text(_lines()))
    again, _ = _read(tmp_path, "same", _text(_lines()))
    assert first is not None and again is not None
    assert all(_row(again, t) is _row(first, t) is not None for t in ("t0", "t600", f"t{COUNT - 1}"))


def test_an_inserted_tenant_still_lets_the_rows_after_it_be_reused(tmp_path: Path) -> None:
    first, _ = _read(tmp_path, "first", _text(_lines()))
    inserted = [_line(COUNT + 1, key="knew", digest="cd" * 32), *_lines()]
    second = _same_as_reference(tmp_path, "inserted", _text(inserted))
    assert first is not None and second is not None
    assert _row(second, "t500") is _row(first, "t500") is not None
    assert f"t{COUNT + 1}" in second.tenants


def test_a_file_read_only_to_be_checked_does_not_hide_the_version_in_force(tmp_path: Path) -> None:
    """A reload's worker reads the file once to check it; the next read still reuses the version in force."""
    in_force, _ = _read(tmp_path, "plain", _text(_lines()))
    checked, _ = _read(tmp_path, "plain", _text(_lines()))
    del checked
    reloaded, _ = _read(tmp_path, "plain", _text(_lines()))
    assert in_force is not None and reloaded is not None
    assert _row(reloaded, "t500") is _row(in_force, "t500") is not None


def test_several_files_read_only_to_be_checked_in_a_row_do_not_hide_the_version_in_force(tmp_path: Path) -> None:
    """Each check's table is dropped at once; however many come in a row, the next reload still reuses the rows of
    the version in force."""
    in_force, _ = _read(tmp_path, "plain", _text(_lines()))
    for _ in range(3):
        checked, _ = _read(tmp_path, "plain", _text(_lines()))
        del checked
    reloaded, _ = _read(tmp_path, "plain", _text(_lines()))
    assert in_force is not None and reloaded is not None
    assert _row(reloaded, "t500") is _row(in_force, "t500") is not None
