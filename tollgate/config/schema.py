"""The JSON Schema of the config file and of its records, generated from the models.

``python -m tollgate.config.schema > config/schema.json`` regenerates the
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

__all__ = ["SCHEMA_ID", "doc_schema", "file_schema", "main"]

SCHEMA_ID = "https://tollgate.dev/schema/config.json"
# A string value may be written as ${VAR} or ${VAR:-default}: substituted before validation.
_ENV_REFERENCE = {"type": "string", "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"}


def doc_schema(doc: type[BaseModel], *, ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """The JSON Schema of one record model (``ref_template`` places its nested models, as OpenAPI wants)."""
    return TypeAdapter(doc).json_schema(by_alias=True, ref_template=ref_template, mode="validation")


def file_schema() -> dict[str, Any]:
    """The JSON Schema of a whole config file."""
    from tollgate.config.document import ConfigDoc

    schema = _allow_env_references(doc_schema(ConfigDoc))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def _allow_env_references(node: Any) -> Any:
    """A string with a pattern or a length may also be a ``${VAR}`` reference, valid once substituted."""
    if isinstance(node, list):
        return [_allow_env_references(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _allow_env_references(v) if k != "propertyNames" else v for k, v in node.items()}
    if out.get("type") == "string" and ("pattern" in out or "minLength" in out):
        described = {k: out.pop(k) for k in ("description", "default", "title") if k in out}
        return {"anyOf": [out, _ENV_REFERENCE], **described}
    return out


def main() -> int:
    json.dump(file_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
