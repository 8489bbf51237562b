"""The JSON Schema of the config file and of its records, generated from the models.

``python -m tollgate.config > config/schema.json`` regenerates the
schema shipped beside the example configs (editors validate the YAML with
it; a test keeps it equal to this output). :func:`doc_schema` gives the
schema of one record, such as :class:`~tollgate.config.identity.TenantDoc`,
for the admin API's OpenAPI document.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel, TypeAdapter

__all__ = ["doc_schema", "file_schema", "main"]

# A string value may be written as ${VAR} or ${VAR:-default}: substituted before validation.
_ENV_REFERENCE = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"}


def doc_schema(doc: type[BaseModel], *, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON Schema of one record model (``ref_template`` places its nested models, as OpenAPI wants)."""
    return TypeAdapter(doc).json_schema(by_alias=True, ref_template=ref_template, mode="validation")


def file_schema() -> dict[str, Any]:
    """The JSON Schema of a whole config file."""
    from tollgate.config.document import ConfigDoc

    schema = _for_editors(doc_schema(ConfigDoc))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def _for_editors(node: Any) -> Any:
    """The schema as the loader judges: a name outside the pattern of a mapping of named sections is refused;
    a string with a pattern may also be a ``${VAR}`` reference, valid once substituted."""
    if isinstance(node, list):
        return [_for_editors(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _for_editors(v) if k != "patternProperties" else _names(v) for k, v in node.items()}
    if "patternProperties" in out and "properties" not in out:
        out["additionalProperties"] = False
    if out.get("type") == "string" and "pattern" in out:
        described = {k: out.pop(k) for k in ("description", "default", "title") if k in out}
        return {"anyOf": [out, _ENV_REFERENCE], **described}
    return out


def _names(patterns: dict[str, Any]) -> dict[str, Any]:
    return {name: _for_editors(value) for name, value in patterns.items()}


def main() -> int:
    json.dump(file_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0
