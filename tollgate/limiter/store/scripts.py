"""Finds the limiter's Lua scripts, resolves their ``-- include:`` line, and names each by SHA1.

The scripts live only in ``lua/*.lua``. Installed, that directory is the data
package ``tollgate.lua`` (see pyproject.toml); from a checkout it is
``<repo>/lua``. An entry script's first line may be
``-- include: common.lua gcra.lua ...``: those library files are placed
before it, in that order, so both engines run one self-contained source.

For Redis 7 the same files also make one Functions library
(:func:`function_library`): the included libraries once at its top, each
entry script's body a registered function. Redis then runs the libraries once
when the library is loaded instead of on every ``EVALSHA``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType

__all__ = ["ENTRY_SCRIPTS", "FunctionLibrary", "Script", "function_library", "load_scripts", "lua_dir"]

# The scripts an engine runs by name; the other .lua files are libraries.
ENTRY_SCRIPTS = ("admit", "peek", "settle", "extend", "lease_renew", "lease_release")
# Entry scripts that never write: registered with the no-writes flag (they run under maxmemory, and on replicas).
READ_ONLY_SCRIPTS = frozenset({"peek"})
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
    includes: tuple[str, ...] = ()  # the library files of the ``-- include:`` line, in order


@dataclass(frozen=True, slots=True)
class FunctionLibrary:
    """Every entry script as one Redis Functions library (``FUNCTION LOAD code``; Redis >= 7).

    Its name and its functions' names carry a hash of the whole library, so
    gateways of two versions can share a server during a rolling upgrade, each
    calling its own functions; the same code loaded twice is the same library.
    """

    name: str
    code: str
    functions: Mapping[str, str]  # script name -> function name (FCALL's first argument)


def lua_dir() -> Traversable:
    """The directory holding the ``.lua`` files (a Traversable or a Path)."""
    try:
        root = importlib.resources.files("tollgate.lua")
        if root.joinpath("admit.lua").is_file():
            return root
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[3] / "lua"


def _includes(text: str) -> list[str]:
    """The library files named on a script's ``-- include:`` first line."""
    first = text.split("\n", 1)[0]
    return first[len(_INCLUDE) :].split() if first.startswith(_INCLUDE) else []


def _library_text(lib: str, read: Callable[[str], str]) -> str:
    lib_text = read(lib)
    if lib_text.startswith(_INCLUDE):
        raise ValueError(f"{lib}: a library cannot include other files")
    return f"-- >>> {lib}\n{lib_text}"


def _compose(name: str, read: Callable[[str], str]) -> tuple[str, str, tuple[str, ...]]:
    """``(prelude, body, includes)``: the included libraries in order, the entry script, the libraries' names."""
    text = read(f"{name}.lua")
    libs = _includes(text)
    if not libs:
        return "", text, ()
    return "\n".join([_library_text(lib, read) for lib in libs]), f"-- >>> {name}.lua\n{text}", tuple(libs)


def _blank_comments(text: str) -> str:
    """``text`` with every whole-line comment emptied, but the ``-- >>> file`` markers: the same code and line numbers
    in fewer bytes (the comments are about half of the files)."""
    return "\n".join(
        "" if line.lstrip().startswith("--") and not line.startswith("-- >>> ") else line for line in text.split("\n")
    )


def load_scripts(directory: Traversable | None = None) -> Mapping[str, Script]:
    """Read every entry script once; returns ``{name: Script}``."""
    root = directory if directory is not None else lua_dir()

    def read(filename: str) -> str:
        return root.joinpath(filename).read_text(encoding="utf-8")

    scripts = {}
    for name in ENTRY_SCRIPTS:
        prelude, body, libs = _compose(name, read)
        source = f"{prelude}\n{body}" if prelude else body
        scripts[name] = Script(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest(), prelude, body, libs)
    return MappingProxyType(scripts)


def function_library(scripts: Mapping[str, Script], directory: Traversable | None = None) -> FunctionLibrary:
    """The scripts as one Functions library: every included library once, then one function per script.

    The libraries come in the order the scripts include them (a script whose
    includes are not in that order is refused: a library may use the ones
    before it). Each script's body becomes the function's body, KEYS and ARGV
    its parameters, as they are the globals of a script run by ``EVALSHA``.
    """
    root = directory if directory is not None else lua_dir()
    order: list[str] = []
    for script in scripts.values():
        for lib in script.includes:
            if lib not in order:
                order.append(lib)
        if [lib for lib in order if lib in script.includes] != list(script.includes):
            raise ValueError(f"{script.name}: its includes are not in the order other scripts include them")
    digest = hashlib.sha1("\0".join(f"{s.name}\0{s.source}" for s in scripts.values()).encode("utf-8"))
    tag = digest.hexdigest()[:16]
    name = f"tollgate_{tag}"
    functions = {script: f"tollgate_{script}_{tag}" for script in scripts}
    parts = [f"#!lua name={name}"]
    parts += [_library_text(lib, lambda f: root.joinpath(f).read_text(encoding="utf-8")) for lib in order]
    for script in scripts.values():
        body = script.body or script.source
        flags = ", flags = { 'no-writes' }" if script.name in READ_ONLY_SCRIPTS else ""
        parts.append(
            f"redis.register_function{{ function_name = '{functions[script.name]}'{flags},"
            f" callback = function(KEYS, ARGV)\n{body}\nend }}"
        )
    # Sent to every server, and compiled by each when it loads the library: without its comments (about half of it),
    # FUNCTION LOAD reads and compiles less, and a pipeline that carries it stays shorter.
    return FunctionLibrary(name, _blank_comments("\n".join(parts)), MappingProxyType(functions))
