"""The OpenAI-compatible server holds a request for a cold model: a stream stays open with SSE
comments until the model answers; a plain request waits with ``Prefer: wait``.

The server runs as in the stream function (``http_app.serve`` on a real socket) in front of a
scripted service that refuses as a cold model does until the test lets it answer; the real
``openai`` package is the client.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from llmhost.clock import CloudClock
from llmhost.serving.auth import ApiKeyAuth, hash_key
from llmhost.serving.errors import ModelUnavailable
from llmhost.serving.hold import Hold, HoldPolicy
from llmhost.serving.http_app import ServingHttpApp, serve

KEY = "llmh-test-key"
CHAT = {"model": "cold", "messages": [{"role": "user", "content": "hi"}]}


def _chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "cold",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }


class ColdService:
    """A model at zero copies until ``woken`` is set: a held request pauses on each refusal
    as ``ServingService`` does; one without a hold is refused."""

    def __init__(self) -> None:
        self.woken = threading.Event()
        self.refusal: Exception = ModelUnavailable("sleeping", retry_after=1)
        self.holds: list[Hold] = []
        self.answered = threading.Event()

    def _wait(self, hold: Hold | None) -> None:
        if hold is not None:
            self.holds.append(hold)
        while not self.woken.is_set():
            if hold is None:
                raise self.refusal
            hold.pause(self.refusal)  # type: ignore[arg-type]

    def chat_stream(
        self, request: Any, hold: Hold | None = None, watch: Any = None
    ) -> Iterator[dict[str, Any]]:
        self._wait(hold)
        self.answered.set()
        return iter([_chunk("awake"), _chunk("", "stop")])

    def chat(self, request: Any, hold: Hold | None = None, watch: Any = None) -> dict[str, Any]:
        self._wait(hold)
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "cold",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "awake"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }


@pytest.fixture
def service() -> ColdService:
    return ColdService()


@pytest.fixture
def policy() -> HoldPolicy:
    # Polls and keep-alives a few hundredths of a second apart (the cloud's clock at 600x)
    return HoldPolicy(answer_s=12, clock=CloudClock(speed=600), keepalive_s=0.05)


@pytest.fixture
def client(service: ColdService, policy: HoldPolicy) -> Iterator[Any]:
    from openai import OpenAI

    auth = ApiKeyAuth(lambda: {"test": hash_key(KEY)})
    running = serve(ServingHttpApp(lambda: service, auth, holds=lambda: policy), port=0)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    host, port = running.server_address[:2]
    try:
        yield OpenAI(base_url=f"http://{host}:{port}/v1", api_key=KEY, max_retries=0)
    finally:
        service.woken.set()
        running.shutdown()


def test_a_streaming_request_is_held_with_keep_alives_then_answered(
    client: Any, service: ColdService
) -> None:
    # Given a model at zero copies; When a client streams a chat from it
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as reply:
        # Then the stream opens at once (200), and says what it waits for
        assert reply.http_response.status_code == 200
        assert "Preference-Applied" not in reply.http_response.headers  # the default hold
        lines = reply.iter_lines()
        comments = []
        for line in lines:
            if line:
                assert line.startswith(": waiting for cold ("), line
                comments.append(line)
            # And keeps saying it at a steady pace until the model is up
            if len(comments) == 3:
                break
        assert comments[-1] == ": waiting for cold (scaled to zero)"
        service.woken.set()
        # Then the answer follows, and the stream ends as OpenAI's does
        rest = [line for line in lines if line and not line.startswith(":")]
    assert rest[0].startswith("data: ") and '"awake"' in rest[0]
    assert rest[-1] == "data: [DONE]"


def test_the_openai_client_reads_a_held_stream_as_any_other(
    client: Any, service: ColdService
) -> None:
    threading.Timer(0.2, service.woken.set).start()
    stream = client.chat.completions.create(**CHAT, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == "awake"


def test_prefer_wait_0_refuses_a_stream_as_before(client: Any, service: ColdService) -> None:
    from openai import APIStatusError

    with pytest.raises(APIStatusError) as refused:
        client.chat.completions.create(**CHAT, stream=True, extra_headers={"Prefer": "wait=0"})
    assert refused.value.status_code == 503
    assert int(refused.value.response.headers["Retry-After"]) > 0


def test_a_hold_that_ends_without_the_model_ends_the_stream_with_an_error_event(
    client: Any, service: ColdService
) -> None:
    from openai import APIError

    from llmhost.serving.routing import ModelWillNotWake

    # Given a model whose wake fails while a stream waits for it
    stream = client.chat.completions.with_streaming_response.create(**CHAT, stream=True)
    with stream as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith(": waiting for cold")
        service.refusal = ModelWillNotWake("model 'cold' failed to deploy: no GPU", 5)
        rest = [line for line in lines if line and not line.startswith(":")]
    # Then the stream ends with OpenAI's error event and [DONE]
    assert '"model_not_ready"' in rest[0] and "failed to deploy" in rest[0]
    assert rest[-1] == "data: [DONE]"
    # And the openai client raises it
    service.refusal = ModelWillNotWake("model 'cold' failed to deploy: no GPU", 5)
    with pytest.raises(APIError, match="failed to deploy"):
        list(client.chat.completions.create(**CHAT, stream=True))


def test_a_client_that_leaves_ends_its_hold(client: Any, service: ColdService) -> None:
    # Given a stream held while the model wakes
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as reply:
        lines = reply.iter_lines()
        assert next(lines).startswith(": waiting for cold")
        assert _eventually(lambda: service.holds)
    # When the client closes the connection, the hold is cancelled (its thread ends)
    assert _eventually(lambda: service.holds[-1].cancelled)
    assert not service.answered.is_set()


def _eventually(check: Any) -> bool:
    done = threading.Event()
    for _ in range(600):  # a deadline for a stuck server only
        if check():
            return True
        done.wait(0.05)
    return False


def test_a_plain_chat_waits_only_when_it_prefers_to(client: Any, service: ColdService) -> None:
    from openai import APIStatusError

    # Without the preference: 503 with Retry-After, as before
    with pytest.raises(APIStatusError) as refused:
        client.chat.completions.create(**CHAT)
    assert refused.value.status_code == 503
    # With it: held until the model answers, and told the preference was applied
    threading.Timer(0.2, service.woken.set).start()
    reply = client.chat.completions.with_raw_response.create(
        **CHAT, extra_headers={"Prefer": "wait=30"}
    )
    assert reply.headers["Preference-Applied"] == "wait=30"
    assert reply.parse().choices[0].message.content == "awake"


@pytest.mark.parametrize("value", ["wait=soon", "wait=1.5", "wait"])
def test_a_malformed_wait_is_a_400_naming_the_header(client: Any, value: str) -> None:
    from openai import BadRequestError

    with pytest.raises(BadRequestError) as refused:
        client.chat.completions.create(**CHAT, stream=True, extra_headers={"Prefer": value})
    assert refused.value.code == "invalid_prefer"
    assert "Prefer" in refused.value.message


def test_the_openapi_document_lists_the_prefer_header() -> None:
    from llmhost.serving.openapi import openai_api_document

    paths = openai_api_document()["paths"]
    for path in ("/v1/chat/completions", "/v1/rag"):
        operation = paths[path]["post"]
        assert [p["name"] for p in operation["parameters"]] == ["Prefer"]
        assert "Preference-Applied" in operation["responses"]["200"]["headers"]
