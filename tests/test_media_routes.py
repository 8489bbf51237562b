"""Images, speech, transcriptions and moderations through the gateway: the official ``openai`` SDK in front.

The gateway runs in-process (tests/resilience/helpers.py) in front of the in-process mock upstream, which
answers these routes in OpenAI's shapes and on Azure's paths; every request the mock got is read back
from ``/_mock/requests`` to check what went over the wire (a multipart form as its fields, a file as its size).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tollgate.mock.azure import AZURE_API_KEY
from tollgate.mock.media import SPEECH_BYTES_PER_CHARACTER
from tollgate.mock.upstream import MockSettings, make_mock_app
from tollgate.token_estimate import estimate_tokens

from .resilience.helpers import gateway
from .support.upstream_log import access_lines, header_values, recorded

OPENAI_KEY = "sk-openai-upstream-0123456789"
AZURE_KEY = "azure-resource-key-0123456789"
ANTHROPIC_KEY = "sk-ant-upstream-0123456789"
CLIENT_KEY = "tg-client-key"
API_VERSION = "2024-10-21"
BUDGET = 1_000_000
AUDIO = bytes(range(256)) * 125  # 32,000 bytes: two seconds of audio to the mock
PROMPT = "a lighthouse at dusk, painted in watercolour"

MakeServer = Callable[..., Awaitable[TestServer]]


def config_doc(mock_url: str, log: Path, rules: dict[str, Any] | None = None) -> dict[str, Any]:
    openai_up = {"base_url": f"{mock_url}/v1", "api_key": OPENAI_KEY}
    azure = {"provider": "azure", "base_url": mock_url, "api_key": AZURE_KEY}
    direct = [{"upstream": "openai"}]
    return {
        "listeners": {"public": {"host": "127.0.0.1", "port": 0}, "admin": {"enabled": False}},
        "upstreams": {
            "openai": openai_up,
            "azure": {**azure, "api_version": API_VERSION},
            "azure-v1": azure,
            "anthropic": {"provider": "anthropic", "base_url": mock_url, "api_key": ANTHROPIC_KEY},
        },
        "models": {
            "gpt-image-1": {"deployments": direct},
            "dall-e-3": {"deployments": direct},
            "tts-1": {"deployments": direct},
            "whisper-1": {"deployments": direct},
            "gpt-4o-transcribe": {"deployments": direct},
            "transcriber": {"deployments": [{"upstream": "openai", "model": "gpt-4o-transcribe"}]},
            # 1,000 tokens a minute: a 60 KiB upload is no 15,000 prompt tokens (its file is no text)
            "whisper-tpm": {"deployments": [{"upstream": "openai", "model": "whisper-1", "tpm": 1000}]},
            "omni-moderation-latest": {"deployments": direct},
            "azure-image": {"deployments": [{"upstream": "azure", "azure_deployment": "my-images"}]},
            "azure-whisper": {"deployments": [{"upstream": "azure-v1", "azure_deployment": "my-whisper"}]},
            "azure-moderation": {"deployments": [{"upstream": "azure", "azure_deployment": "my-moderation"}]},
            "claude-sonnet": {"deployments": [{"upstream": "anthropic", "model": "claude-sonnet-4-5"}]},
        },
        "guard": {"max_upload_bytes": "64KiB"},
        "rules": rules
        or {
            "tph": {
                "type": "token_limit",
                "limit": BUDGET,
                "per": "hour",
                "scope": ["tenant"],
                "attach": {"global": True},
            }
        },
        "access_log": {"path": str(log)},
        "usage": {"flush_interval": "100ms"},
    }


@pytest.fixture
async def mock_url(aiohttp_server: MakeServer) -> str:
    app = make_mock_app(MockSettings())
    app[AZURE_API_KEY] = AZURE_KEY
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
async def gw(mock_url: str, log_path: Path) -> AsyncIterator[str]:
    async with gateway(config_doc(mock_url, log_path)) as (url, _state):
        yield url


@pytest.fixture
async def client(gw: str) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=f"{gw}/v1", api_key=CLIENT_KEY, max_retries=0)
    try:
        yield sdk
    finally:
        await sdk.close()


def assert_sent_with_the_gateways_key(request: dict[str, Any]) -> None:
    """The upstream's own credential once; nothing of the client's."""
    assert header_values(request, "authorization") == [f"Bearer {OPENAI_KEY}"]
    assert not any(CLIENT_KEY in value for _, value in request["headers"])


def remaining_tokens(response: Any) -> int:
    return int(response.headers["x-ratelimit-remaining-tokens"])


# -- images -------------------------------------------------------------------------------


async def test_gpt_image_usage_settles_the_token_reservation(
    client: openai.AsyncOpenAI, mock_url: str, log_path: Path
) -> None:
    first = await client.images.with_raw_response.generate(model="gpt-image-1", prompt=PROMPT)
    image = first.parse()
    assert image.data is not None and image.data[0].b64_json
    assert image.usage is not None
    used = image.usage.input_tokens + image.usage.output_tokens
    assert used > 1000  # the image's output tokens: far more than the prompt the reservation held
    await asyncio.sleep(0.3)  # settling runs just after each answer
    second = await client.images.with_raw_response.generate(model="gpt-image-1", prompt=PROMPT)
    reserved = BUDGET - remaining_tokens(first)
    assert reserved == estimate_tokens(len(PROMPT))  # the prompt, and no completion
    assert remaining_tokens(first) - remaining_tokens(second) == used
    line = (await access_lines(log_path, 1))[0]
    assert (line["endpoint"], line["usage_reported"]) == ("image", True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (image.usage.input_tokens, image.usage.output_tokens)
    request = (await recorded(mock_url))[0]
    assert request["path"] == "/v1/images/generations"
    assert header_values(request, "content-type") == ["application/json"]
    assert_sent_with_the_gateways_key(request)


async def test_a_dall_e_image_without_usage_is_counted_at_its_prompts_estimate(
    client: openai.AsyncOpenAI, log_path: Path
) -> None:
    first = await client.images.with_raw_response.generate(model="dall-e-3", prompt=PROMPT)
    image = first.parse()
    assert image.data is not None and image.data[0].url and image.data[0].revised_prompt == PROMPT
    await asyncio.sleep(0.3)
    second = await client.images.with_raw_response.generate(model="dall-e-3", prompt=PROMPT)
    estimate = estimate_tokens(len(PROMPT))
    assert BUDGET - remaining_tokens(first) == estimate
    assert remaining_tokens(first) - remaining_tokens(second) == estimate
    line = (await access_lines(log_path, 1))[0]
    assert (line["endpoint"], line["status"], line["usage_reported"]) == ("image", 200, False)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (estimate, 0)


async def test_a_request_limit_refuses_the_image_request_past_it_with_429(mock_url: str, log_path: Path) -> None:
    rules = {"images": {"type": "request_limit", "limit": 2, "per": "minute", "attach": {"global": True}}}
    async with (
        gateway(config_doc(mock_url, log_path, rules)) as (url, _state),
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=CLIENT_KEY, max_retries=0) as sdk,
    ):
        for _ in range(2):
            await sdk.images.generate(model="dall-e-3", prompt=PROMPT)
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.images.generate(model="dall-e-3", prompt=PROMPT)
    assert refused.value.status_code == 429
    assert refused.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(await recorded(mock_url)) == 2  # the third never reached the upstream


async def test_an_anthropic_served_model_refuses_image_generation_with_400_unsupported_endpoint(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.images.generate(model="claude-sonnet", prompt=PROMPT)
    assert refused.value.code == "unsupported_endpoint"
    assert "Anthropic" in refused.value.message
    assert await recorded(mock_url) == []


# -- speech -------------------------------------------------------------------------------


@pytest.mark.parametrize(("response_format", "content_type"), [("mp3", "audio/mpeg"), ("wav", "audio/wav")])
async def test_speech_relays_the_audio_bytes_with_the_upstreams_content_type(
    client: openai.AsyncOpenAI, mock_url: str, log_path: Path, response_format: Any, content_type: str
) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    speech = await client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format=response_format)
    audio = speech.read()
    assert len(audio) == SPEECH_BYTES_PER_CHARACTER * len(text)
    assert speech.response.headers["content-type"] == content_type
    assert audio.startswith(b"ID3" if response_format == "mp3" else b"RIFF")
    line = (await access_lines(log_path, 1))[0]
    assert (line["endpoint"], line["usage_reported"]) == ("speech", False)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (estimate_tokens(len(text)), 0)
    assert_sent_with_the_gateways_key((await recorded(mock_url))[0])


# -- transcriptions -----------------------------------------------------------------------


async def test_a_transcription_uploads_the_file_as_it_came_with_the_clients_boundary(
    client: openai.AsyncOpenAI, mock_url: str, log_path: Path
) -> None:
    text = await client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", AUDIO, "audio/wav"), response_format="text", language="en"
    )
    assert isinstance(text, str) and text.strip()
    (request,) = await recorded(mock_url)
    assert request["path"] == "/v1/audio/transcriptions"
    assert request["body"]["model"] == "whisper-1"
    assert request["body"]["language"] == "en"
    assert request["body"]["file"] == {"filename": "speech.wav", "content_type": "audio/wav", "size": len(AUDIO)}
    (content_type,) = header_values(request, "content-type")
    assert content_type.startswith("multipart/form-data; boundary=")
    assert_sent_with_the_gateways_key(request)
    line = (await access_lines(log_path, 1))[0]
    assert (line["endpoint"], line["usage_reported"], line["completion_tokens"]) == ("transcription", False, 0)
    assert line["prompt_tokens"] == 1  # no text prompt; never the upload's size


async def test_a_gpt_4o_transcription_usage_settles_the_token_reservation(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    first = await client.audio.transcriptions.with_raw_response.create(
        model="transcriber", file=("speech.wav", AUDIO, "audio/wav")
    )
    usage = orjson.loads(first.content)["usage"]
    assert first.parse().text
    await asyncio.sleep(0.3)
    second = await client.audio.transcriptions.with_raw_response.create(
        model="transcriber", file=("speech.wav", AUDIO, "audio/wav")
    )
    assert BUDGET - remaining_tokens(first) == 1
    assert remaining_tokens(first) - remaining_tokens(second) == usage["input_tokens"] + usage["output_tokens"]
    # The alias's deployment model replaced the form's model field; the file went on untouched.
    request = (await recorded(mock_url))[0]
    assert request["body"]["model"] == "gpt-4o-transcribe"
    assert request["body"]["file"]["size"] == len(AUDIO)


async def test_a_deployment_with_a_tpm_limit_serves_an_upload_whose_file_is_larger_than_its_minute(
    client: openai.AsyncOpenAI,
) -> None:
    text = await client.audio.transcriptions.create(
        model="whisper-tpm", file=("long.wav", bytes(60 * 1024), "audio/wav"), response_format="text"
    )
    assert text


async def test_an_upload_over_max_upload_bytes_gets_413_without_reaching_the_upstream(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        await client.audio.transcriptions.create(model="whisper-1", file=("big.wav", bytes(70 * 1024), "audio/wav"))
    assert refused.value.status_code == 413
    assert await recorded(mock_url) == []


async def test_a_multipart_body_without_a_boundary_gets_400_naming_it(gw: str, mock_url: str) -> None:
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "multipart/form-data"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{gw}/v1/audio/transcriptions", data=b"--x\r\n", headers=headers) as r:
            status, doc = r.status, await r.json()
        form = aiohttp.FormData()  # a form without its model field
        form.add_field("file", AUDIO, filename="a.wav", content_type="audio/wav")
        auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with s.post(f"{gw}/v1/audio/transcriptions", data=form, headers=auth) as r:
            missing = r.status, (await r.json())["error"]["code"]
    assert status == 400
    assert doc["error"]["code"] == "invalid_content_type" and "boundary" in doc["error"]["message"]
    assert missing == (400, "missing_model")
    assert await recorded(mock_url) == []


async def test_a_form_that_names_its_model_twice_is_refused(gw: str, mock_url: str) -> None:
    form = aiohttp.FormData()
    form.add_field("model", "whisper-1")
    form.add_field("file", AUDIO, filename="a.wav", content_type="audio/wav")
    form.add_field("model", "gpt-4o-transcribe")
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{gw}/v1/audio/transcriptions", data=form, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r,
    ):
        status, doc = r.status, await r.json()
    assert (status, doc["error"]["param"]) == (400, "model")
    assert await recorded(mock_url) == []


# -- moderations --------------------------------------------------------------------------


async def test_a_moderation_without_a_model_is_routed_as_omni_moderation_latest_with_its_body_unchanged(
    client: openai.AsyncOpenAI, mock_url: str, log_path: Path
) -> None:
    answer = await client.moderations.with_raw_response.create(input="I will attack the castle")
    result = answer.parse()
    assert result.results[0].flagged and result.results[0].categories.violence
    assert answer.headers["x-tollgate-model"] == "omni-moderation-latest"
    named = await client.moderations.create(model="omni-moderation-latest", input=["hello", "goodbye"])
    assert len(named.results) == 2
    unnamed, with_model = await recorded(mock_url)
    assert "model" not in unnamed["body"]
    assert with_model["body"]["model"] == "omni-moderation-latest"
    line = (await access_lines(log_path, 1))[0]
    assert (line["endpoint"], line["model"], line["completion_tokens"]) == ("moderation", "omni-moderation-latest", 0)
    assert line["prompt_tokens"] == estimate_tokens(len("I will attack the castle"))


# -- Azure --------------------------------------------------------------------------------


async def test_azure_deployments_get_images_and_transcriptions_on_their_own_paths(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    await client.images.generate(model="azure-image", prompt=PROMPT)
    await client.audio.transcriptions.create(model="azure-whisper", file=("a.wav", AUDIO, "audio/wav"))
    image, transcription = await recorded(mock_url)
    assert image["path"] == "/openai/deployments/my-images/images/generations"
    assert image["query"] == f"api-version={API_VERSION}"
    assert transcription["path"] == "/openai/v1/audio/transcriptions"
    assert transcription["body"]["model"] == "my-whisper"  # the v1 API takes the deployment as the model
    assert transcription["body"]["file"]["size"] == len(AUDIO)
    for request in (image, transcription):
        assert header_values(request, "api-key") == [AZURE_KEY]
        assert header_values(request, "authorization") == []


async def test_an_azure_served_model_refuses_moderations_with_400_unsupported_endpoint(
    client: openai.AsyncOpenAI, mock_url: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.moderations.create(model="azure-moderation", input="hello")
    assert refused.value.code == "unsupported_endpoint"
    assert "/v1/moderations" in refused.value.message
    assert await recorded(mock_url) == []
