"""The command line's parser names the mock upstream's options without loading the mock: ``tollgate serve`` never
imports the mock upstream's handlers, nor aiohttp with them (a fifth of a start's imports)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ..support.processes import REPO

pytestmark = pytest.mark.process


def test_building_the_parser_loads_neither_the_mock_upstream_nor_aiohttp() -> None:
    script = textwrap.dedent(
        """
        import sys
        from tollgate.process.cli import build_parser

        parsed = build_parser().parse_args(["mock-upstream", "--port", "9", "--no-record"])
        assert parsed.port == 9, parsed
        print(sorted(m for m in sys.modules if m in ("aiohttp", "tollgate.mock.upstream")))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"
