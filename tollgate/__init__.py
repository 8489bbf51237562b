"""Tollgate: a multi-tenant gateway for OpenAI-style LLM traffic."""

from tollgate.compiled import check as _check_compiled

__version__ = "0.1.0"

__all__ = ["__version__"]

_check_compiled()  # a checkout compiled by scripts/compile: refuse to run compiled code older than its source
