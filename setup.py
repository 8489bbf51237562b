"""Build hook: the package is pure Python unless ``TOLLGATE_COMPILE=1`` asks for its hot path compiled.

With ``TOLLGATE_COMPILE=1`` the modules listed under ``[tool.tollgate.compile]`` in pyproject.toml are compiled to C
extensions by mypyc (it needs mypy and a C compiler); the ``.py`` files ship beside them and every other module stays
interpreted. Without it (the default, and every editable install) nothing is compiled and nothing but Python is
needed. ``scripts/compile`` builds the same modules in place for a checkout. The metadata is in pyproject.toml.

``TOLLGATE_PGO`` asks for a profile-guided build (GCC; ``scripts/compile --pgo`` runs the three steps): ``generate``
builds extensions that count what they run into ``TOLLGATE_PGO_DIR`` (default ``build/pgo``) when a process exits;
``use`` builds them again laid out and optimized for what the counts say ran, which the training workload
(benchmarks/pgo_train.py) makes the gateway's request path. Nothing else changes: the same C, compiled differently.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """The source paths of the modules to compile, as pyproject.toml lists them."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        modules: list[str] = tomllib.load(f)["tool"]["tollgate"]["compile"]["modules"]
    return modules


def build_flags(environ: dict[str, str], platform: str = sys.platform) -> tuple[list[str], list[str]]:
    """The compiler's and the linker's extra flags for the compiled modules: ``(compile, link)``.

    On Linux the shared library binds the calls between its own functions at link time
    (``-fno-semantic-interposition``, ``-Wl,-Bsymbolic-functions``): the compiled modules call each other's functions
    through it all the time, and an ELF library's exported functions are otherwise called through its PLT, as if
    another library could replace them, which nothing does. Its calls into libpython go through the GOT without a
    PLT stub (``-fno-plt``). 0 to 5 % less CPU a request, by benchmark row (benchmarks/RESULTS.md).

    ``TOLLGATE_PGO`` (see above) adds GCC's profile flags. ``use`` keeps the functions the training never ran
    optimized as usual (``-fprofile-partial-training``): a route it did not take is no slower than without a profile.
    """
    compile_args: list[str] = []
    link_args: list[str] = []
    if platform.startswith("linux"):
        compile_args += ["-fno-semantic-interposition", "-fno-plt"]
        link_args.append("-Wl,-Bsymbolic-functions")
    pgo = environ.get("TOLLGATE_PGO", "")
    if pgo not in ("", "generate", "use"):
        raise SystemExit(f"TOLLGATE_PGO must be generate or use (or unset), not {pgo!r}")
    if not pgo:
        return compile_args, link_args
    profile = Path(environ.get("TOLLGATE_PGO_DIR") or ROOT / "build" / "pgo").resolve()
    if pgo == "generate":
        # Counters updated atomically where the CPU can: the gateway's own threads (its database, the trace export)
        # run compiled code too.
        flags = [f"-fprofile-generate={profile}", "-fprofile-update=prefer-atomic"]
        return compile_args + flags, link_args + flags
    if not any(profile.glob("*.gcda")):
        raise SystemExit(
            f"TOLLGATE_PGO=use: no profile in {profile} (TOLLGATE_PGO_DIR); build with TOLLGATE_PGO=generate and run "
            "the training first (scripts/compile --pgo does both)"
        )
    flags = [f"-fprofile-use={profile}", "-fprofile-partial-training", "-fprofile-correction", "-Wno-missing-profile"]
    return compile_args + flags, link_args


def ext_modules() -> list[Any]:
    wanted = os.environ.get("TOLLGATE_COMPILE", "0")
    if wanted not in ("0", "1"):
        raise SystemExit(f"TOLLGATE_COMPILE must be 0 or 1, not {wanted!r}")
    if wanted == "0":
        return []
    compile_args, link_args = build_flags(dict(os.environ))
    from mypyc.build import mypycify  # only a compiled build needs mypy

    # One shared runtime library for all of them (tollgate__mypyc.*.so), each module's C file compiled on its own.
    extensions = list(mypycify(compiled_modules(), opt_level="3", multi_file=True, group_name="tollgate"))
    for extension in extensions:
        extension.extra_compile_args = [*extension.extra_compile_args, *compile_args]
        extension.extra_link_args = [*extension.extra_link_args, *link_args]
    return extensions


setup(ext_modules=ext_modules())
