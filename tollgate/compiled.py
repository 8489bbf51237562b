"""Whether the hot path runs compiled, and a guard against compiled modules older than their sources.

``scripts/compile`` builds the modules of ``[tool.tollgate.compile]`` in place and records each source's SHA-256
here in ``compiled.json``. Python imports an extension before the ``.py`` beside it, so after a source is edited
the old compiled code would run unnoticed: ``import tollgate`` checks the record and refuses, naming the module.
A wheel built with ``TOLLGATE_COMPILE=1`` carries no record (its sources cannot drift from its extensions).

    python -c "from tollgate import compiled; print(compiled.describe())"   # how many modules run compiled
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import json
from pathlib import Path

__all__ = ["RECORD", "StaleBuild", "check", "compiled_modules", "describe", "describe_modules", "record"]

PACKAGE = Path(__file__).resolve().parent
RECORD = PACKAGE / "compiled.json"


class StaleBuild(ImportError):
    """A compiled module's source changed after scripts/compile built it."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_modules(package: Path = PACKAGE) -> list[Path]:
    """The sources under ``package`` that have an extension module beside them, sorted."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for ext in package.rglob("*.so"):
        for suffix in suffixes:
            if ext.name.endswith(suffix):
                source = ext.with_name(ext.name[: -len(suffix)] + ".py")
                if source.exists():
                    found.append(source)
                break
    return sorted(found)


def record(package: Path = PACKAGE) -> dict[str, str]:
    """Writes the digest of every compiled module's source to ``compiled.json``; returns what it wrote."""
    digests = {str(p.relative_to(package.parent)): _digest(p) for p in compiled_modules(package)}
    (package / RECORD.name).write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    return digests


def check(package: Path = PACKAGE) -> None:
    """Raises StaleBuild when a recorded source no longer matches its digest; nothing when there is no record."""
    path = package / RECORD.name
    try:
        recorded: dict[str, str] = json.loads(path.read_text())
    except FileNotFoundError:
        return
    root = package.parent
    stale = []
    for name, digest in recorded.items():
        source = root / name
        if not source.exists() or _digest(source) != digest:
            stale.append(name)
    if stale:
        shown = ", ".join(sorted(stale)[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        raise StaleBuild(
            f"{shown} changed after scripts/compile built it: its compiled code would run instead of the source; "
            "run scripts/compile again, or scripts/compile --clean for the interpreted package"
        )


def describe_modules(package: Path) -> str:
    """``N modules compiled``, or ``interpreted`` when no module under ``package`` has an extension beside it."""
    modules = compiled_modules(package)
    return f"{len(modules)} modules compiled" if modules else "interpreted"


def describe() -> str:
    """How the installed package runs, for scripts/compile, scripts/test and the benchmarks' machine line."""
    return describe_modules(PACKAGE)
