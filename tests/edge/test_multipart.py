"""The multipart/form-data scanner: boundaries, text fields and their spans, and what it refuses."""

from __future__ import annotations

import pytest

from tollgate.edge.multipart import MAX_PART_HEADER_BYTES, FormField, form_boundary, scan_form, with_field
from tollgate.errors import BadRequest

B = b"XyZ-boundary"
AUDIO = b"RIFF\x00\x01--XyZ-boundar\r\n--XyZ-boundaryX not a delimiter\r\n\x00\xff" * 20


def form(*parts: tuple[str, bytes, str | None], eol: bytes = b"\r\n", boundary: bytes = B) -> bytes:
    """A form: (name, value, filename) parts, lines ending in ``eol``."""
    out = b""
    for name, value, filename in parts:
        out += b"--" + boundary + eol
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += disposition.encode() + eol
        if filename is not None:
            out += b"Content-Type: audio/wav" + eol
        out += eol + value + eol
    return out + b"--" + boundary + b"--" + eol


def values(fields: list[FormField]) -> list[tuple[str, str | None]]:
    return [(f.name, f.value) for f in fields]


# -- the Content-Type ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "boundary"),
    [
        ("multipart/form-data; boundary=XyZ-boundary", b"XyZ-boundary"),
        ('multipart/form-data; boundary="with space and ;semicolon"', b"with space and ;semicolon"),
        ("Multipart/Form-Data ; charset=utf-8;BOUNDARY=abc", b"abc"),
        ('multipart/form-data; boundary="a\\"b"', b'a"b'),
    ],
)
def test_the_boundary_is_read_from_the_content_type_quoted_or_not(content_type: str, boundary: bytes) -> None:
    assert form_boundary(content_type) == boundary


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        (None, "multipart/form-data"),
        ("application/json", "multipart/form-data"),
        ("multipart/mixed; boundary=abc", "multipart/form-data"),
        ("multipart/form-data", "boundary"),
        ("multipart/form-data; boundary=", "boundary"),
        ('multipart/form-data; boundary=""', "boundary"),
        ("multipart/form-data; boundary=" + "a" * 71, "boundary"),
    ],
)
def test_a_content_type_that_is_not_a_form_with_a_boundary_is_refused_naming_what_is_missing(
    content_type: str | None, named: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        form_boundary(content_type)
    assert refused.value.code == "invalid_content_type"
    assert named in refused.value.message


# -- fields -------------------------------------------------------------------------------


def test_text_fields_are_found_in_order_and_the_file_part_is_skipped() -> None:
    body = form(("file", AUDIO, "a.wav"), ("model", b"whisper-1", None), ("response_format", b"text", None))
    fields = scan_form(body, B)
    assert values(fields) == [("model", "whisper-1"), ("response_format", "text")]
    assert body[fields[0].start : fields[0].end] == b"whisper-1"


def test_bare_lf_line_ends_are_read_like_crlf_ones() -> None:
    crlf = scan_form(form(("model", b"m1", None), ("file", AUDIO, "a.wav"), ("prompt", b"hi", None)), B)
    lf = scan_form(form(("model", b"m1", None), ("file", AUDIO, "a.wav"), ("prompt", b"hi", None), eol=b"\n"), B)
    assert values(crlf) == values(lf) == [("model", "m1"), ("prompt", "hi")]


def test_a_value_keeps_its_inner_line_breaks_and_loses_only_the_delimiters() -> None:
    (field,) = scan_form(form(("prompt", b"line one\r\nline two\r\n", None)), B)
    assert field.value == "line one\r\nline two\r\n"


def test_a_repeated_field_is_reported_each_time_it_occurs() -> None:
    fields = scan_form(form(("model", b"cheap", None), ("file", AUDIO, "a.wav"), ("model", b"costly", None)), B)
    assert values(fields) == [("model", "cheap"), ("model", "costly")]


def test_an_empty_value_is_an_empty_string() -> None:
    assert values(scan_form(form(("language", b"", None)), B)) == [("language", "")]


def test_a_preamble_and_an_epilogue_are_ignored() -> None:
    body = b"preamble text\r\n" + form(("model", b"m", None)) + b"epilogue --XyZ-boundary\r\n"
    assert values(scan_form(body, B)) == [("model", "m")]


def test_a_quoted_boundary_with_spaces_delimits_the_parts() -> None:
    boundary = form_boundary('multipart/form-data; boundary="a b c"')
    body = form(("model", b"m", None), boundary=boundary)
    assert values(scan_form(body, boundary)) == [("model", "m")]


def test_a_part_whose_headers_name_a_filename_is_a_file_even_without_a_content_type() -> None:
    body = (
        b'--XyZ-boundary\r\nContent-Disposition: form-data; name="model"; filename="model"\r\n\r\nx\r\n--XyZ-boundary--'
    )
    assert scan_form(body, B) == []


def test_a_value_past_the_text_bound_is_found_without_being_read() -> None:
    (field,) = scan_form(form(("prompt", b"x" * 100, None)), B, max_text_bytes=50)
    assert (field.value, field.end - field.start) == (None, 100)


def test_a_value_that_is_not_utf8_has_no_value() -> None:
    (field,) = scan_form(form(("model", b"\xff\xfe", None)), B)
    assert field.value is None


def test_with_field_rewrites_only_that_value() -> None:
    body = form(("file", AUDIO, "a.wav"), ("model", b"alias", None), ("prompt", b"p", None))
    model = next(f for f in scan_form(body, B) if f.name == "model")
    rewritten = with_field(body, model, "gpt-4o-transcribe")
    assert rewritten == body.replace(b"\r\n\r\nalias\r\n", b"\r\n\r\ngpt-4o-transcribe\r\n")
    assert values(scan_form(rewritten, B)) == [("model", "gpt-4o-transcribe"), ("prompt", "p")]


# -- refusals -----------------------------------------------------------------------------


def refusal(body: bytes, **bounds: int) -> str:
    with pytest.raises(BadRequest) as refused:
        scan_form(body, B, **bounds)
    assert refused.value.code == "invalid_multipart"
    return refused.value.message


def test_a_body_without_its_boundary_is_refused() -> None:
    assert "never occurs" in refusal(b'--other\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--other--')


def test_an_empty_body_is_refused() -> None:
    assert "never occurs" in refusal(b"")


@pytest.mark.parametrize(
    "cut",
    [
        20,  # inside the first headers
        60,  # inside the model's value
        -3,  # inside the close delimiter
        -len(b"--XyZ-boundary--\r\n"),  # before the close delimiter
    ],
)
def test_a_truncated_body_is_refused(cut: int) -> None:
    body = form(("model", b"whisper-1", None), ("file", AUDIO, "a.wav"))
    assert "truncated" in refusal(body[:cut])


def test_part_headers_past_the_bound_are_refused_without_reading_on() -> None:
    huge = b'--XyZ-boundary\r\nContent-Disposition: form-data; name="model"\r\nX-Pad: ' + b"a" * (
        MAX_PART_HEADER_BYTES + 10
    )
    body = huge + b"\r\n\r\nm\r\n--XyZ-boundary--\r\n"
    assert f"exceed {MAX_PART_HEADER_BYTES} bytes" in refusal(body)


def test_a_header_line_without_a_name_is_refused() -> None:
    body = b"--XyZ-boundary\r\nnot a header\r\n\r\nm\r\n--XyZ-boundary--\r\n"
    assert "no name" in refusal(body)


def test_more_parts_than_the_bound_are_refused() -> None:
    body = form(*[("f", b"v", None)] * 5)
    assert "more than 4 parts" in refusal(body, max_parts=4)


def test_a_boundary_prefix_inside_a_file_is_not_a_delimiter() -> None:
    body = form(("file", b"abc\r\n--XyZ-boundaryZZZ\r\ndef", "a.wav"), ("model", b"m", None))
    assert values(scan_form(body, B)) == [("model", "m")]
