"""The OpenAI API's document describes each server-sent event of a streamed answer, and
schemathesis (the fuzz tests) validates every event it receives against that description:
the events llmhost sends must pass, and an event that is not a chunk, an error or the
closing [DONE] must not."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
from schemathesis.specs.openapi.content_keywords import SseValidator

from llmhost.serving.http_app import openai_error
from llmhost.serving.openapi import openai_api_document


def _event_validator() -> SseValidator:
    doc = openai_api_document()
    content = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    return SseValidator(content["text/event-stream"]["schema"], jsonschema_rs.Draft202012Validator)


def _valid(event: dict[str, str]) -> bool:
    validator = _event_validator()
    with validator.with_deserializer(lambda _media_type, payload: json.loads(payload)):
        try:
            validator.validate(event)
        except jsonschema_rs.ValidationError:
            return False
    return True


CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1796268792,
    "model": "demo",
    "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
}


@pytest.mark.parametrize(
    "event",
    [
        {"event": "message", "data": json.dumps(CHUNK)},
        {"data": "[DONE]"},
        {"data": json.dumps(openai_error(503, "model_unavailable", "waking; retry", param=None))},
    ],
)
def test_the_events_llmhost_streams_are_as_documented(event: dict[str, str]) -> None:
    # Given an event as the streaming app sends it, Then the document accepts it
    assert _valid(event)


@pytest.mark.parametrize(
    "event",
    [
        {"data": json.dumps({**CHUNK, "object": "chat.completion"})},
        {"data": "{}"},
        {"data": "not json"},
        {"event": "message"},
    ],
)
def test_an_event_that_is_no_chunk_error_or_done_is_refused(event: dict[str, str]) -> None:
    assert not _valid(event)
