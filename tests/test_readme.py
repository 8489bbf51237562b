"""The README's commands work when pasted in order on a fresh checkout: its blocks marked
``<!-- runnable -->`` run, in order, in one shell, against the demo its Start block starts (on free ports).

The Start block runs as written in a copy of the repository's tracked files (a virtual environment of its own,
``pip install`` and all) with a home folder of its own; its ports are the only change. Every other runnable
block runs with ``curl`` failing on an HTTP error (``--fail-with-body``), so an answer of 4xx or 5xx fails the test
and names the block; a Python block runs with the Start block's ``.venv/bin/python``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support.processes import free_port

pytestmark = [pytest.mark.process, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
MARK = re.compile(r"^<!-- runnable(?::\s*(?P<note>[^>]*?))?\s*-->$")


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    text: str
    note: str


def runnable_blocks(readme: str) -> list[Block]:
    lines = readme.splitlines()
    blocks: list[Block] = []
    for i, line in enumerate(lines):
        mark = MARK.match(line.strip())
        if mark is None:
            continue
        fence = lines[i + 1]
        assert fence.startswith("```"), f"README line {i + 1}: a runnable mark must sit right above a fence"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        blocks.append(Block(i + 2, fence[3:].strip(), "\n".join(lines[i + 2 : end]), mark.group("note") or ""))
    return blocks


def test_the_readme_marks_its_start_block_and_the_blocks_that_use_it() -> None:
    blocks = runnable_blocks((REPO / "README.md").read_text())
    assert blocks[0].note == "starts the demo" and "tollgate demo" in blocks[0].text
    assert len(blocks) >= 6  # the curl, both SDKs, self-service, admin API, spend log
    assert {b.language for b in blocks} == {"sh", "python"}


def tracked_copy(to: Path) -> None:
    """The repository's tracked files (a fresh checkout), or its files without the local environments."""
    if (REPO / ".git").exists() and shutil.which("git"):
        names = (
            subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True)
            .stdout.decode()
            .split("\0")
        )
        for name in filter(None, names):
            source = REPO / name
            if source.is_file():
                (to / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, to / name)
    else:
        shutil.copytree(REPO, to, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__"))


def on_ports(text: str, port: int, admin_port: int) -> str:
    return text.replace("127.0.0.1:8080", f"127.0.0.1:{port}").replace("127.0.0.1:8081", f"127.0.0.1:{admin_port}")


def test_every_runnable_block_works_in_order_against_the_demo_the_start_block_starts(tmp_path: Path) -> None:
    blocks = runnable_blocks((REPO / "README.md").read_text())
    start, rest = blocks[0], blocks[1:]
    port, admin_port = free_port(), free_port()
    checkout, home = tmp_path / "tollgate", tmp_path / "home"
    checkout.mkdir()
    home.mkdir()
    tracked_copy(checkout)
    cache = subprocess.run(
        ["python3", "-m", "pip", "cache", "dir"], capture_output=True, text=True, check=False
    ).stdout.strip()
    venv_bin = str(Path(os.environ.get("VIRTUAL_ENV", "/nonexistent")) / "bin")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "XDG_DATA_HOME")},
        "HOME": str(home),
        "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin),
        "PYTHONWARNINGS": "ignore",
        **({"PIP_CACHE_DIR": cache} if cache else {}),  # a warm cache: the install is the README's, not the download
    }
    command = start.text.replace("tollgate demo", f"tollgate demo --port {port} --admin-port {admin_port}")
    assert command != start.text
    log_path = tmp_path / "demo.log"
    with log_path.open("wb") as log:
        demo = subprocess.Popen(
            ["bash", "-c", command], cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 600
        while "Tollgate demo is up" not in log_path.read_text():
            assert demo.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        script = ["set -euo pipefail", 'curl() { command curl --fail-with-body --show-error "$@"; }']
        for block in rest:
            script.append(f"echo '### README line {block.line}' >&2")
            text = on_ports(block.text, port, admin_port)
            if block.language == "python":
                script.append(f".venv/bin/python - <<'README_PYTHON'\n{text}\nREADME_PYTHON")
            else:
                script.append(text)
        out = subprocess.run(
            ["bash", "-c", "\n".join(script)], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
        )
        failed_at = re.findall(r"### README line (\d+)", out.stderr)
        assert out.returncode == 0, (
            f"README block at line {failed_at[-1] if failed_at else '?'} failed:\n{out.stdout}\n{out.stderr}"
        )
        assert len(failed_at) == len(rest)
        assert '"object":"chat.completion"' in out.stdout.replace(" ", "")  # the first curl's answer
        assert (checkout / "acme.csv").read_text().startswith("request_id")  # the spend log's CSV export
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        code = demo.wait(timeout=60)
    assert code == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()
