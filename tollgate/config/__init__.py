"""Configuration: YAML in, one immutable validated :class:`Config` out, or a :class:`ConfigError` naming every problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tollgate.config.model import Config
from tollgate.config.parse import parse_config
from tollgate.config.reader import Problems, substitute_env
from tollgate.errors import ConfigError

__all__ = ["Config", "ConfigError", "config_from_dict", "load_config"]


def config_from_dict(doc: Any, *, env: Mapping[str, str] | None = None, source: str = "<memory>") -> Config:
    """Validate an already parsed document; raises :class:`ConfigError` listing every problem."""
    problems = Problems()
    doc = substitute_env(doc, dict(os.environ if env is None else env), problems)
    config = parse_config(doc, problems, source=source)
    if problems:
        raise ConfigError(problems.lines)
    return config


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{p}: not valid YAML{where}: {reason}"]) from None
    if doc is None:
        raise ConfigError([f"{p}: the file is empty"])
    return config_from_dict(doc, env=env, source=str(p))
