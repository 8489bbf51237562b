"""Finds the limiter's Lua scripts, resolves their ``-- include:`` line, and names each by SHA1.

The scripts live only in ``lua/*.lua``. Installed, that directory is the data
package ``tollgate.lua`` (see pyproject.toml); from a checkout it is
``<repo>/lua``. An entry script's first line may be
``-- include: common.lua gcra.lua ...``: those library files are placed
before it, in that order, so both engines run one self-contained source.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType

__all__ = ["ENTRY_SCRIPTS", "Script", "load_scripts", "lua_dir"]

# The scripts an engine runs by name; the other .lua files are libraries.
ENTRY_SCRIPTS = ("admit", "peek", "settle", "extend", "lease_renew", "lease_release")
_INCLUDE = "-- include:"


@dataclass(frozen=True, slots=True)
class Script:
    """One runnable script: its name, the source with its includes, and that source's SHA1 (for EVALSHA).

    ``prelude`` (the included libraries) and ``body`` (the entry file) are the
    two halves of ``source``. Libraries only define functions and constant
    tables, so the embedded engine instantiates the prelude once and runs the
    body per call; Redis runs all of ``source`` per call.
    """

    name: str
    source: str
    sha: str
    prelude: str = ""
    body: str = ""


def lua_dir() -> Traversable:
    """The directory holding the ``.lua`` files (a Traversable or a Path)."""
    try:
        root = importlib.resources.files("tollgate.lua")
        if root.joinpath("admit.lua").is_file():
            return root
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[3] / "lua"


def _compose(name: str, read: Callable[[str], str]) -> tuple[str, str]:
    """``(prelude, body)``: the included libraries in order, and the entry script."""
    text = read(f"{name}.lua")
    first = text.split("\n", 1)[0]
    if not first.startswith(_INCLUDE):
        return "", text
    parts = []
    for lib in first[len(_INCLUDE) :].split():
        lib_text = read(lib)
        if lib_text.startswith(_INCLUDE):
            raise ValueError(f"{lib}: a library cannot include other files")
        parts.append(f"-- >>> {lib}\n{lib_text}")
    return "\n".join(parts), f"-- >>> {name}.lua\n{text}"


def load_scripts(directory: Traversable | None = None) -> Mapping[str, Script]:
    """Read every entry script once; returns ``{name: Script}``."""
    root = directory if directory is not None else lua_dir()

    def read(filename: str) -> str:
        return root.joinpath(filename).read_text(encoding="utf-8")

    scripts = {}
    for name in ENTRY_SCRIPTS:
        prelude, body = _compose(name, read)
        source = f"{prelude}\n{body}" if prelude else body
        scripts[name] = Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest(), prelude, body)
    return MappingProxyType(scripts)
