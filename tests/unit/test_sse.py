"""The stream decoders give the same events however SageMaker cuts the bytes."""

from __future__ import annotations

import json
import random

import pytest

from llmhost.engines.sse import JsonLinesDecoder, SseDecoder, SseEvent, StreamDecodeError

# A TGI generate_stream reply as it goes over the wire (one token per event, a keep-alive
# comment, multi-byte characters of 2, 3 and 4 bytes, the final event with details).
TGI_STREAM = (
    'data:{"index":1,"token":{"id":22557,"text":"Bonjour","logprob":-0.1,"special":false},'
    '"generated_text":null,"details":null}\n\n'
    ": keep-alive\n\n"
    'data:{"index":2,"token":{"id":29892,"text":" déjà","logprob":-0.2,"special":false},'
    '"generated_text":null,"details":null}\n\n'
    'data:{"index":3,"token":{"id":30325,"text":" 日本 🎉","logprob":-0.3,"special":false},'
    '"generated_text":null,"details":null}\n\n'
    'data:{"index":4,"token":{"id":2,"text":"</s>","logprob":0.0,"special":true},'
    '"generated_text":"Bonjour déjà 日本 🎉","details":{"finish_reason":"eos_token",'
    '"generated_tokens":4,"seed":null,"input_length":12}}\n\n'
).encode()

# Every SSE feature at once, with CRLF line endings: event names, ids, a field without a
# colon, 'data:' without the space, multi-line data, comments, [DONE].
CRLF_STREAM = (
    b"event: message\r\nid: 1\r\ndata: first\r\n\r\n"
    b":comment\r\n"
    b"data:two\r\ndata: lines\r\n\r\n"
    b'event: error\r\ndata: {"error":"Input validation error","error_type":"validation"}\r\n\r\n'
    b"retry: 1000\r\nid: 7\r\nfield-without-colon\r\ndata:  leading space kept\r\n\r\n"
    b"data: [DONE]\r\n\r\n"
)

CR_STREAM = CRLF_STREAM.replace(b"\r\n", b"\r")

EXPECTED_CRLF = [
    SseEvent(data="first", event="message", id="1"),
    SseEvent(data="two\nlines", id="1"),
    SseEvent(
        data='{"error":"Input validation error","error_type":"validation"}', event="error", id="1"
    ),
    SseEvent(data=" leading space kept", id="7"),
    SseEvent(data="[DONE]", id="7"),
]


def decode(chunks: list[bytes]) -> list[SseEvent]:
    decoder = SseDecoder()
    events: list[SseEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.finish()


def random_splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, min(40, len(data) - 1))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("stream", [TGI_STREAM, CRLF_STREAM, CR_STREAM], ids=["tgi", "crlf", "cr"])
def test_a_split_at_any_byte_gives_the_same_events(stream: bytes) -> None:
    # Given the events of the stream decoded in one piece
    whole = decode([stream])
    # When it arrives in two parts cut at every possible byte offset
    for offset in range(1, len(stream)):
        # Then the events are identical (no lost CR/LF pairing, no broken UTF-8)
        assert decode([stream[:offset], stream[offset:]]) == whole, f"split at {offset}"


@pytest.mark.parametrize("stream", [TGI_STREAM, CRLF_STREAM, CR_STREAM], ids=["tgi", "crlf", "cr"])
def test_random_multi_splits_and_single_bytes_give_the_same_events(stream: bytes) -> None:
    # Given a seeded random splitter (reproducible failures)
    rng = random.Random(20241121)
    whole = decode([stream])
    # When the stream arrives cut in many places, or one byte at a time
    for _ in range(300):
        assert decode(random_splits(stream, rng)) == whole
    assert decode([bytes([b]) for b in stream]) == whole


def test_sse_fields_follow_the_event_stream_rules() -> None:
    # Given the CRLF stream with every kind of field
    # When it is decoded
    events = decode([CRLF_STREAM])
    # Then names, ids, multi-line data and the one-space rule come out as the format says
    assert events == EXPECTED_CRLF
    assert events[-1].is_done and not events[0].is_done
    # And the CR-only variant decodes to the same events
    assert decode([CR_STREAM]) == EXPECTED_CRLF


def test_tgi_tokens_survive_multibyte_characters_split_across_chunks() -> None:
    # Given the TGI stream cut inside the 4-byte emoji
    cut = TGI_STREAM.index("🎉".encode()) + 2
    # When decoded
    events = decode([TGI_STREAM[:cut], TGI_STREAM[cut:]])
    # Then the token text is intact
    assert json.loads(events[2].data)["token"]["text"] == " 日本 🎉"
    assert len(events) == 4


def test_a_stream_cut_inside_an_event_is_reported_not_silently_dropped() -> None:
    # Given a stream that stops in the middle of its last event
    decoder = SseDecoder()
    events = decoder.feed(b'data: {"a": 1}\n\ndata: {"b":')
    assert [e.data for e in events] == ['{"a": 1}']
    # When the stream ends, Then the decoder says the answer was cut off
    with pytest.raises(StreamDecodeError, match="middle of a line"):
        decoder.finish()
    # And a complete last line without the closing blank line is reported too
    decoder = SseDecoder()
    decoder.feed(b"data: last\n")
    with pytest.raises(StreamDecodeError, match="before its last event was closed"):
        decoder.finish()


def test_lenient_finish_dispatches_the_last_event() -> None:
    # Given a stream whose server forgot the final blank line
    decoder = SseDecoder()
    decoder.feed(b"data: last")
    # When finished leniently, Then the event is kept
    assert decoder.finish(strict=False) == [SseEvent(data="last")]


def test_a_byte_order_mark_and_invalid_bytes_do_not_break_decoding() -> None:
    # Given a stream starting with a BOM and carrying an invalid UTF-8 byte
    stream = b"\xef\xbb\xbfdata: ok\n\ndata: bad \xff byte\n\n"
    # When decoded
    events = decode([stream[:2], stream[2:]])
    # Then the BOM is gone and the bad byte is replaced, not fatal
    assert events == [SseEvent(data="ok"), SseEvent(data="bad \ufffd byte")]


def test_events_without_data_are_not_dispatched() -> None:
    assert decode([b"event: ping\n\n: comment\n\nid: 3\n\n"]) == []


LMI_STREAM = (
    '{"token": {"id": 304, "text": "Deep ", "log_prob": -0.05}}\n'
    '{"token": {"id": 11157, "text": "Lernen \u2013 ", "log_prob": -1.28}}\r\n'
    "\n"
    '{"token": {"id": 5972, "text": "日本.", "log_prob": -0.69}, "generated_text": '
    '"Deep Lernen \u2013 日本.", "details": {"finish_reason": "length", "generated_tokens": 3, '
    '"inputs": "What is Deep Learning?"}}\n'
).encode()


def decode_lines(chunks: list[bytes]) -> list[str]:
    decoder = JsonLinesDecoder()
    lines: list[str] = []
    for chunk in chunks:
        lines += [e.data for e in decoder.feed(chunk)]
    return lines + [e.data for e in decoder.finish()]


def test_json_lines_split_anywhere_give_the_same_lines() -> None:
    # Given LMI's JSON-lines stream (mixed LF / CRLF, a blank line)
    whole = decode_lines([LMI_STREAM])
    assert len(whole) == 3 and all(json.loads(line) for line in whole)
    rng = random.Random(7)
    # When cut at every offset and at random places, Then the lines are identical
    for offset in range(1, len(LMI_STREAM)):
        assert decode_lines([LMI_STREAM[:offset], LMI_STREAM[offset:]]) == whole
    for _ in range(200):
        assert decode_lines(random_splits(LMI_STREAM, rng)) == whole


def test_json_lines_last_line_without_newline() -> None:
    # Given a last line with no newline: whole JSON is kept, a cut one is an error
    decoder = JsonLinesDecoder()
    decoder.feed(b'{"token": {"text": "a"}}')
    assert [e.data for e in decoder.finish()] == ['{"token": {"text": "a"}}']
    decoder = JsonLinesDecoder()
    decoder.feed(b'{"token": {"te')
    with pytest.raises(StreamDecodeError):
        decoder.finish()
