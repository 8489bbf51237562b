"""`tollgate check-config` over a catalogue of broken files (tests/config/broken/): every problem of a file is
reported, each once, with its field path and reason, and nothing else (no consequence of another problem).

Each file says what is broken on its first line and lists, in `# expect:` lines, exactly the problems it must
get, in order. A path written at the start of a YAML problem is the file itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tollgate.config import ConfigError, load_config

BROKEN = Path(__file__).with_name("broken")
FILES = sorted(BROKEN.glob("*.yaml"))


def expected(path: Path) -> list[str]:
    lines = [line.removeprefix("# expect: ") for line in path.read_text().splitlines() if line.startswith("# expect: ")]
    return [f"{path}: {line}" if line.startswith("not valid YAML") else line for line in lines]


def test_the_catalogue_has_at_least_20_broken_files_each_expecting_something() -> None:
    assert len(FILES) >= 20
    for path in FILES:
        assert path.read_text().startswith("# "), f"{path.name}: say what is broken on the first line"
        assert expected(path), f"{path.name}: no # expect: line"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_problem_is_reported_once_with_its_path_and_nothing_more(path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={})  # no environment: a ${VAR} without a default is unset
    assert refused.value.problems == expected(path)


@pytest.mark.process
def test_the_command_prints_the_count_and_each_problem_and_exits_1() -> None:
    path = BROKEN / "tenant-bad-id-unknown-plan.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "tollgate", "check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    problems = expected(path)
    assert out.stderr.splitlines() == [f"{path}: {len(problems)} problem(s):"] + [f"  {p}" for p in problems]
    assert out.stdout == ""
