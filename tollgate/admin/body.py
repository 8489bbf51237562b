"""The one reader of the admin API's JSON bodies: empty or malformed JSON refused alike, then the body's model."""

from __future__ import annotations

from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel

from tollgate.admin.models import Refusal, invalid_input, parse
from tollgate.errors import BadRequest

__all__ = ["read_body", "read_json"]

M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request, *, empty: dict[str, object] | None = None) -> object:
    """The body as JSON; ``empty`` stands for an empty body when given, else an empty body is refused."""
    raw = await request.read()
    if not raw:
        if empty is not None:
            return empty
        raise BadRequest("the request body is empty; send a JSON object", code="invalid_json")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc.msg}", code="invalid_json") from None


async def read_body(request: web.Request, model: type[M], refused: Refusal = invalid_input) -> M:
    """The body validated by ``model``; a body that does not fit is refused in the words of ``refused``."""
    return parse(model, await read_json(request), refused)
