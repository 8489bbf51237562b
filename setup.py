"""Build hook: the package is pure Python unless ``TOLLGATE_COMPILE=1`` asks for its hot path compiled.

With ``TOLLGATE_COMPILE=1`` the modules listed under ``[tool.tollgate.compile]`` in pyproject.toml are compiled to C
extensions by mypyc (it needs mypy and a C compiler); the ``.py`` files ship beside them and every other module stays
interpreted. Without it (the default, and every editable install) nothing is compiled and nothing but Python is
needed. ``scripts/compile`` builds the same modules in place for a checkout. The metadata is in pyproject.toml.
"""

from __future__ import annotations

import os
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


def ext_modules() -> list[Any]:
    wanted = os.environ.get("TOLLGATE_COMPILE", "0")
    if wanted not in ("0", "1"):
        raise SystemExit(f"TOLLGATE_COMPILE must be 0 or 1, not {wanted!r}")
    if wanted == "0":
        return []
    from mypyc.build import mypycify  # only a compiled build needs mypy

    # One shared runtime library for all of them (tollgate__mypyc.*.so), each module's C file compiled on its own.
    return list(mypycify(compiled_modules(), opt_level="3", multi_file=True, group_name="tollgate"))


setup(ext_modules=ext_modules())
