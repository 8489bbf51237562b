"""The compiled hot path's build hook and guard: setup.py compiles only on request and names a bad request; the
modules it lists exist; a checkout compiled by scripts/compile refuses to import once a compiled module's source
has changed (Python would otherwise run the old extension in its place), naming the module and the way out."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tollgate import compiled

REPO = Path(__file__).resolve().parents[1]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def fake_build(tmp_path: Path, names: list[str]) -> Path:
    """A package under ``tmp_path`` with each named module and a stand-in extension file beside it."""
    package = tmp_path / "pkg"
    for name in names:
        source = package / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"VALUE = {name!r}\n")
        source.with_name(source.stem + SUFFIX).write_bytes(b"\x7fELF stand-in")
    (package / "plain.py").write_text("VALUE = 1\n")  # no extension beside it: not compiled
    return package


def test_the_record_holds_the_digest_of_each_compiled_source_and_nothing_else(tmp_path: Path) -> None:
    package = fake_build(tmp_path, ["a.py", "sub/b.py"])
    written = compiled.record(package)
    assert set(written) == {"pkg/a.py", "pkg/sub/b.py"}
    assert json.loads((package / "compiled.json").read_text()) == written
    assert compiled.describe_modules(package) == "2 modules compiled"
    compiled.check(package)  # sources as built: nothing to say


@pytest.mark.parametrize("change", ["edited", "deleted"])
def test_a_source_changed_after_the_build_is_refused_by_name(tmp_path: Path, change: str) -> None:
    package = fake_build(tmp_path, ["a.py", "sub/b.py"])
    compiled.record(package)
    source = package / "sub" / "b.py"
    if change == "edited":
        source.write_text("VALUE = 'changed'\n")
    else:
        source.unlink()
    with pytest.raises(compiled.StaleBuild) as caught:
        compiled.check(package)
    message = str(caught.value)
    assert message.startswith("pkg/sub/b.py changed after scripts/compile built it")
    assert "pkg/a.py" not in message and "scripts/compile --clean" in message


def test_without_a_record_nothing_is_checked_and_the_package_is_interpreted(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("VALUE = 1\n")
    compiled.check(package)
    assert compiled.describe_modules(package) == "interpreted"


@pytest.mark.process
def test_import_tollgate_refuses_a_stale_build(tmp_path: Path) -> None:
    """The guard runs on `import tollgate` itself: a copy of the package whose record disagrees with a source."""
    copy = tmp_path / "tollgate"
    shutil.copytree(REPO / "tollgate", copy, ignore=shutil.ignore_patterns("__pycache__", "*.so", "compiled.json"))
    record = {
        "tollgate/edge/server.py": "0" * 64,
        "tollgate/edge/messages.py": compiled._digest(copy / "edge" / "messages.py"),
    }
    (copy / "compiled.json").write_text(json.dumps(record))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run(
        [sys.executable, "-c", "import tollgate"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 1
    assert "StaleBuild: tollgate/edge/server.py changed after scripts/compile built it" in run.stderr
    (copy / "compiled.json").unlink()
    ok = subprocess.run(
        [sys.executable, "-c", "import tollgate, sys; sys.stdout.write(tollgate.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and ok.stdout == str(copy / "__init__.py")


def load_setup() -> dict[str, object]:
    namespace: dict[str, object] = {"__file__": str(REPO / "setup.py"), "__name__": "setup_under_test"}
    source = (REPO / "setup.py").read_text().replace("\nsetup(ext_modules=ext_modules())\n", "\n")
    exec(compile(source, str(REPO / "setup.py"), "exec"), namespace)  # the hook's functions, without building
    return namespace


def test_setup_compiles_nothing_unless_asked_and_names_a_bad_request(monkeypatch: pytest.MonkeyPatch) -> None:
    setup = load_setup()
    ext_modules = setup["ext_modules"]
    assert callable(ext_modules)
    monkeypatch.delenv("TOLLGATE_COMPILE", raising=False)
    assert ext_modules() == []
    monkeypatch.setenv("TOLLGATE_COMPILE", "0")
    assert ext_modules() == []
    monkeypatch.setenv("TOLLGATE_COMPILE", "yes")
    with pytest.raises(SystemExit, match="TOLLGATE_COMPILE must be 0 or 1, not 'yes'"):
        ext_modules()


def test_every_module_listed_for_compilation_is_a_module_of_the_package() -> None:
    modules = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["tollgate"]["compile"]["modules"]
    assert modules == sorted(set(modules)), "the list is sorted, each module once"
    for name in modules:
        path = REPO / name
        assert name.startswith("tollgate/") and path.suffix == ".py" and path.is_file(), name
        assert path.name != "__init__.py", f"{name}: a package's __init__ stays interpreted"
    setup = load_setup()
    compiled_modules = setup["compiled_modules"]
    assert callable(compiled_modules) and compiled_modules() == modules


def test_on_linux_the_library_binds_its_own_calls_and_elsewhere_adds_nothing() -> None:
    build_flags = load_setup()["build_flags"]
    assert callable(build_flags)
    assert build_flags({}, "linux") == (["-fno-semantic-interposition", "-fno-plt"], ["-Wl,-Bsymbolic-functions"])
    assert build_flags({"TOLLGATE_PGO": ""}, "darwin") == ([], [])


def test_a_profile_is_counted_into_the_given_folder_then_used_from_it(tmp_path: Path) -> None:
    build_flags = load_setup()["build_flags"]
    assert callable(build_flags)
    profile = tmp_path / "pgo"
    compile_args, link_args = build_flags({"TOLLGATE_PGO": "generate", "TOLLGATE_PGO_DIR": str(profile)}, "linux")
    for args in (compile_args, link_args):  # the counting code is compiled in and its runtime linked
        assert f"-fprofile-generate={profile}" in args
    with pytest.raises(SystemExit, match=r"TOLLGATE_PGO=use: no profile in .*pgo \(TOLLGATE_PGO_DIR\).*--pgo"):
        build_flags({"TOLLGATE_PGO": "use", "TOLLGATE_PGO_DIR": str(profile)}, "linux")
    profile.mkdir()
    (profile / "#build#compile#server.gcda").write_bytes(b"counts")
    compile_args, link_args = build_flags({"TOLLGATE_PGO": "use", "TOLLGATE_PGO_DIR": str(profile)}, "linux")
    assert f"-fprofile-use={profile}" in compile_args
    # What the training never ran is optimized as without a profile, not as cold code.
    assert "-fprofile-partial-training" in compile_args
    assert not any(arg.startswith("-fprofile") for arg in link_args)
    with pytest.raises(SystemExit, match="TOLLGATE_PGO must be generate or use \\(or unset\\), not 'yes'"):
        build_flags({"TOLLGATE_PGO": "yes"}, "linux")


def test_every_compiled_extension_gets_the_build_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """The group's shared library and each module's own extension, keeping the flags mypyc gave them."""
    from setuptools import Extension

    made = [Extension("tollgate__mypyc", ["lib.c"], extra_compile_args=["-O3"]), Extension("tollgate.eager", ["e.c"])]
    monkeypatch.setattr("mypyc.build.mypycify", lambda *args, **kwargs: made)
    monkeypatch.setenv("TOLLGATE_COMPILE", "1")
    monkeypatch.delenv("TOLLGATE_PGO", raising=False)
    setup = load_setup()
    ext_modules, build_flags = setup["ext_modules"], setup["build_flags"]
    assert callable(ext_modules) and callable(build_flags)
    compile_args, link_args = build_flags({}, sys.platform)
    extensions = ext_modules()
    assert [e.name for e in extensions] == ["tollgate__mypyc", "tollgate.eager"]
    assert extensions[0].extra_compile_args == ["-O3", *compile_args]
    assert extensions[1].extra_compile_args == compile_args
    assert all(e.extra_link_args == link_args for e in extensions)
