"""The JSON Schema shipped in config/schema.json: generated from the models, never stale, and the examples fit it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tollgate.config import KeyDoc, NamespaceDoc, PlanDoc, RuleDoc, TenantDoc, doc_schema, file_schema, load_config

from ..support.processes import REPO
from .generate import many_tenants

EXAMPLES = [
    REPO / "config" / "gateway.example.yaml",
    REPO / "config" / "demo.yaml",
    REPO / "benchmarks" / "locust.gateway.yaml",
]


def as_json(path: Path) -> Any:
    """The document as an editor's YAML language server sees it: JSON values (a YAML time is its text)."""
    return json.loads(json.dumps(yaml.safe_load(path.read_text()), default=str))


def test_the_shipped_schema_is_the_one_the_models_generate() -> None:
    shipped = json.loads((REPO / "config" / "schema.json").read_text())
    assert shipped == file_schema(), "config/schema.json is stale: python -m tollgate.config > config/schema.json"


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(file_schema())


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_fits_the_schema_and_loads(path: Path) -> None:
    jsonschema.Draft202012Validator(file_schema()).validate(as_json(path))
    load_config(path, env={})


def test_the_schema_refuses_unknown_keys_and_wrong_types_as_the_loader_does() -> None:
    validator = jsonschema.Draft202012Validator(file_schema())
    doc = as_json(REPO / "config" / "demo.yaml")
    assert validator.is_valid(doc)
    assert not validator.is_valid({**doc, "typo_section": 1})
    assert not validator.is_valid({**doc, "listeners": {"public": {"port": "8080"}}})
    assert not validator.is_valid({**doc, "tenants": {"Bad_ID": {"plan": "personal"}}})


def test_string_fields_with_a_pattern_accept_an_environment_reference() -> None:
    validator = jsonschema.Draft202012Validator(file_schema())
    doc = as_json(REPO / "config" / "demo.yaml")
    doc["tenants"]["demo"]["keys"] = [{"id": "k", "sha256": "${DEMO_KEY_SHA256}"}]
    assert validator.is_valid(doc)


def test_fields_carry_the_descriptions_an_editor_shows() -> None:
    schema = file_schema()
    guard = schema["$defs"]["Guard"]["properties"]["max_body_bytes"]
    assert "413" in guard["description"]
    assert schema["properties"]["tenants"]["description"]


@pytest.mark.parametrize("doc", [TenantDoc, KeyDoc, PlanDoc, NamespaceDoc, RuleDoc], ids=lambda d: d.__name__)
def test_the_admin_records_have_schemas_with_references_where_openapi_wants_them(doc: type[Any]) -> None:
    schema = doc_schema(doc, ref_template="#/components/schemas/{model}")
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    refs = [v for v in json.dumps(schema).split('"') if v.startswith("#/")]
    assert all(r.startswith("#/components/schemas/") for r in refs)


def test_a_tenant_of_the_example_fits_the_tenant_schema() -> None:
    tenant = as_json(REPO / "config" / "gateway.example.yaml")["tenants"]["acme"]
    schema = doc_schema(TenantDoc)
    jsonschema.Draft202012Validator(schema).validate(tenant)
    assert not jsonschema.Draft202012Validator(schema).is_valid({**tenant, "colour": "blue"})


def test_a_file_of_ten_thousand_tenants_loads(tmp_path: Path) -> None:
    path = tmp_path / "tenants.yaml"
    path.write_text(many_tenants(10_000))
    config = load_config(path, env={})
    assert len(config.tenants) == 10_000 and len(config.api_keys) == 10_000
    assert config.api_keys["key-000042"].key_hash.startswith("sha256:")
    assert config.tenants["tenant-000042"].plan == "enterprise"
