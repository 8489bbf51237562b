"""The mock upstream's images, audio and moderation endpoints: the official OpenAI SDK against a started mock."""

from __future__ import annotations

import argparse
import base64
import io
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI

from tollgate.mock.media import AUDIO_BYTES_PER_SECOND, SPEECH_BYTES_PER_CHARACTER
from tollgate.mock.upstream import MockSettings, add_arguments, settings_from_args

from .support.processes import Proc

pytestmark = pytest.mark.mock_upstream("--azure-api-key", "cli-azure-key")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
API_VERSION = "2025-04-01-preview"


def sdk(base: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)


async def recorded(base: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/_mock/requests") as resp:
        requests: list[dict[str, Any]] = (await resp.json())["requests"]
        return requests


def audio_file(size: int) -> tuple[str, io.BytesIO, str]:
    return ("speech.mp3", io.BytesIO(b"\x01" * size), "audio/mpeg")


# ---------------------------------------------------------------- images


async def test_gpt_image_answers_b64_png_and_token_usage(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        images = await client.images.generate(model="gpt-image-1", prompt="A lighthouse at dusk", n=2)
    assert images.data is not None and len(images.data) == 2
    assert all(image.b64_json and base64.b64decode(image.b64_json).startswith(PNG_MAGIC) for image in images.data)
    assert images.data[0].url is None
    usage = images.usage
    assert usage is not None and usage.output_tokens == 2 * 1056  # medium quality, 1024x1024
    assert usage.input_tokens == usage.input_tokens_details.text_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert images.size == "1024x1024" and images.quality == "medium"


async def test_dall_e_answers_urls_that_serve_the_image_or_b64_when_asked_and_no_usage(mock_server: Any) -> None:
    base = await mock_server()
    async with sdk(base) as client:
        by_url = await client.images.generate(model="dall-e-3", prompt="A red kite", size="1024x1024")
        by_b64 = await client.images.generate(model="dall-e-2", prompt="A red kite", response_format="b64_json")
        with pytest.raises(openai.BadRequestError) as too_many:
            await client.images.generate(model="dall-e-3", prompt="A red kite", n=2)
    assert by_url.usage is None and by_b64.usage is None and too_many.value.param == "n"
    assert by_url.data is not None and by_b64.data is not None
    (image,) = by_url.data
    assert image.b64_json is None and image.url is not None and image.revised_prompt == "A red kite"
    async with aiohttp.ClientSession() as session, session.get(image.url) as resp:
        assert resp.status == 200 and resp.content_type == "image/png"
        assert (await resp.read()).startswith(PNG_MAGIC)
    (encoded,) = by_b64.data
    assert encoded.url is None and encoded.revised_prompt is None
    assert encoded.b64_json is not None and base64.b64decode(encoded.b64_json).startswith(PNG_MAGIC)


# ---------------------------------------------------------------- audio


async def test_speech_is_deterministic_audio_bytes_proportional_to_the_input(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        short = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello")
        long = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello" * 3)
        again = await client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input="Hello")
        wav = await client.audio.speech.create(model="tts-1", voice="nova", input="Hello", response_format="wav")
    assert short.response.headers["content-type"] == "audio/mpeg"
    assert len(short.content) == 5 * SPEECH_BYTES_PER_CHARACTER and len(long.content) == 3 * len(short.content)
    assert short.content == again.content and short.content.startswith(b"ID3")
    assert wav.response.headers["content-type"] == "audio/wav"
    assert wav.content[:4] == b"RIFF" and wav.content[8:12] == b"WAVE"


async def test_transcription_of_an_upload_is_json_with_token_usage_for_gpt_4o_models(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        transcript = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=audio_file(4 * AUDIO_BYTES_PER_SECOND)
        )
        whisper = await client.audio.transcriptions.create(
            model="whisper-1", file=audio_file(4 * AUDIO_BYTES_PER_SECOND)
        )
    assert transcript.text == "the quick brown fox jumps over a lazy dog while"  # 10 words for 4 seconds
    usage = transcript.usage
    assert usage is not None and usage.type == "tokens"
    assert usage.output_tokens == 10 and usage.input_tokens == 40
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert whisper.text == transcript.text and whisper.usage is None


async def test_transcription_answers_text_and_verbose_json_and_refuses_a_format_the_model_lacks(
    mock_server: Any,
) -> None:
    async with sdk(await mock_server()) as client:
        text = await client.audio.transcriptions.create(
            model="gpt-4o-mini-transcribe", file=audio_file(AUDIO_BYTES_PER_SECOND), response_format="text"
        )
        verbose = await client.audio.transcriptions.create(
            model="whisper-1", file=audio_file(2 * AUDIO_BYTES_PER_SECOND), response_format="verbose_json"
        )
        with pytest.raises(openai.BadRequestError) as refused:
            await client.audio.transcriptions.create(
                model="gpt-4o-transcribe", file=audio_file(10), response_format="verbose_json"
            )
    assert text == "the quick brown\n"
    assert verbose.duration == 2.0 and verbose.text == "the quick brown fox jumps"
    assert verbose.segments is not None and verbose.segments[0].end == 2.0
    assert refused.value.param == "response_format"


async def test_a_transcription_is_recorded_with_its_fields_and_the_files_size_not_its_bytes(mock_server: Any) -> None:
    base = await mock_server()
    async with sdk(base) as client:
        await client.audio.transcriptions.create(
            model="whisper-1", file=audio_file(1234), response_format="json", language="en"
        )
    (request,) = await recorded(base)
    assert request["path"] == "/v1/audio/transcriptions"
    assert request["body"] == {
        "model": "whisper-1",
        "response_format": "json",
        "language": "en",
        "file": {"filename": "speech.mp3", "content_type": "audio/mpeg", "size": 1234},
    }


async def test_fault_knobs_apply_to_media_endpoints(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        with pytest.raises(openai.InternalServerError):
            await client.audio.transcriptions.create(
                model="whisper-1", file=audio_file(10), extra_headers={"x-mock-status": "503"}
            )
        with pytest.raises(openai.APIConnectionError):
            await client.images.generate(model="dall-e-2", prompt="x", extra_headers={"x-mock-cut-after": "0"})


# ---------------------------------------------------------------- moderations


async def test_moderation_answers_one_result_per_input_flagging_the_words_of_a_category(mock_server: Any) -> None:
    async with sdk(await mock_server()) as client:
        moderated = await client.moderations.create(
            model="omni-moderation-latest", input=["Have a nice day.", "I will kill the process, then attack."]
        )
        single = await client.moderations.create(input="Hello")
    assert moderated.id.startswith("modr-") and moderated.model == "omni-moderation-latest"
    calm, violent = moderated.results
    assert not calm.flagged and not any(calm.categories.model_dump().values())
    assert violent.flagged and violent.categories.violence and not violent.categories.hate
    assert violent.category_scores.violence > 0.9 > violent.category_scores.hate
    assert len(single.results) == 1 and not single.results[0].flagged


# ---------------------------------------------------------------- Azure


async def test_azure_deployment_image_path_needs_api_version_and_the_expected_key(mock_server: Any) -> None:
    base = await mock_server(azure_api_key="azure-secret")
    azure = AsyncAzureOpenAI(
        azure_endpoint=base, azure_deployment="images", api_key="azure-secret", api_version=API_VERSION, max_retries=0
    )
    async with azure:
        images = await azure.images.generate(model="gpt-image-1", prompt="A lighthouse")
    assert images.data is not None and images.usage is not None
    (request,) = await recorded(base)
    assert request["path"] == "/openai/deployments/images/images/generations"
    assert request["query"] == f"api-version={API_VERSION}"
    async with aiohttp.ClientSession() as session:
        url = f"{base}/openai/deployments/images/images/generations"
        body = {"model": "gpt-image-1", "prompt": "x"}
        async with session.post(url, json=body, headers={"api-key": "azure-secret"}) as unversioned:
            assert unversioned.status == 400
        async with session.post(f"{url}?api-version={API_VERSION}", json=body, headers={"api-key": "no"}) as wrong:
            assert wrong.status == 401


async def test_azure_deployment_audio_paths_answer_speech_and_transcriptions(mock_server: Any) -> None:
    base = await mock_server()
    async with AsyncAzureOpenAI(
        azure_endpoint=base, azure_deployment="tts", api_key="any", api_version=API_VERSION, max_retries=0
    ) as azure:
        audio = await azure.audio.speech.create(model="tts-1", voice="alloy", input="Hi")
        transcript = await azure.audio.transcriptions.create(model="whisper-1", file=audio_file(10))
    assert len(audio.content) == 2 * SPEECH_BYTES_PER_CHARACTER and transcript.text == "the"
    assert [r["path"] for r in await recorded(base)] == [
        "/openai/deployments/tts/audio/speech",
        "/openai/deployments/tts/audio/transcriptions",
    ]


# ---------------------------------------------------------------- the CLI option


def test_azure_api_key_flag_maps_onto_the_setting() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert settings_from_args(parser.parse_args([])).azure_api_key is None
    settings = settings_from_args(parser.parse_args(["--azure-api-key", "k-1"]))
    assert settings == MockSettings(azure_api_key="k-1") and "k-1" not in repr(settings)
    with pytest.raises(ValueError, match="azure_api_key"):
        MockSettings(azure_api_key="")


async def test_mock_process_started_with_an_azure_key_refuses_other_keys_on_azure_paths(mock: Proc) -> None:
    url = f"{mock.url}/openai/v1/responses"
    body = {"model": "d", "input": "x"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers={"api-key": "cli-azure-key"}) as right:
            assert right.status == 200 and (await right.json())["object"] == "response"
        async with session.post(url, json=body, headers={"api-key": "other"}) as wrong:
            assert wrong.status == 401
        async with session.post(f"{mock.url}/v1/responses", json=body) as openai_path:
            assert openai_path.status == 200  # the key guards Azure's paths only
