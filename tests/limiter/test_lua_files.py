"""The scripts themselves: every file documents its contract, libraries stay pure, includes resolve."""

from __future__ import annotations

import re
from pathlib import Path

from tollgate.limiter.store import ENTRY_SCRIPTS, Keyspace, load_scripts, lua_dir

LUA = Path(lua_dir())


def test_every_lua_file_opens_with_a_header_naming_keys_argv_units_and_return() -> None:
    files = sorted(LUA.glob("*.lua"))
    assert len(files) >= 10
    for path in files:
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("--"):
                break
            header.append(line)
        text = "\n".join(header)
        for word in ("KEYS", "ARGV", "Units", "Return"):
            assert word in text, f"{path.name}: header does not mention {word}"


def test_library_files_never_touch_keys_argv_or_redis_when_loaded() -> None:
    """The embedded engine instantiates libraries once, so they may only define functions and constants."""
    # The embedded engine's wrapper is neither: it is the frame every script runs in, KEYS and ARGV included.
    libraries = {p.name for p in LUA.glob("*.lua")} - {f"{n}.lua" for n in ENTRY_SCRIPTS} - {"embedded_wrapper.lua"}
    for name in libraries:
        code = [line for line in (LUA / name).read_text().splitlines() if not line.lstrip().startswith("--")]
        top_level = [line for line in code if line and not line[0].isspace() and line not in ("end", "}")]
        for line in top_level:
            assert re.match(r"(local function |local [A-Z_]+ = |ALGORITHMS\.\w+ = \{)", line), f"{name}: {line}"
        assert "KEYS" not in "\n".join(code) and "ARGV" not in "\n".join(code), name


def test_every_entry_script_resolves_its_includes_and_has_a_stable_sha() -> None:
    scripts = load_scripts()
    assert set(scripts) == set(ENTRY_SCRIPTS)
    for script in scripts.values():
        assert script.source == (f"{script.prelude}\n{script.body}" if script.prelude else script.body)
        assert re.fullmatch(r"[0-9a-f]{40}", script.sha)
    assert load_scripts()["admit"].sha == scripts["admit"].sha


def test_the_scripts_call_only_the_commands_the_embedded_keyspace_implements() -> None:
    used = set()
    for path in LUA.glob("*.lua"):
        used |= set(re.findall(r"redis\.call\('([A-Z]+)'", path.read_text()))
    assert used == set(Keyspace().commands)
