"""The mock's Azure OpenAI paths: the OpenAI endpoints behind Azure's URLs, its ``api-key`` and its ``api-version``.

Azure OpenAI speaks OpenAI's dialect at other addresses, so these routes put
Azure's front on the mock's OpenAI endpoints (tollgate/mock/endpoints.py):

* ``POST /openai/deployments/{deployment}/chat/completions`` (and
  ``/completions``, ``/embeddings``): the deployment URLs; the
  ``api-version`` query parameter is required (a 400 in Azure's error shape
  without it, or with one that is not a date such as ``2024-10-21`` or
  ``2025-04-01-preview``);
* ``POST /openai/deployments/{deployment}/images/generations``,
  ``/audio/speech`` and ``/audio/transcriptions``: the same, for the media
  endpoints (tollgate/mock/media.py);
* ``POST /openai/v1/chat/completions`` (and ``/completions``,
  ``/embeddings``, ``/images/generations``, ``/audio/speech``,
  ``/audio/transcriptions``): Azure's v1 API, which takes the deployment as
  the body's model and no ``api-version``;
* ``POST /openai/v1/responses``, ``GET`` and ``DELETE
  /openai/v1/responses/{id}``: the Responses API, which Azure serves under v1
  (tollgate/mock/responses.py; the stored responses are the same as on
  ``/v1/responses``).

With an expected key (``MockSettings.azure_api_key``, CLI ``--azure-api-key``;
or ``app[AZURE_API_KEY] = "..."`` before the mock starts, which wins), a
request without that key in its ``api-key`` header gets Azure's 401; without
one any key passes. A request Azure's front refuses is answered
before the endpoint's: it is not recorded in ``/_mock/requests``, as a
request that reaches an endpoint is (with its path and query), and the fault
knobs do not apply to it.

Azure's errors are ``{"error": {"code", "message"}}``: a string code and no
``type`` or ``param``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from tollgate.mock.endpoints import chat_completions, completions, embeddings
from tollgate.mock.media import image_generations, speech, transcriptions
from tollgate.mock.responses import create_response, delete_response, retrieve_response

__all__ = [
    "AZURE_API_KEY",
    "azure_error",
    "deployment_chat_completions",
    "deployment_completions",
    "deployment_embeddings",
    "deployment_image_generations",
    "deployment_speech",
    "deployment_transcriptions",
    "v1_chat_completions",
    "v1_completions",
    "v1_create_response",
    "v1_delete_response",
    "v1_embeddings",
    "v1_image_generations",
    "v1_retrieve_response",
    "v1_speech",
    "v1_transcriptions",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

AZURE_API_KEY = web.AppKey("azure_api_key", str)
"""The key Azure's routes expect in the ``api-key`` header; unset: any key, or none, passes.

:func:`~tollgate.mock.upstream.make_mock_app` sets it from ``MockSettings.azure_api_key`` when that is given.
"""

_API_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")


def azure_error(status: int, code: str, message: str) -> web.Response:
    """An error in Azure OpenAI's shape."""
    body = orjson.dumps({"error": {"code": code, "message": message}})
    return web.Response(status=status, body=body, headers={"Content-Type": "application/json"})


def _refusal(request: web.Request, versioned: bool) -> web.Response | None:
    """Azure's answer to a request without the expected key, or (deployment URLs) without a valid api-version."""
    expected = request.app.get(AZURE_API_KEY)
    if expected is not None:
        given = request.headers.get("api-key", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return azure_error(
                401,
                "401",
                "Access denied: the api-key header is missing or wrong for this resource (mock of Azure OpenAI).",
            )
    if not versioned:
        return None
    version = request.query.get("api-version")
    if not version:
        return azure_error(
            400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required."
        )
    if not _API_VERSION.fullmatch(version):
        return azure_error(
            400,
            "InvalidApiVersionParameter",
            f"The api-version {version!r} is not a version such as 2024-10-21 or 2025-04-01-preview.",
        )
    return None


def _behind_azure(endpoint: Handler, versioned: bool) -> Handler:
    """``endpoint`` behind Azure's front: its key, and on deployment URLs its api-version."""

    async def handle(request: web.Request) -> web.StreamResponse:
        refused = _refusal(request, versioned)
        if refused is not None:
            return refused
        return await endpoint(request)

    return handle


deployment_chat_completions = _behind_azure(chat_completions, versioned=True)
deployment_completions = _behind_azure(completions, versioned=True)
deployment_embeddings = _behind_azure(embeddings, versioned=True)
v1_chat_completions = _behind_azure(chat_completions, versioned=False)
v1_completions = _behind_azure(completions, versioned=False)
v1_embeddings = _behind_azure(embeddings, versioned=False)
deployment_image_generations = _behind_azure(image_generations, versioned=True)
deployment_speech = _behind_azure(speech, versioned=True)
deployment_transcriptions = _behind_azure(transcriptions, versioned=True)
v1_image_generations = _behind_azure(image_generations, versioned=False)
v1_speech = _behind_azure(speech, versioned=False)
v1_transcriptions = _behind_azure(transcriptions, versioned=False)
v1_create_response = _behind_azure(create_response, versioned=False)
v1_retrieve_response = _behind_azure(retrieve_response, versioned=False)
v1_delete_response = _behind_azure(delete_response, versioned=False)
