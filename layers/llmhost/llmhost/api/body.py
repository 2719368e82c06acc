"""The one way a request body becomes JSON data, for every route of every llmhost API.

Anything a client can get wrong on the way (the media type, base64, UTF-8, JSON syntax,
nesting, a lone surrogate escape) raises a typed error whose message says what was wrong
and where, so no decoding failure can surface as a 500.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from pydantic_core import from_json

from llmhost.errors import LlmhostError

# Nesting a body may have, on every route of both APIs: far above any real request, and
# checked before the data reaches a model or validator (jiter itself stops near 200).
MAX_JSON_DEPTH = 64
_TOO_DEEP = f"the JSON is nested too deeply (at most {MAX_JSON_DEPTH} levels)"
_JSON_TYPE = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
_POSITION = re.compile(r"^(?P<what>.*) at line (?P<line>\d+) column (?P<column>\d+)$")
# What pydantic's JSON parser (jiter) says, in words a client can act on.
_JSON_PROBLEMS = {
    "recursion limit exceeded": _TOO_DEEP,
    "lone leading surrogate in hex escape": "a \\ud800-\\udbff escape is not followed by "
    "its low surrogate; a lone UTF-16 surrogate is not text: send the character itself or "
    "its full surrogate pair",
    "lone trailing surrogate in hex escape": "a \\udc00-\\udfff escape has no high surrogate "
    "before it; a lone UTF-16 surrogate is not text: send the character itself or its full "
    "surrogate pair",
    "unexpected end of hex escape": "a \\ud800-\\udbff escape is not followed by its low "
    "surrogate; a lone UTF-16 surrogate is not text: send the character itself or its full "
    "surrogate pair",
    "expected value": "expected a value (an object, array, string, number, true, false or null)",
    "EOF while parsing a value": "the body ends where a value was expected",
    "EOF while parsing an object": "the body ends inside an object (a '}' is missing)",
    "EOF while parsing a list": "the body ends inside an array (a ']' is missing)",
    "EOF while parsing a string": "the body ends inside a string (a '\"' is missing)",
    "trailing characters": "there is more after the JSON value ends",
    "key must be a string": "expected an object key in double quotes",
    "trailing comma": "a trailing comma is not allowed in JSON",
}


class InvalidBody(LlmhostError):
    """The body could not be read as text (base64 or UTF-8)."""

    code = "invalid_body"
    status = 400


class InvalidJson(LlmhostError):
    """The body is text but not valid JSON; the message has the line and column."""

    code = "invalid_json"
    status = 400


class UnsupportedMediaType(LlmhostError):
    code = "unsupported_media_type"
    status = 415


def check_content_type(content_type: str | None) -> None:
    """Accept JSON (``application/json``, ``application/*+json``, UTF-8) or no header."""
    if not content_type or not content_type.strip():
        return
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if not _JSON_TYPE.match(media):
        raise UnsupportedMediaType(
            f"Content-Type '{media}' is not supported: send the body as JSON with the header "
            "'Content-Type: application/json' (curl: --json or -H 'Content-Type: "
            "application/json')"
        )
    for param in params.split(";"):
        key, _, value = param.partition("=")
        charset = value.strip().strip('"').lower()
        if key.strip().lower() == "charset" and charset not in {"utf-8", "utf8"}:
            raise UnsupportedMediaType(
                f"charset '{charset}' is not supported: JSON bodies must be UTF-8 "
                "('Content-Type: application/json; charset=utf-8')"
            )


def decode_event_body(body: str | None, is_base64: bool) -> bytes | str | None:
    """An API Gateway event's body: base64 decoded when API Gateway encoded it."""
    if not body or not is_base64:
        return body
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBody("the body is marked base64-encoded but is not valid base64") from None


def parse_json_body(body: bytes | str | None, content_type: str | None = None) -> Any:
    """Parse a request body as strict JSON (no NaN or Infinity); ``None`` when empty.

    Raises UnsupportedMediaType (415) for a non-JSON Content-Type, InvalidBody (400) for a
    body that is not UTF-8 text and InvalidJson (400) for bad JSON, with line and column, or
    JSON nested deeper than MAX_JSON_DEPTH.
    """
    check_content_type(content_type)
    if body is None or not body.strip():
        return None
    data = _utf8(body)
    try:
        parsed = from_json(data, allow_inf_nan=False)
    except ValueError as error:
        raise InvalidJson(_json_problem(str(error))) from None
    _check_depth(parsed)
    return parsed


def too_deep() -> InvalidJson:
    return InvalidJson(_TOO_DEEP)


def _check_depth(data: Any) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH anywhere, known fields or not."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise too_deep()
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)


def _utf8(body: bytes | str) -> bytes:
    if isinstance(body, str):
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InvalidBody(
                f"the body is not valid UTF-8 text (character {error.start} cannot be encoded); "
                "send JSON encoded as UTF-8"
            ) from None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidBody(
            f"the body is not valid UTF-8 (byte {error.start} is 0x{body[error.start]:02x}); "
            "send JSON encoded as UTF-8"
        ) from None
    return body


def _json_problem(text: str) -> str:
    match = _POSITION.match(text)
    if match is None:
        return f"the body is not valid JSON: {text}"
    what = match["what"]
    explained = _JSON_PROBLEMS.get(what)
    if explained is None and what.startswith("expected"):
        explained = what.replace("`", "'")
    return (
        f"the body is not valid JSON at line {match['line']}, column {match['column']}: "
        f"{explained or what}"
    )
