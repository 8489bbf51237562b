"""``multipart/form-data`` request bodies: a Content-Type's boundary, and a form's text fields found without copying its files.

The gateway forwards an upload as the client sent it; it only needs the few
text fields its matchers and limits read (``model`` first of all). The scan
walks the body's delimiter lines with ``bytes.find`` (linear in the body, no
copy of a file part), reads each part's header block up to a bound, and keeps
the position of every text field's value, so that one field can be rewritten
in place (the deployment's model name) and the rest of the bytes left as they
are. Lines may end in CRLF (RFC 2046) or a bare LF, as lenient parsers accept:
a delimiter is ``\\n--boundary`` followed by ``--``, or by optional spaces and
a line end. Malformed input raises ``BadRequest`` with a message that says
what is wrong; nothing here is HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

from tollgate.errors import BadRequest

__all__ = [
    "MAX_BOUNDARY",
    "MAX_PARTS",
    "MAX_PART_HEADER_BYTES",
    "MAX_TEXT_BYTES",
    "FormField",
    "form_boundary",
    "scan_form",
    "with_field",
]

MAX_BOUNDARY = 70
"""RFC 2046's longest boundary, in characters."""
MAX_PART_HEADER_BYTES = 8 * 1024
"""A part's header block longer than this is refused (a form's are a line or two)."""
MAX_PARTS = 128
"""A form with more parts than this is refused (an upload form has a dozen)."""
MAX_TEXT_BYTES = 16 * 1024
"""A text field longer than this is found (its span kept) but its value not read."""

_FORM_DATA = "multipart/form-data"
_WHITESPACE = b" \t"


@dataclass(frozen=True, slots=True)
class FormField:
    """One text field (a part without a filename): its name, its value, where the value lies in the body.

    ``value`` is None when the value is longer than the scan's bound or is not UTF-8.
    """

    name: str
    value: str | None
    start: int
    end: int


def _params(text: str) -> tuple[str, dict[str, str]]:
    """A header value's leading token (lower case) and its ``; name=value`` parameters (names lower case)."""
    head, _, rest = text.partition(";")
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        name = rest[i:eq].strip().lower()
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':  # a quoted string, with backslash escapes
            i += 1
            chars: list[str] = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                chars.append(rest[i])
                i += 1
            i += 1  # the closing quote (or the end)
            value = "".join(chars)
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            value = rest[i:end].strip()
            i = end
        if name and name not in params:
            params[name] = value
    return head.strip().lower(), params


def form_boundary(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` Content-Type; ``BadRequest`` naming what is missing or wrong."""
    kind, params = _params(content_type or "")
    if kind != _FORM_DATA:
        raise BadRequest(
            f"this route takes a {_FORM_DATA} body; the Content-Type is {content_type or 'missing'!r}",
            code="invalid_content_type",
        )
    boundary = params.get("boundary")
    if not boundary:
        raise BadRequest(f"the {_FORM_DATA} Content-Type has no boundary parameter", code="invalid_content_type")
    if len(boundary) > MAX_BOUNDARY or not boundary.isascii() or any(c in "\r\n" for c in boundary):
        raise BadRequest(
            f"the multipart boundary must be 1 to {MAX_BOUNDARY} ASCII characters on one line",
            code="invalid_content_type",
        )
    return boundary.encode("ascii")


def _malformed(why: str) -> BadRequest:
    return BadRequest(f"the multipart body is malformed: {why}", code="invalid_multipart")


def _after_delimiter(body: bytes, at: int) -> tuple[bool, int] | None:
    """What follows a delimiter ending at ``at``: (True, at) for the close delimiter, (False, the next line's start)
    after optional spaces and a line end, or None when it is not a delimiter line (``--boundaryX``)."""
    if body.startswith(b"--", at):
        return True, at
    i = at
    n = len(body)
    while i < n and body[i] in _WHITESPACE:
        i += 1
    if body.startswith(b"\r\n", i):
        return False, i + 2
    if body.startswith(b"\n", i):
        return False, i + 1
    if i >= n:
        raise _malformed("it ends inside a boundary line (truncated)")
    return None


def _next_delimiter(body: bytes, marker: bytes, start: int) -> tuple[int, bool, int]:
    """The next delimiter line at or after ``start`` (``marker`` is ``\\n--boundary``): the index of its ``\\n``,
    whether it closes the form, and where the next part's headers begin."""
    search = start
    while True:
        i = body.find(marker, search)
        if i < 0:
            raise _malformed("no closing boundary (truncated)")
        after = _after_delimiter(body, i + len(marker))
        if after is not None:
            return i, after[0], after[1]
        search = i + 1


def _part_headers(body: bytes, start: int, max_header_bytes: int) -> tuple[dict[str, str], int]:
    """A part's headers (names lower case, first of each kept) and where its content begins."""
    headers: dict[str, str] = {}
    limit = start + max_header_bytes
    i = start
    last = ""
    while True:
        eol = body.find(b"\n", i, limit + 1)
        if eol < 0:
            if len(body) <= limit:
                raise _malformed("it ends inside a part's headers (truncated)")
            raise _malformed(f"a part's headers exceed {max_header_bytes} bytes")
        line = body[i:eol]
        if line.endswith(b"\r"):
            line = line[:-1]
        i = eol + 1
        if not line:
            return headers, i
        text = line.decode("utf-8", "replace")
        if text[0] in " \t" and last:  # an obsolete folded continuation
            headers[last] += " " + text.strip()
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            raise _malformed(f"a part header line has no name: {text[:60]!r}")
        last = name.lower()
        if last in headers:
            last = ""  # a repeated header: the first one counts, its repeats are ignored
            continue
        headers[last] = value.strip()


def scan_form(
    body: bytes,
    boundary: bytes,
    *,
    max_header_bytes: int = MAX_PART_HEADER_BYTES,
    max_text_bytes: int = MAX_TEXT_BYTES,
    max_parts: int = MAX_PARTS,
) -> list[FormField]:
    """The text fields of a form, in order (repeats included); file parts (those with a filename) are skipped unread.

    A preamble before the first delimiter and an epilogue after the close one are ignored, as RFC 2046 says.
    """
    dash = b"--" + boundary
    marker = b"\n" + dash
    if body.startswith(dash):
        at = len(dash)
    else:
        first = body.find(marker)
        if first < 0:
            raise _malformed("the boundary of its Content-Type never occurs in it")
        at = first + len(marker)
    after = _after_delimiter(body, at)
    while after is None:  # "--boundaryX" is not the boundary: look further
        found = body.find(marker, at)
        if found < 0:
            raise _malformed("the boundary of its Content-Type never occurs in it")
        at = found + len(marker)
        after = _after_delimiter(body, at)
    closed, start = after
    fields: list[FormField] = []
    parts = 0
    while not closed:
        parts += 1
        if parts > max_parts:
            raise _malformed(f"it has more than {max_parts} parts")
        headers, content = _part_headers(body, start, max_header_bytes)
        # The line end before a delimiter is the delimiter's; an empty part may share the blank line's.
        end, closed, start = _next_delimiter(body, marker, content - 1)
        value_end = end - 1 if end > content and body[end - 1] == 0x0D else end
        value_end = max(value_end, content)
        disposition, params = _params(headers.get("content-disposition", ""))
        name = params.get("name")
        if disposition != "form-data" or not name or "filename" in params or "filename*" in params:
            continue  # a file, or not a form field: never read
        value: str | None = None
        if value_end - content <= max_text_bytes:
            try:
                value = body[content:value_end].decode("utf-8")
            except UnicodeDecodeError:
                value = None
        fields.append(FormField(name, value, content, value_end))
    return fields


def with_field(body: bytes, field: FormField, value: str) -> bytes:
    """``body`` with ``field``'s value replaced by ``value`` (the one copy of the body this makes)."""
    return b"".join((body[: field.start], value.encode("utf-8"), body[field.end :]))
