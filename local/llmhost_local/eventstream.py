"""AWS event-stream messages, the framing of SageMaker's ``InvokeEndpointWithResponseStream``.

A message is::

    prelude   total length (uint32) · headers length (uint32) · CRC32 of those 8 bytes
    headers   per header: name length (uint8) · name · type (uint8, 7 = string)
              · value length (uint16) · value
    payload   raw bytes
    trailer   CRC32 of everything before it

all big-endian, exactly what ``botocore.eventstream.EventStreamBuffer`` decodes. SageMaker
sends two kinds: ``PayloadPart`` events carrying the container's reply bytes, cut wherever
the model's output happened to be, and exception messages (``ModelStreamError``,
``InternalStreamFailure``) whose JSON payload botocore turns into an ``EventStreamError``.

Pure functions, no I/O: the runtime front writes the bytes.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator, Mapping

# botocore refuses to decode bigger messages (botocore.eventstream._MAX_*), so a part
# larger than this would break every client; callers split before they get here.
MAX_PAYLOAD_BYTES = 24 * 1024 * 1024
MAX_HEADERS_BYTES = 128 * 1024

_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")
_STRING_HEADER = 7

PAYLOAD_PART = "PayloadPart"
MODEL_STREAM_ERROR = "ModelStreamError"
INTERNAL_STREAM_FAILURE = "InternalStreamFailure"
# ModelStreamError's two documented ErrorCode values (botocore's service model).
STREAM_BROKEN = "StreamBroken"
INVOCATION_TIME_EXCEEDED = "ModelInvocationTimeExceeded"


class EventStreamEncodingError(ValueError):
    """A message cannot be framed (a header or payload over the protocol's limits)."""


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """Frame one event-stream message with string headers (in the given order).

    Raises ``EventStreamEncodingError`` when a header name exceeds 255 bytes, a value 65535
    bytes, the headers 128 KiB or the payload 24 MiB (botocore's limits).
    """
    encoded_headers = b"".join(_encode_header(name, value) for name, value in headers.items())
    if len(encoded_headers) > MAX_HEADERS_BYTES:
        raise EventStreamEncodingError(
            f"event headers take {len(encoded_headers)} bytes; the limit is {MAX_HEADERS_BYTES}"
        )
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise EventStreamEncodingError(
            f"an event payload of {len(payload)} bytes exceeds botocore's limit of "
            f"{MAX_PAYLOAD_BYTES}; split it into several PayloadPart events"
        )
    total = _PRELUDE.size + _CRC.size + len(encoded_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(encoded_headers))
    head = prelude + _CRC.pack(zlib.crc32(prelude)) + encoded_headers + payload
    return head + _CRC.pack(zlib.crc32(head))


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event: botocore yields it as ``{"PayloadPart": {"Bytes": data}}``."""
    return encode_message(
        {
            ":event-type": PAYLOAD_PART,
            ":content-type": "application/octet-stream",
            ":message-type": "event",
        },
        data,
    )


def payload_parts(data: bytes, split_bytes: int | None = None) -> Iterator[bytes]:
    """``data`` as one ``PayloadPart`` or, with ``split_bytes``, as parts of at most that many
    bytes (cut at arbitrary byte boundaries, even inside a UTF-8 character, as SageMaker may).
    Raises ``ValueError`` when ``split_bytes`` is not positive."""
    if split_bytes is not None and split_bytes <= 0:
        raise ValueError(f"split_bytes must be a positive byte count, got {split_bytes}")
    step = min(split_bytes or MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES)
    for start in range(0, len(data), step):
        yield payload_part(data[start : start + step])


def exception_message(exception_type: str, body: Mapping[str, object]) -> bytes:
    """An exception message (``:message-type`` = ``exception``) with a JSON payload; botocore
    raises ``EventStreamError`` whose ``response["Error"]["Code"]`` is ``exception_type``."""
    return encode_message(
        {
            ":exception-type": exception_type,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps(dict(body)).encode(),
    )


def model_stream_error(message: str, error_code: str = STREAM_BROKEN) -> bytes:
    """SageMaker's mid-stream model failure: ``error_code`` is ``StreamBroken`` or
    ``ModelInvocationTimeExceeded``."""
    return exception_message(MODEL_STREAM_ERROR, {"Message": message, "ErrorCode": error_code})


def internal_stream_failure(message: str) -> bytes:
    """SageMaker's own mid-stream failure (not the model's)."""
    return exception_message(INTERNAL_STREAM_FAILURE, {"Message": message})


def _encode_header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    if not 0 < len(raw_name) <= 255:
        raise EventStreamEncodingError(f"header name {name!r} must take 1 to 255 bytes")
    if len(raw_value) > 0xFFFF:
        raise EventStreamEncodingError(f"header {name!r} has a value over 65535 bytes")
    return (
        struct.pack(">B", len(raw_name))
        + raw_name
        + struct.pack(">BH", _STRING_HEADER, len(raw_value))
        + raw_value
    )
