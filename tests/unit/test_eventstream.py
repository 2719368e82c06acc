"""AWS event-stream framing: what llmhost encodes, botocore must decode (and reject if corrupt)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import botocore.session
import pytest
from botocore.compat import HTTPHeaders
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import EventStreamError
from botocore.parsers import create_parser

from llmhost_local import eventstream


def decode(data: bytes, chunk_sizes: list[int] | None = None) -> list[object]:
    buffer = EventStreamBuffer()
    messages = []
    chunks = [data] if chunk_sizes is None else list(_cut(data, chunk_sizes))
    for chunk in chunks:
        buffer.add_data(chunk)
        messages += list(buffer)
    return messages


def _cut(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    start, i = 0, 0
    while start < len(data):
        size = sizes[i % len(sizes)]
        yield data[start : start + size]
        start += size
        i += 1


class _RawStream:
    """What botocore reads an event stream from (urllib3's response, in real life)."""

    def __init__(self, data: bytes, piece: int) -> None:
        self._chunks = [data[i : i + piece] for i in range(0, len(data), piece)]

    def stream(self) -> Iterator[bytes]:
        yield from self._chunks

    def close(self) -> None:
        pass


def parse_stream_response(data: bytes, piece: int = 7) -> Iterator[dict[str, object]]:
    """Run bytes through the real sagemaker-runtime response parser, as boto3 would."""
    model = botocore.session.get_session().get_service_model("sagemaker-runtime")
    output = model.operation_model("InvokeEndpointWithResponseStream").output_shape
    parsed = create_parser("rest-json").parse(
        {
            "status_code": 200,
            "headers": HTTPHeaders.from_pairs(
                [("X-Amzn-SageMaker-Content-Type", "text/event-stream")]
            ),
            "body": _RawStream(data, piece),
            "context": {"operation_name": "InvokeEndpointWithResponseStream"},
        },
        output,
    )
    assert parsed["ContentType"] == "text/event-stream"
    return iter(parsed["Body"])


def test_a_payload_part_round_trips_through_botocores_decoder() -> None:
    # Given a PayloadPart carrying non-ASCII bytes
    data = 'data:{"token":{"text":" café"}}\n\n'.encode()

    # When botocore decodes it
    (message,) = decode(eventstream.payload_part(data))

    # Then the headers and payload are exactly what SageMaker sends
    assert message.headers == {
        ":event-type": "PayloadPart",
        ":content-type": "application/octet-stream",
        ":message-type": "event",
    }
    assert message.payload == data


def test_messages_split_at_any_byte_still_decode_in_order() -> None:
    # Given several messages concatenated, as they travel on the wire
    payloads = [f"part {i} ".encode() * (i + 1) for i in range(12)] + [b""]
    wire = b"".join(eventstream.payload_part(p) for p in payloads)

    for seed in range(20):
        # When the bytes arrive in random small pieces
        sizes = [random.Random(seed).randint(1, 9) for _ in range(50)]
        messages = decode(wire, sizes)

        # Then botocore reassembles every message intact
        assert [m.payload for m in messages] == payloads


def test_the_sagemaker_runtime_parser_yields_payload_parts() -> None:
    # Given a reply body cut into parts of 3 bytes, the way a stressed client sees it
    body = 'data:{"generated_text":"Paris [1]. — ok"}\n\n'.encode()
    wire = b"".join(eventstream.payload_parts(body, split_bytes=3))

    # When boto3's parser reads it in 7-byte network pieces
    events = list(parse_stream_response(wire))

    # Then it yields PayloadPart events whose bytes concatenate to the body
    assert all(set(e) == {"PayloadPart"} for e in events)
    parts = [e["PayloadPart"]["Bytes"] for e in events]  # type: ignore[index]
    assert all(len(p) <= 3 for p in parts)
    assert b"".join(parts) == body


def test_a_model_stream_error_raises_botocores_event_stream_error() -> None:
    # Given a part followed by SageMaker's mid-stream failure
    wire = eventstream.payload_part(b"data:{}\n\n") + eventstream.model_stream_error(
        "the container reset the connection", eventstream.STREAM_BROKEN
    )
    events = parse_stream_response(wire)

    # When the client reads past the first event
    assert next(events) == {"PayloadPart": {"Bytes": b"data:{}\n\n"}}
    with pytest.raises(EventStreamError) as raised:
        next(events)

    # Then botocore raises the modeled ModelStreamError with its message
    assert raised.value.response["Error"] == {
        "Code": "ModelStreamError",
        "Message": "the container reset the connection",
    }


def test_an_internal_stream_failure_is_reported_with_its_code() -> None:
    events = parse_stream_response(eventstream.internal_stream_failure("try again"))
    with pytest.raises(EventStreamError) as raised:
        next(events)
    assert raised.value.response["Error"]["Code"] == "InternalStreamFailure"


@pytest.mark.parametrize("offset", [3, 20, -10, -1], ids=["prelude", "headers", "payload", "crc"])
def test_botocore_detects_a_corrupted_byte(offset: int) -> None:
    # Given a valid message with one byte flipped
    wire = bytearray(eventstream.payload_part(b"some model output bytes"))
    wire[offset] ^= 0x01

    # When botocore decodes it, then the checksum does not match
    with pytest.raises(ChecksumMismatch):
        decode(bytes(wire))


def test_payloads_over_botocores_limit_are_refused_with_the_fix() -> None:
    with pytest.raises(eventstream.EventStreamEncodingError, match="split it"):
        eventstream.payload_part(b"x" * (eventstream.MAX_PAYLOAD_BYTES + 1))


def test_header_names_over_255_bytes_are_refused() -> None:
    with pytest.raises(eventstream.EventStreamEncodingError, match="1 to 255 bytes"):
        eventstream.encode_message({"x" * 256: "v"}, b"")


def test_split_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        list(eventstream.payload_parts(b"abc", split_bytes=0))
