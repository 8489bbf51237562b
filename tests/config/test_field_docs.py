"""Field descriptions come from the records' attribute docstrings when a JSON Schema is made, and only then.

Pydantic's own ``use_attribute_docstrings`` re-parsed a record's whole module for each record as it was built,
which every start and reload paid. The schema must say the same (test_schema.py holds config/schema.json equal to
the models' output), and loading a config must not read a line of source.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Annotated

import pytest
from pydantic import BaseModel, Field, TypeAdapter

from tollgate.config import KeyDoc, doc_schema
from tollgate.config.field_docs import attribute_docs
from tollgate.config.validation import CONFIG, Doc, section

from ..support.processes import REPO


class _Base(Doc):
    kept: int = 0
    """Said once, in the base."""

    redeclared: int = 0
    """The base's text."""


class _Child(_Base):
    redeclared: int = 1

    own: str = ""
    """First line.

        Indented continuation, cleaned as inspect.cleandoc does."""

    no_doc: int = 0
    loose: int = 0  # a comment is not a docstring


@section
@dataclass(frozen=True)
class _Section:
    plain: int = 0
    """A dataclass record's field."""


def test_docstrings_are_read_from_the_class_and_its_bases_as_pydantic_read_them() -> None:
    docs = attribute_docs(_Child)
    assert docs == {
        "kept": "Said once, in the base.",
        "own": "First line.\n\nIndented continuation, cleaned as inspect.cleandoc does.",
    }, "an inherited field keeps its base's text; a field declared again without one has none"
    assert attribute_docs(_Section) == {"plain": "A dataclass record's field."}


class _Given(Doc):
    given: int = Field(0, description="Said with the field.")
    """A docstring under it."""

    annotated: Annotated[int, Field(description="Said in the annotation.")] = 0
    """Another docstring."""


@section
@dataclass(frozen=True)
class _GivenSection:
    annotated: Annotated[int, Field(description="Said in the annotation.")] = 0
    """A docstring under it."""


def test_a_description_given_with_the_field_wins_over_the_docstring_as_in_pydantic() -> None:
    props = TypeAdapter(_Given).json_schema()["properties"]
    assert props["given"]["description"] == "Said with the field."
    assert props["annotated"]["description"] == "Said in the annotation."
    assert TypeAdapter(_GivenSection).json_schema()["properties"]["annotated"]["description"] == (
        "Said in the annotation."
    )


def test_a_class_made_in_a_function_is_found_by_its_qualified_name() -> None:
    def make() -> type[BaseModel]:
        class Inner(Doc):
            field: int = 0
            """Inside a function."""

        return Inner

    inner = make()
    assert "<locals>" in inner.__qualname__
    assert attribute_docs(inner) == {"field": "Inside a function."}


def test_a_class_without_source_has_no_descriptions() -> None:
    made = type("Made", (), {"__annotations__": {"x": int}, "__module__": __name__})
    assert attribute_docs(made) == {}


def test_the_schema_describes_each_property_under_its_alias() -> None:
    schema = TypeAdapter(_Child).json_schema()
    props = schema["properties"]
    assert props["own"]["description"].startswith("First line.")
    assert props["kept"]["description"] == "Said once, in the base."
    assert "description" not in props["redeclared"]
    assert "description" not in props["no_doc"] and "description" not in props["loose"]
    key = doc_schema(KeyDoc)
    assert key["properties"]["key_hash"]["description"] == "The stored form, sha256:<hex> or hmac-sha256:<hex>."
    assert CONFIG.get("use_attribute_docstrings") is not True


@pytest.mark.process
def test_loading_a_config_reads_no_source_and_the_schema_still_describes_fields() -> None:
    """In a fresh process (the records are built once per process): importing the server and loading the example
    config calls none of inspect's source readers; making the schema afterwards does, and describes the fields."""
    script = textwrap.dedent(
        f"""
        import inspect
        calls = []
        for name in ("getsource", "getsourcelines", "findsource"):
            real = getattr(inspect, name)
            def spy(*a, _real=real, _name=name, **k):
                calls.append(_name)
                return _real(*a, **k)
            setattr(inspect, name, spy)
        import tollgate.process.cli, tollgate.process.server
        from tollgate.config import load_config, file_schema
        load_config({str(REPO / "config" / "gateway.example.yaml")!r})
        assert calls == [], calls
        schema = file_schema()
        assert calls, "the schema reads the records' source"
        key = schema["$defs"]["KeyDoc"]["properties"]
        assert key["key_hash"]["description"].startswith("The stored form"), key["key_hash"]
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
