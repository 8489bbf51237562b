"""The distribution ships every package of the tree: pyproject.toml lists them one by one (lua/ and config/ are mapped in);
its version is written once, its license is an SPDX expression with the license file beside it."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import tollgate

REPO = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_for_the_distribution() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "tollgate").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk - listed == set(), "packages missing from [tool.setuptools] packages"
    # Data folders without Python in them: the Lua scripts (lua/, lua/scaling/), the example configs, the migrations.
    assert listed - on_disk == {"tollgate.lua", "tollgate.lua.scaling", "tollgate.examples", "tollgate.database.sql"}


@pytest.mark.process
def test_the_version_is_written_once_and_the_command_prints_it() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "tollgate.__version__"}
    assert importlib.metadata.version("tollgate") == tollgate.__version__  # the installed metadata agrees
    out = subprocess.run([sys.executable, "-m", "tollgate", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"tollgate {tollgate.__version__}"


def test_the_license_is_an_spdx_expression_and_its_text_ships() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"  # a string: the table form is deprecated by setuptools
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (REPO / "LICENSE").read_text()[:200]
