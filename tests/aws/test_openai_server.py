"""The OpenAI-compatible server over a real socket: framing, limits, streaming, errors.

The server runs as it does in the stream function and in ``make run`` (``http_app.serve``),
in front of a scripted service, so each test controls exactly what the service does. Raw
sockets check what an HTTP client library would hide (framing, a second response, the end
of a chunked body); the real ``openai`` client checks that OpenAI clients read the result.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llmhost.serving.auth import ApiKeyAuth, hash_key
from llmhost.serving.errors import ModelFailed, ModelUnavailable
from llmhost.serving.http_app import ServingHttpApp, serve

KEY = "llmh-test-key"
AUTH = f"Bearer {KEY}"


class ScriptedService:
    """A serving service whose answers the test decides; it records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stream: Callable[[], Iterator[dict[str, Any]]] = lambda: iter([_chunk("hi")])
        self.unavailable = False

    def models(self) -> dict[str, Any]:
        self.calls.append("models")
        return {"object": "list", "data": []}

    def chat(self, request: Any, watch: Any = None) -> dict[str, Any]:
        self.calls.append("chat")
        if self.unavailable:
            raise ModelUnavailable("sleeping")
        return {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hello"},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def chat_stream(self, request: Any, watch: Any = None) -> Iterator[dict[str, Any]]:
        self.calls.append("chat_stream")
        return self.stream()

    def rag(self, request: Any, watch: Any = None) -> dict[str, Any]:
        self.calls.append("rag")
        return {"answer": "x"}


def _chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }


@pytest.fixture
def service() -> ScriptedService:
    return ScriptedService()


@pytest.fixture
def server(service: ScriptedService) -> Iterator[tuple[str, int]]:
    auth = ApiKeyAuth(lambda: {"test": hash_key(KEY)})
    running = serve(ServingHttpApp(lambda: service, auth), port=0)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    host, port = running.server_address[:2]
    try:
        yield str(host), int(port)
    finally:
        running.shutdown()


SENTINEL = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
SENTINEL_BODY = {"status": "ok"}


class _Wire:
    """A client socket's bytes, read as HTTP/1.1 responses framed by their Content-Length or
    chunked encoding (never by how long the server stays quiet)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.buffer = b""

    def _more(self) -> bool:
        data = self._sock.recv(65536)
        self.buffer += data
        return bool(data)

    def response(self) -> bytes:
        """The next whole response (or what came before the server closed)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._more():
                return self._take(len(self.buffer))
        head_end = self.buffer.index(b"\r\n\r\n") + 4
        head = self.buffer[:head_end].lower()
        if b"transfer-encoding: chunked" in head:
            end = head_end
            while True:  # walk the chunks: size line, data, CRLF; a 0 size ends the body
                while b"\r\n" not in self.buffer[end:]:
                    if not self._more():
                        return self._take(len(self.buffer))
                line_end = self.buffer.index(b"\r\n", end)
                size = int(self.buffer[end:line_end].split(b";")[0], 16)
                end = line_end + 2 + size + 2
                while len(self.buffer) < end:
                    if not self._more():
                        return self._take(len(self.buffer))
                if size == 0:
                    return self._take(end)
        length = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        while len(self.buffer) < head_end + length:
            if not self._more():
                break
        return self._take(head_end + length)

    def rest(self) -> list[bytes]:
        """Every further response until the server closes."""
        responses = []
        while self.buffer or self._more():
            responses.append(self.response())
        return responses

    def _take(self, size: int) -> bytes:
        taken, self.buffer = self.buffer[:size], self.buffer[size:]
        return taken


def _exchange(
    address: tuple[str, int], raw: bytes, timeout: float = 60.0, follow: bool = True
) -> bytes:
    """Send ``raw`` on one connection and return every response it got (only the first, with
    ``follow=False``: for a request whose body is still owed, which the next would be read as).

    Once the first response is whole, a last request (``GET /health`` with ``Connection:
    close``) follows on the same connection: HTTP/1.1 answers in order, so any response the
    server gave to bytes hidden in ``raw`` arrives before that one's, and it ends the read
    without waiting for the server to stay quiet. Its own answer is left out.
    """
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(raw)
        wire = _Wire(sock)
        first = wire.response()
        if not follow:
            return first
        try:
            sock.sendall(SENTINEL)
            rest = wire.rest()
        except (ConnectionError, TimeoutError):  # closed after the first: nothing else came
            rest = [wire.buffer]
        if rest and _is_sentinel_answer(rest[-1]):
            rest.pop()
        return first + b"".join(rest)


def _is_sentinel_answer(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    try:
        return head.startswith(b"HTTP/1.1 200") and json.loads(body) == SENTINEL_BODY
    except ValueError:
        return False


def _post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _length(body: bytes) -> dict[str, str]:
    return {"Content-Length": str(len(body))}


def _status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def _body(raw: bytes) -> Any:
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


# ----------------------------------------------------------------------------- framing


def test_a_refused_request_body_is_never_run_as_a_second_request(
    server: tuple[str, int], service: ScriptedService
) -> None:
    # Given a POST with a wrong key whose body is a complete request with the right key
    smuggled = (
        f"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: {AUTH}\r\n\r\n"
    ).encode()
    raw = _post(
        "/v1/chat/completions",
        smuggled,
        {
            "Authorization": "Bearer wrong",
            "Content-Type": "application/json",
            "Content-Length": str(len(smuggled)),
        },
    )
    # When it is sent on one connection
    received = _exchange(server, raw)
    # Then exactly one response comes back, the 401, and nothing ran the smuggled request
    assert received.count(b"HTTP/1.1 ") == 1, received
    assert _status(received) == 401
    assert service.calls == []


def test_a_request_with_both_content_length_and_chunked_is_refused_and_closed(
    server: tuple[str, int], service: ScriptedService
) -> None:
    # Given a request framed two ways: Content-Length covers the smuggled request, chunked
    # encoding ends before it (a proxy reading one and a server the other disagree on where
    # the next request starts)
    smuggled = (
        f"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nAuthorization: {AUTH}\r\n\r\n"
    ).encode()
    body = b"0\r\n\r\n" + smuggled
    raw = _post(
        "/v1/chat/completions",
        body,
        {
            "Authorization": "Bearer wrong",
            "Content-Length": str(len(body)),
            "Transfer-Encoding": "chunked",
        },
    )
    # When it is sent on one connection
    received = _exchange(server, raw)
    # Then it gets one answer, a 400 naming both headers, and the connection closes
    # (RFC 9112 6.1): nothing ran the smuggled request
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", received)) == 1, received
    assert _status(received) == 400
    assert b"connection: close" in received.lower()
    message = _body(received)["error"]["message"]
    assert "Content-Length" in message and "Transfer-Encoding" in message
    assert service.calls == []


@pytest.mark.parametrize("length", ["-1", "abc", "1e3", "99999999999999999999999"])
def test_a_malformed_content_length_gets_400_promptly(server: tuple[str, int], length: str) -> None:
    raw = _post(
        "/v1/chat/completions",
        b"{}",
        {"Authorization": AUTH, "Content-Type": "application/json", "Content-Length": length},
    )
    received = _exchange(server, raw)
    assert received, "no answer: the server waited for a body that will never come"
    assert _status(received) in {400, 413}
    # ... in OpenAI's error shape, saying what to send instead
    error = _body(received)["error"]
    assert error["type"] == "invalid_request_error" and "Content-Length" in error["message"]


def test_a_body_over_the_limit_is_refused_without_reading_it(server: tuple[str, int]) -> None:
    raw = _post(
        "/v1/chat/completions",
        b"{",
        {"Authorization": AUTH, "Content-Type": "application/json", "Content-Length": "50000000"},
    )
    received = _exchange(server, raw, follow=False)
    assert _status(received) == 413
    assert _body(received)["error"]["code"] == "body_too_large"


# ------------------------------------------------------------------------ bad bodies


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b'{"model": "m\xff\xfe"}', "application/json", 400, "UTF-8"),
        (b"[" * 3000 + b"]" * 3000, "application/json", 400, "nested"),
        (b'{"model": ', "application/json", 400, "line 1, column"),
        (json.dumps(CHAT).encode(), "text/plain", 415, "application/json"),
        (json.dumps(CHAT).encode(), "multipart/form-data", 415, "application/json"),
        (json.dumps(CHAT).encode(), "application/json; charset=latin-1", 415, "utf-8"),
        (b'{"model": "m", "messages": ' + b"[" * 3000, "application/json", 400, "nested"),
        # an unknown field past the nesting limit: as on the control API (test_bad_input)
        (
            json.dumps(CHAT)[:-1].encode() + b', "x": ' + b'{"x": ' * 189 + b"1" + b"}" * 190,
            "application/json",
            400,
            "at most 64 levels",
        ),
        (json.dumps({"model": "m"}).encode(), "application/json", 422, "messages"),
        (b'"just a string"', "application/json", 422, "object"),
    ],
)
def test_a_body_that_cannot_be_read_gets_a_4xx_in_openai_shape(
    server: tuple[str, int],
    service: ScriptedService,
    body: bytes,
    content_type: str,
    status: int,
    says: str,
) -> None:
    raw = _post(
        "/v1/chat/completions",
        body,
        {"Authorization": AUTH, "Content-Type": content_type, "Content-Length": str(len(body))},
    )
    received = _exchange(server, raw)
    assert _status(received) == status, received[:400]
    error = _body(received)["error"]
    assert says.lower() in error["message"].lower()
    assert {"message", "type", "code"} <= set(error)
    if "levels" in says:
        assert error["code"] == "invalid_json"  # the control API's code for the same body
    assert service.calls == []


def test_a_json_body_without_a_content_type_is_read_as_json(server: tuple[str, int]) -> None:
    body = json.dumps(CHAT).encode()
    raw = _post(
        "/v1/chat/completions", body, {"Authorization": AUTH, "Content-Length": str(len(body))}
    )
    assert _status(_exchange(server, raw)) == 200


# -------------------------------------------------------------------------- streaming


def _read_chunked(raw: bytes) -> tuple[bytes, bytes]:
    """(head, decoded body) of a chunked response; fails unless the body ends properly."""
    head, rest = raw.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower(), head
    body = b""
    while True:
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", f"bytes after the last chunk: {rest[:200]!r}"
            return head, body
        body, rest = body + rest[:size], rest[size:]
        assert rest[:2] == b"\r\n", rest[:50]
        rest = rest[2:]


@pytest.mark.parametrize(
    "failure",
    [ModelFailed("the model stopped answering"), RuntimeError("a bug in llmhost")],
    ids=["model-error", "unexpected-exception"],
)
def test_an_error_after_the_headers_ends_the_stream_with_an_error_event(
    server: tuple[str, int], service: ScriptedService, failure: Exception
) -> None:
    # Given a stream that fails after its first event
    def stream() -> Iterator[dict[str, Any]]:
        yield _chunk("partial ")
        raise failure

    service.stream = stream
    body = json.dumps({**CHAT, "stream": True}).encode()
    raw = _post(
        "/v1/chat/completions",
        body,
        {"Authorization": AUTH, "Content-Type": "application/json", **_length(body)},
    )
    # When it is read off the wire
    received = _exchange(server, raw)
    # Then there is one status line, and a chunked body that ends properly
    assert received.count(b"HTTP/1.1 ") == 1, received
    head, events = _read_chunked(received)
    assert head.startswith(b"HTTP/1.1 200")
    # And its last events are an OpenAI error and nothing after it but [DONE]
    data = [line[6:] for line in events.split(b"\n") if line.startswith(b"data: ")]
    assert json.loads(data[0])["choices"][0]["delta"]["content"] == "partial "
    error = json.loads(data[-2])["error"]
    assert error["message"] and error["type"]
    assert "a bug in llmhost" not in error["message"]  # no internals reach the client
    assert data[-1] == b"[DONE]"


def test_the_openai_client_raises_api_error_on_a_mid_stream_failure(
    server: tuple[str, int], service: ScriptedService
) -> None:
    from openai import APIError, OpenAI

    def stream() -> Iterator[dict[str, Any]]:
        yield _chunk("partial ")
        raise ModelFailed("the model stopped answering")

    service.stream = stream
    host, port = server
    client = OpenAI(base_url=f"http://{host}:{port}/v1", api_key=KEY, max_retries=0)
    received = []
    with pytest.raises(APIError) as failed:
        for chunk in client.chat.completions.create(**CHAT, stream=True):
            received.append(chunk.choices[0].delta.content)
    assert received == ["partial "]
    assert "stopped answering" in str(failed.value)


def test_stream_events_leave_as_they_are_produced(
    server: tuple[str, int], service: ScriptedService
) -> None:
    # Given a stream that produces its second event only once the client has the first
    first_seen = threading.Event()

    def stream() -> Iterator[dict[str, Any]]:
        yield _chunk("first")
        assert first_seen.wait(120), "the client never saw the first event: it was buffered"
        yield _chunk("second", finish="stop")

    service.stream = stream
    body = json.dumps({**CHAT, "stream": True}).encode()
    raw = _post(
        "/v1/chat/completions",
        body,
        {"Authorization": AUTH, "Content-Type": "application/json", **_length(body)},
    )
    with socket.create_connection(server, timeout=60) as sock:
        sock.sendall(raw)
        received = b""
        while b'"first"' not in received:
            data = sock.recv(65536)
            assert data, received
            received += data
        first_seen.set()
        while not received.endswith(b"0\r\n\r\n"):
            data = sock.recv(65536)
            assert data, received
            received += data
    assert b'"second"' in received and b"data: [DONE]" in received


def test_a_slow_stream_does_not_hold_up_other_requests(
    server: tuple[str, int], service: ScriptedService
) -> None:
    from openai import OpenAI

    # Given a stream that is stuck until the test lets it go
    release = threading.Event()

    def stream() -> Iterator[dict[str, Any]]:
        yield _chunk("waiting")
        release.wait(120)
        yield _chunk("done", finish="stop")

    service.stream = stream
    host, port = server
    client = OpenAI(base_url=f"http://{host}:{port}/v1", api_key=KEY, max_retries=0)
    stuck = client.chat.completions.create(**CHAT, stream=True)
    next(iter(stuck))
    try:
        # When other requests arrive meanwhile, they are answered
        for _ in range(3):
            assert client.models.list().data == []
            assert client.chat.completions.create(**CHAT).choices[0].message.content == "hello"
    finally:
        release.set()
    assert [c.choices[0].delta.content for c in stuck] == ["done"]


def test_a_refused_stream_keeps_its_status(
    server: tuple[str, int], service: ScriptedService
) -> None:
    from openai import APIStatusError, OpenAI

    def stream() -> Iterator[dict[str, Any]]:
        raise ModelUnavailable("sleeping")

    service.stream = stream
    host, port = server
    client = OpenAI(base_url=f"http://{host}:{port}/v1", api_key=KEY, max_retries=0)
    with pytest.raises(APIStatusError) as refused:
        client.chat.completions.create(**CHAT, stream=True)
    assert refused.value.status_code == 503
    assert int(refused.value.response.headers["Retry-After"]) > 0


def test_keep_alive_serves_several_requests_on_one_connection(server: tuple[str, int]) -> None:
    import http.client

    connection = http.client.HTTPConnection(*server, timeout=60)
    for _ in range(3):
        connection.request("GET", "/v1/models", headers={"Authorization": AUTH})
        reply = connection.getresponse()
        assert reply.status == 200 and json.loads(reply.read()) == {"object": "list", "data": []}
    connection.close()


def test_health_answers_without_a_key(server: tuple[str, int]) -> None:
    received = _exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert _status(received) == 200 and _body(received) == {"status": "ok"}


def test_unknown_routes_and_methods_answer_in_openai_shape(server: tuple[str, int]) -> None:
    for request, status in (
        (b"GET /v1/nothing HTTP/1.1\r\n", 404),
        (b"DELETE /v1/models HTTP/1.1\r\n", 405),
    ):
        raw = request + f"Host: x\r\nAuthorization: {AUTH}\r\nConnection: close\r\n\r\n".encode()
        received = _exchange(server, raw)
        assert _status(received) == status, received
        assert _body(received)["error"]["type"]


# ------------------------------------------------------------------- keys and rates


def _serve(app: ServingHttpApp) -> Any:
    running = serve(app, port=0)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    return running


def test_a_key_over_its_rate_gets_429_with_retry_after(service: ScriptedService) -> None:
    from openai import OpenAI, RateLimitError

    from llmhost.serving.ratelimit import KeyRateLimiter, RateLimits

    # Given a server allowing each key a burst of 3 requests, then 1 a minute
    auth = ApiKeyAuth(lambda: {"team": hash_key(KEY), "other": hash_key("llmh-other")})
    limiter = KeyRateLimiter(RateLimits(requests_per_minute=1, burst=3))
    running = _serve(ServingHttpApp(lambda: service, auth, limiter=limiter))
    host, port = running.server_address[:2]
    try:
        client = OpenAI(base_url=f"http://{host}:{port}/v1", api_key=KEY, max_retries=0)
        for _ in range(3):
            client.models.list()
        # When the key sends one more, it is refused with OpenAI's rate-limit error
        with pytest.raises(RateLimitError) as limited:
            client.chat.completions.create(**CHAT)
        assert 0 < int(limited.value.response.headers["Retry-After"]) <= 60
        assert limited.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
        assert service.calls == ["models"] * 3
        # And another key is not held back by it
        other = OpenAI(base_url=f"http://{host}:{port}/v1", api_key="llmh-other", max_retries=0)
        assert other.models.list().data == []
    finally:
        running.shutdown()


def test_unreadable_keys_answer_503_with_retry_after(service: ScriptedService) -> None:
    def failing() -> dict[str, str]:
        raise ConnectionError("Secrets Manager timed out")

    running = _serve(ServingHttpApp(lambda: service, ApiKeyAuth(failing)))
    try:
        raw = f"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH}\r\n\r\n".encode()
        received = _exchange(running.server_address[:2], raw)
        assert _status(received) == 503
        assert b"retry-after: 30" in received.lower()
        assert _body(received)["error"]["code"] == "api_keys_unavailable"
    finally:
        running.shutdown()


def test_the_openapi_document_is_served_without_a_key_and_lists_every_status(
    server: tuple[str, int],
) -> None:
    from llmhost.serving.requests import ChatCompletionRequest

    raw = b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    document = _body(_exchange(server, raw))
    assert document["openapi"].startswith("3.1")
    chat = document["paths"]["/v1/chat/completions"]["post"]
    expected = {"200", "400", "401", "404", "413", "415", "422", "429", "503", "504"}
    assert expected <= set(chat["responses"])
    for status in ("429", "503"):
        assert "Retry-After" in chat["responses"][status]["headers"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    assert chat["responses"]["422"]["content"]["application/json"]["schema"] == error
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    # The request body is described by the model that validates it
    schemas = document["components"]["schemas"]
    assert (
        schemas["ChatCompletionRequest"]["required"]
        == (ChatCompletionRequest.model_json_schema()["required"])
    )
