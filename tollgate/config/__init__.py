"""Configuration: YAML in, one immutable validated :class:`Config` out, or a :class:`ConfigError` naming every problem.

The file is declared as models (:class:`ConfigDoc` and its sections); the
records the admin API also accepts are exported here with their JSON Schema:
:class:`TenantDoc`, :class:`KeyDoc`, :class:`PlanDoc`, :class:`NamespaceDoc`,
:class:`RuleDoc` and :func:`doc_schema`.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tollgate.config.document import ConfigDoc, parse_config
from tollgate.config.flow_lines import NotJson, load_yaml
from tollgate.config.identity import KeyDoc, PlanDoc, TenantDoc
from tollgate.config.model import Config
from tollgate.config.rules import NamespaceDoc, RuleDoc
from tollgate.config.schema import doc_schema, file_schema
from tollgate.config.validation import Problems, substitute_env
from tollgate.errors import ConfigError

__all__ = [
    "Config",
    "ConfigDoc",
    "ConfigError",
    "KeyDoc",
    "NamespaceDoc",
    "PlanDoc",
    "RuleDoc",
    "TenantDoc",
    "config_from_dict",
    "doc_schema",
    "file_schema",
    "load_config",
]

# PyYAML's safe loader (plain data, no Python objects), on libyaml's parser when PyYAML has it: the same
# documents and values, parsed several times faster. Large sections written one flow entry per line (a file of
# 100,000 tenants) are read faster still, to the same values (flow_lines.py).
_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def config_from_dict(doc: Any, *, env: Mapping[str, str] | None = None, source: str = "<memory>") -> Config:
    """Validate an already parsed document; raises :class:`ConfigError` listing every problem."""
    return _config(doc, env=env, source=source)


def _config(doc: Any, *, env: Mapping[str, str] | None, source: str, references: bool = True) -> Config:
    problems = Problems()
    with _collector_paused():
        if references:  # ${VAR} anywhere in the document
            doc = substitute_env(doc, dict(os.environ if env is None else env), problems)
        data_dir = (os.environ if env is None else env).get("TOLLGATE_DATA_DIR") or None
        config = parse_config(doc, problems, source=source, data_dir=data_dir)
    if config is None:
        raise ConfigError(problems.lines)
    return config


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a config is built: a file of 100,000 tenants makes a million objects,
    none of them garbage, and the collector would walk them again and again (a third of the load time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    references = "${" in text  # ${VAR} anywhere: the whole document is read before it is substituted
    doc = _parse(p, text, lazy=() if references else _LAZY_SECTIONS)
    try:
        return _config(doc, env=env, source=str(p), references=references)
    except NotJson:  # a large section's slice that orjson refused after all: PyYAML reads the file
        return _config(_parse(p, text, lazy=()), env=env, source=str(p), references=references)


# Read a slice at a time while the config is built (flow_lines.FlowSection): 100,000 tenants' parsed entries are
# never all held at once.
_LAZY_SECTIONS = ("tenants",)


def _parse(p: Path, text: str, *, lazy: tuple[str, ...]) -> Any:
    try:
        with _collector_paused():  # the parse makes as many objects as the build, none of them garbage
            doc = load_yaml(text, _LOADER, lazy=lazy)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{p}: not valid YAML{where}: {reason}"]) from None
    if doc is None:
        raise ConfigError([f"{p}: the file is empty"])
    return doc
