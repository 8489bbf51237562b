"""The admin API's models: the one place that validates a body with a model and turns models into JSON Schema."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from pydantic_core import ErrorDetails

from tollgate.errors import BadRequest

__all__ = [
    "Body",
    "JsonSchema",
    "Problem",
    "Refusal",
    "View",
    "checked_later",
    "component_schemas",
    "invalid_input",
    "parse",
]

M = TypeVar("M", bound=BaseModel)

JsonSchema = dict[str, Any]
"""A JSON Schema (2020-12, as OpenAPI 3.1 uses it) written out as data."""
SCHEMA_REF = "#/components/schemas/{model}"


class Body(BaseModel):
    """A request body: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


class View(BaseModel):
    """An answer, described for the document: the routes build the JSON themselves."""

    model_config = ConfigDict(defer_build=True)


def _as_given(value: object) -> object:
    return value


def checked_later(shape: object) -> PlainValidator:
    """For ``Annotated[object, checked_later(list[TenantInput])]``: a field taken as given, for the config parser to
    check after (its problems name the field paths), and described in the document as ``shape``."""
    return PlainValidator(_as_given, json_schema_input_type=shape)


class Problem(NamedTuple):
    """One thing wrong with a body: the field path (empty for the body itself) and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


Refusal = Callable[[list[Problem]], BadRequest]
"""How a route words the refusal of a body, given its problems."""


def invalid_input(problems: list[Problem]) -> BadRequest:
    """The default refusal: every problem, the first one's field as ``param``."""
    return BadRequest(
        "invalid input: " + "; ".join(map(str, problems)), param=problems[0].path or None, code="invalid_input"
    )


def parse(model: type[M], doc: object, refused: Refusal = invalid_input) -> M:
    """``doc`` validated by ``model``; a :class:`BadRequest` from ``refused`` when it does not fit.

    The problems are worded as the config parser words its own (``tenants[1].id: is required``). The models are
    pydantic's; another model library would change this module only.
    """
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise refused([_problem(e) for e in exc.errors(include_url=False)]) from None


# What pydantic calls a problem, in the config parser's words.
_MESSAGES: Mapping[str, str] = {
    "missing": "is required",
    "extra_forbidden": "unknown key",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "bool_type": "must be true or false",
}


def _problem(error: ErrorDetails) -> Problem:
    path = ""
    for part in error["loc"]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return Problem(path, _MESSAGES.get(error["type"], error["msg"][:1].lower() + error["msg"][1:]))


def component_schemas(models: Iterable[type[BaseModel]]) -> tuple[dict[type[BaseModel], JsonSchema], JsonSchema]:
    """(each model's schema, a ``$ref``; the named schemas they refer to, for ``components.schemas``)."""
    unique = list(dict.fromkeys(models))
    mode: JsonSchemaMode = "validation"
    refs, defs = models_json_schema([(m, mode) for m in unique], ref_template=SCHEMA_REF)
    return {m: refs[(m, mode)] for m in unique}, defs.get("$defs", {})
