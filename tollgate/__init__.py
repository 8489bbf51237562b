"""Tollgate: a multi-tenant gateway for OpenAI-style LLM traffic."""

__version__ = "0.1.0"

__all__ = ["__version__"]
