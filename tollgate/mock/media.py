"""OpenAI's image, audio and moderation endpoints on the mock upstream, answering deterministic media and OpenAI's shapes.

Each ``POST`` passes the shared front (:func:`~tollgate.mock.faults.receive`:
counted, recorded, latency, injected errors, ``cut_after`` closing and
``stall_after`` never answering); none of them streams.

- ``POST /v1/images/generations`` (JSON ``model`` (default ``dall-e-2``),
  ``prompt``, ``n`` 1..10 (dall-e-3: 1), ``size``, ``quality``,
  ``response_format``): ``{"created", "data": [...]}``, one image per ``n``, a
  1x1 PNG as ``b64_json`` or as a ``url`` served by ``GET
  /_mock/images/{name}``. dall-e models answer ``url`` unless asked
  ``b64_json``; dall-e-3 adds ``revised_prompt`` (the prompt). ``gpt-image-*``
  models always answer ``b64_json`` and add ``background``,
  ``output_format``, ``quality``, ``size`` and ``usage`` (input: the prompt's
  text tokens; output: OpenAI's image tokens for the quality and size, medium
  and 1024x1024 when ``auto``, times ``n``).
- ``POST /v1/audio/speech`` (JSON ``model``, ``input`` up to 4096 characters,
  ``voice``, ``response_format`` mp3 (default), opus, aac, flac, wav, pcm):
  deterministic bytes, :data:`SPEECH_BYTES_PER_CHARACTER` per input character,
  beginning with the format's magic (a valid WAV header for wav), with the
  format's content type.
- ``POST /v1/audio/transcriptions`` (``multipart/form-data``: ``file``,
  ``model``, optional ``response_format``, ``prompt``): the audio lasts one
  second per :data:`AUDIO_BYTES_PER_SECOND` bytes of the file; the text is the
  generated words, 5 per 2 seconds (at least one; ``completion_tokens`` when
  that knob is set). ``json`` answers ``{"text"}``, plus for ``gpt-4o*``
  models ``usage`` ``{"type": "tokens", "input_tokens" (10 audio tokens a
  second plus the prompt's), "input_token_details", "output_tokens",
  "total_tokens"}``; ``text`` the text and a newline as text/plain;
  whisper models also ``verbose_json`` (``duration``, ``language``, one
  segment, ``usage`` ``{"type": "duration", "seconds"}``), ``srt`` and
  ``vtt``; a format the model lacks is a 400.
- ``POST /v1/moderations`` (JSON ``input``: a string, a list of strings (one
  result each) or a list of text and image parts (one result); ``model``,
  default ``omni-moderation-latest``): ``{"id", "model", "results": [...]}``,
  each result with every category of OpenAI's, flagged when the text holds
  one of the category's words in :data:`FLAG_WORDS` (score 0.98, else
  0.0001).
"""

from __future__ import annotations

import base64
import math
import struct
import time
import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from tollgate.mock.faults import openai_error, receive
from tollgate.mock.generation import text_tokens
from tollgate.mock.state import MOCK_STATE

__all__ = [
    "AUDIO_BYTES_PER_SECOND",
    "FLAG_WORDS",
    "SPEECH_BYTES_PER_CHARACTER",
    "image_file",
    "image_generations",
    "moderations",
    "speech",
    "transcriptions",
]

SPEECH_BYTES_PER_CHARACTER = 400
"""Bytes of generated speech per input character (about 15 characters a second at 48 kbit/s)."""

AUDIO_BYTES_PER_SECOND = 16_000
"""How long the mock takes an uploaded audio file to last: one second per this many bytes (128 kbit/s)."""

FLAG_WORDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "harassment": ("idiot", "stupid"),
        "hate": ("vermin",),
        "illicit": ("steal", "shoplift"),
        "self-harm": ("hurt myself",),
        "sexual": ("explicit",),
        "violence": ("kill", "attack"),
    }
)
"""The words that flag a moderation category (case-insensitive substrings); the other categories never flag."""

_JSON = "application/json"
_MAX_SPEECH_INPUT = 4096
_MAX_IMAGES = 10
_WORDS_PER_SECOND = 2.5
_AUDIO_TOKENS_PER_SECOND = 10
_FLAGGED_SCORE = 0.98
_CLEAR_SCORE = 0.0001

_MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_IMAGE_CATEGORIES = frozenset(
    {"self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence", "violence/graphic"}
)

# gpt-image output tokens per image, by quality and size (OpenAI's published figures).
_IMAGE_TOKENS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "low": MappingProxyType({"1024x1024": 272, "1024x1536": 408, "1536x1024": 400}),
        "medium": MappingProxyType({"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568}),
        "high": MappingProxyType({"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208}),
    }
)

_AUDIO_TYPES: Mapping[str, tuple[str, bytes]] = MappingProxyType(
    {
        "mp3": ("audio/mpeg", b"ID3\x04\x00\x00\x00\x00\x00\x00"),
        "opus": ("audio/opus", b"OggS\x00\x02"),
        "aac": ("audio/aac", b"\xff\xf1\x50\x80"),
        "flac": ("audio/flac", b"fLaC"),
        "wav": ("audio/wav", b""),  # header built for the length
        "pcm": ("audio/pcm", b""),
    }
)
_TOKEN_FORMATS = frozenset({"json", "text"})
_WHISPER_FORMATS = frozenset({"json", "text", "srt", "verbose_json", "vtt"})


def _png_1x1() -> bytes:
    """A valid 1x1 grey PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1x1, 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    )


_PNG = _png_1x1()
_PNG_B64 = base64.b64encode(_PNG).decode()


def _json(payload: Any) -> web.Response:
    return web.Response(body=orjson.dumps(payload), headers={"Content-Type": _JSON})


def _missing(name: str) -> web.Response:
    return openai_error(400, f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")


def _invalid(name: str, message: str) -> web.Response:
    return openai_error(400, message, param=name, code="invalid_value")


# ---------------------------------------------------------------- images


async def image_generations(request: web.Request) -> web.StreamResponse:
    """``POST /v1/images/generations``."""
    state = request.app[MOCK_STATE]
    admitted = await receive(request, state, model_required=False)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, _knobs = admitted
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return _missing("prompt")
    model: str = body.get("model") or "dall-e-2"
    n = body.get("n", 1)
    most = 1 if model == "dall-e-3" else _MAX_IMAGES
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= most:
        return _invalid("n", f"Invalid 'n': must be an integer from 1 to {most} for {model}.")
    gpt_image = model.startswith("gpt-image")
    form = "b64_json" if gpt_image else body.get("response_format") or "url"
    if form not in ("url", "b64_json"):
        return _invalid("response_format", f"Invalid 'response_format': {form!r}; use 'url' or 'b64_json'.")
    created = int(time.time())
    data: list[dict[str, Any]] = []
    for index in range(n):
        if form == "b64_json":
            image: dict[str, Any] = {"b64_json": _PNG_B64}
        else:
            image = {"url": f"{request.scheme}://{request.host}/_mock/images/img-{created}-{index}.png"}
        if model == "dall-e-3":
            image["revised_prompt"] = prompt
        data.append(image)
    payload: dict[str, Any] = {"created": created, "data": data}
    if gpt_image:
        size = body.get("size") if body.get("size") in _IMAGE_TOKENS["medium"] else "1024x1024"
        quality = body.get("quality") if body.get("quality") in _IMAGE_TOKENS else "medium"
        output = _IMAGE_TOKENS[str(quality)][str(size)] * n
        prompt_tokens = text_tokens(prompt)
        payload |= {
            "background": "opaque",
            "output_format": body.get("output_format") or "png",
            "quality": quality,
            "size": size,
            "usage": {
                "input_tokens": prompt_tokens,
                "input_tokens_details": {"text_tokens": prompt_tokens, "image_tokens": 0},
                "output_tokens": output,
                "output_tokens_details": {"text_tokens": 0, "image_tokens": output},
                "total_tokens": prompt_tokens + output,
            },
        }
    return _json(payload)


async def image_file(request: web.Request) -> web.Response:
    """``GET /_mock/images/{name}``: the PNG an image ``url`` points at (every name the same image)."""
    return web.Response(body=_PNG, headers={"Content-Type": "image/png"})


# ---------------------------------------------------------------- audio


def _speech_bytes(form: str, length: int) -> bytes:
    """``length`` deterministic bytes of audio in ``form``: its magic, then a fixed pattern (silence in WAV)."""
    if form == "wav":
        data = max(0, length - 44)
        header = b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt "
        header += struct.pack("<IHHIIHH", 16, 1, 1, 24_000, 48_000, 2, 16) + b"data" + struct.pack("<I", data)
        return header + bytes(data)
    magic = _AUDIO_TYPES[form][1]
    pattern = bytes(range(251))
    filler = pattern * (length // len(pattern) + 1)
    return (magic + filler)[: max(length, len(magic))]


async def speech(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/speech``: the audio bytes."""
    state = request.app[MOCK_STATE]
    admitted = await receive(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, _knobs = admitted
    text = body.get("input")
    if not isinstance(text, str) or not text:
        return _missing("input")
    if len(text) > _MAX_SPEECH_INPUT:
        return _invalid("input", f"Invalid 'input': string too long, at most {_MAX_SPEECH_INPUT} characters.")
    if not isinstance(body.get("voice"), (str, dict)) or not body.get("voice"):
        return _missing("voice")
    form = body.get("response_format") or "mp3"
    if form not in _AUDIO_TYPES:
        return _invalid(
            "response_format", f"Invalid 'response_format': {form!r}; use one of {', '.join(_AUDIO_TYPES)}."
        )
    audio = _speech_bytes(form, SPEECH_BYTES_PER_CHARACTER * len(text))
    return web.Response(body=audio, headers={"Content-Type": _AUDIO_TYPES[form][0]})


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


async def transcriptions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/audio/transcriptions``: the text of the uploaded audio, in the requested format."""
    state = request.app[MOCK_STATE]
    admitted = await receive(request, state)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, knobs = admitted
    upload = body.get("file")
    if not isinstance(upload, dict) or not isinstance(upload.get("size"), int):
        return _missing("file")
    model: str = body["model"]
    form = body.get("response_format") or "json"
    tokens_model = model.startswith("gpt-4o")
    if form not in (_TOKEN_FORMATS if tokens_model else _WHISPER_FORMATS):
        return _invalid("response_format", f"response_format '{form}' is not compatible with model '{model}'.")
    duration = round(max(upload["size"], 1) / AUDIO_BYTES_PER_SECOND, 2)
    cap = state.settings.max_tokens_cap
    words = knobs.completion_tokens if knobs.completion_tokens is not None else math.ceil(duration * _WORDS_PER_SECOND)
    words = min(max(words, 1), cap)
    text = state.text.prefix(words)
    if form == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    if form in ("srt", "vtt"):
        separator = "," if form == "srt" else "."
        span = f"{_timestamp(0, separator)} --> {_timestamp(duration, separator)}"
        caption = f"1\n{span}\n{text}\n\n" if form == "srt" else f"WEBVTT\n\n{span}\n{text}\n\n"
        return web.Response(text=caption, content_type="text/plain")
    if form == "verbose_json":
        segment = {
            "id": 0,
            "seek": 0,
            "start": 0.0,
            "end": duration,
            "text": text,
            "tokens": list(range(50364, 50364 + words)),
            "temperature": 0.0,
            "avg_logprob": -0.25,
            "compression_ratio": 1.2,
            "no_speech_prob": 0.01,
        }
        return _json(
            {
                "task": "transcribe",
                "language": "english",
                "duration": duration,
                "text": text,
                "segments": [segment],
                "usage": {"type": "duration", "seconds": math.ceil(duration)},
            }
        )
    payload: dict[str, Any] = {"text": text}
    if tokens_model:
        prompt = body.get("prompt")
        prompt_tokens = text_tokens(prompt) if isinstance(prompt, str) and prompt else 0
        audio_tokens = max(1, math.ceil(duration * _AUDIO_TOKENS_PER_SECOND))
        payload["usage"] = {
            "type": "tokens",
            "input_tokens": audio_tokens + prompt_tokens,
            "input_token_details": {"text_tokens": prompt_tokens, "audio_tokens": audio_tokens},
            "output_tokens": words,
            "total_tokens": audio_tokens + prompt_tokens + words,
        }
    return _json(payload)


# ---------------------------------------------------------------- moderations


def _moderation(text: str, image: bool) -> dict[str, Any]:
    lowered = text.lower()
    flagged = {name for name, words in FLAG_WORDS.items() if any(word in lowered for word in words)}
    return {
        "flagged": bool(flagged),
        "categories": {name: name in flagged for name in _MODERATION_CATEGORIES},
        "category_scores": {
            name: _FLAGGED_SCORE if name in flagged else _CLEAR_SCORE for name in _MODERATION_CATEGORIES
        },
        "category_applied_input_types": {
            name: ["text", "image"] if image and name in _IMAGE_CATEGORIES else ["text"]
            for name in _MODERATION_CATEGORIES
        },
    }


async def moderations(request: web.Request) -> web.StreamResponse:
    """``POST /v1/moderations``: one result per input string, or one for a list of parts."""
    state = request.app[MOCK_STATE]
    admitted = await receive(request, state, model_required=False)
    if isinstance(admitted, web.StreamResponse):
        return admitted
    body, _knobs = admitted
    given = body.get("input")
    if isinstance(given, str):
        results = [_moderation(given, image=False)]
    elif isinstance(given, list) and given and all(isinstance(x, str) for x in given):
        results = [_moderation(text, image=False) for text in given]
    elif isinstance(given, list) and given and all(isinstance(x, dict) for x in given):
        texts = [str(x.get("text", "")) for x in given if x.get("type") == "text"]
        results = [_moderation(" ".join(texts), image=any(x.get("type") == "image_url" for x in given))]
    else:
        return _missing("input")
    model = body.get("model") or "omni-moderation-latest"
    return _json({"id": state.next_id("modr"), "model": model, "results": results})
