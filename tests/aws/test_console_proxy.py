"""The console's same-origin proxy: what it forwards, how it signs, and what it refuses.

Signing is checked by the thing that matters: the local API Gateway (``llmhost_local.gateway``,
which recomputes SigV4 with botocore as API Gateway's IAM auth does) lets the request
through to its function. The OpenAI side is a stand-in server that streams on cue, so a
chunk reaching the client before the next one is written shows the proxy does not buffer.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from llmhost_local.cloud import ACCESS_KEY, LOCAL_API_KEY, SECRET_KEY
from llmhost_local.console import Upstreams, serve_console
from llmhost_local.console.proxy import ProxyRefused, upstream_path
from llmhost_local.gateway import LocalApiGateway
from llmhost_local.http_server import BackgroundServer

CONSOLE = {"X-Llmhost-Console": "1"}


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A function behind the gateway that answers with what it was invoked with."""
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(
            {
                "method": event["httpMethod"],
                "path": event["path"],
                "query": event["queryStringParameters"],
                "body": event["body"],
                "headers": {k.lower(): v for k, v in (event["headers"] or {}).items()},
            }
        ),
    }


class OpenAiStandIn:
    """Streams three SSE events, each only once the test releases it, and keeps the
    headers it was sent."""

    def __init__(self) -> None:
        self.release = [threading.Event() for _ in range(3)]
        self.headers: dict[str, str] = {}
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> StreamingResponse:
        import anyio.to_thread

        self.headers = dict(request.headers)
        body = await request.json()

        async def events() -> AsyncIterator[bytes]:
            for number, gate in enumerate(self.release):
                # Not released in time: the client never saw the event before (buffered)
                released = await anyio.to_thread.run_sync(gate.wait, 10)
                event = {"n": number, "released": released, "model": body["model"]}
                yield f"data: {json.dumps(event)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def gateway() -> Iterator[BackgroundServer]:
    app = LocalApiGateway(
        {"api": lambda: echo, "serve": lambda: echo}, access_key=ACCESS_KEY, secret_key=SECRET_KEY
    )
    server = BackgroundServer(app, name="gateway")
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def openai() -> Iterator[tuple[OpenAiStandIn, BackgroundServer]]:
    stand_in = OpenAiStandIn()
    server = BackgroundServer(stand_in.app, name="openai")
    yield stand_in, server
    server.shutdown()


def _console(gateway: BackgroundServer, openai_url: str, secret: str = SECRET_KEY) -> Any:
    return serve_console(
        0,
        Upstreams(
            api=gateway.url,
            openai=openai_url,
            access_key=ACCESS_KEY,
            secret_key=secret,
            api_key=LOCAL_API_KEY,
        ),
    )


@pytest.fixture(scope="module")
def console(
    gateway: BackgroundServer, openai: tuple[OpenAiStandIn, BackgroundServer]
) -> Iterator[str]:
    server = _console(gateway, openai[1].url)
    yield server.url
    server.shutdown()


def _raw(url: str, method: str, target: str, headers: dict[str, str]) -> tuple[int, Any]:
    """A request sent with ``target`` exactly as written (no client normalising ``..``)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request(method, target, headers=headers)
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read() or b"null")
    finally:
        connection.close()


# ---------------------------------------------------------------------------- path rules


@pytest.mark.parametrize(
    "path",
    [
        "/v1/deployments",
        "/v1/deployments/demo/capacity",
        "/v1/collections/docs/documents/guides%2Fsetup.md",
        "/v1/traces/0af7651916cd43dd8448eb211c80319c",
    ],
)
def test_the_apis_paths_are_forwarded(path: str) -> None:
    assert upstream_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "/v2/deployments",
        "/deployments",
        "",
        "/v1/../admin",
        "/v1/./deployments",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/v1/%252e%252e/admin",
        "/v1/collections/docs/documents/a%2F..%2F..%2Fb",
        "/v1//evil.example/x",
        "/v1/http://evil.example/x",
        "/v1/https:%2F%2Fevil.example",
        "//evil.example/v1/x",
        "http://evil.example/v1/x",
        "/v1/a\\..\\b",
        "/v1/a%00b",
        "/v1/a b",
        "/v1/" + "a" * 5000,
    ],
)
def test_other_paths_are_refused_with_a_400_naming_the_path(path: str) -> None:
    with pytest.raises(ProxyRefused) as refused:
        upstream_path(path)
    assert refused.value.status == 400
    assert refused.value.message.startswith("path:")


# ---------------------------------------------------------------------------- control API


def test_a_call_is_signed_so_api_gateways_iam_auth_lets_it_through(console: str) -> None:
    # When the page lists deployments with a query, through the console
    reply = httpx.get(f"{console}/api/v1/deployments?status=IN_SERVICE&limit=5", headers=CONSOLE)
    # Then the gateway verified the signature and invoked the function with the request
    assert reply.status_code == 200, reply.text
    seen = reply.json()
    assert (seen["method"], seen["path"]) == ("GET", "/v1/deployments")
    assert seen["query"] == {"status": "IN_SERVICE", "limit": "5"}
    assert seen["headers"]["authorization"].startswith("AWS4-HMAC-SHA256 Credential=llmhost-local/")


def test_an_encoded_query_is_signed_as_the_page_sends_it(console: str) -> None:
    # The page encodes a time with encodeURIComponent (colons as %3A)
    target = "/api/v1/traces?from=2026-12-03T02%3A00%3A00.000Z&model=a%20b&limit=20"
    reply = httpx.get(f"{console}{target}", headers=CONSOLE)
    assert reply.status_code == 200, reply.text
    assert reply.json()["query"] == {
        "from": "2026-12-03T02:00:00.000Z",
        "model": "a b",
        "limit": "20",
    }


def test_a_body_and_an_encoded_path_are_signed_as_sent(console: str) -> None:
    # Given a POST with a JSON body, and a document id with an encoded slash
    body = {"name": "zephyr", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}
    posted = httpx.post(f"{console}/api/v1/deployments", json=body, headers=CONSOLE)
    deleted = httpx.delete(
        f"{console}/api/v1/collections/docs/documents/guides%2Fsetup.md", headers=CONSOLE
    )
    # Then both pass IAM auth, the body arrives unchanged and the id keeps its slash
    assert posted.status_code == 200, posted.text
    assert json.loads(posted.json()["body"]) == body
    assert posted.json()["headers"]["content-type"] == "application/json"
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["path"] == "/v1/collections/docs/documents/guides%2Fsetup.md"


def test_a_wrong_key_is_refused_by_the_gateway_and_its_403_passes_through(
    gateway: BackgroundServer, openai: tuple[OpenAiStandIn, BackgroundServer]
) -> None:
    server = _console(gateway, openai[1].url, secret="not-the-secret")
    try:
        reply = httpx.get(f"{server.url}/api/v1/deployments", headers=CONSOLE)
    finally:
        server.shutdown()
    assert reply.status_code == 403
    assert reply.headers["x-amzn-errortype"] == "InvalidSignatureException"


def test_the_browsers_credentials_never_go_upstream(console: str) -> None:
    reply = httpx.get(
        f"{console}/api/v1/deployments",
        headers={**CONSOLE, "Cookie": "session=s3cr3t", "X-Custom": "1", "Prefer": "wait=5"},
    )
    seen = reply.json()["headers"]
    assert "cookie" not in seen and "x-custom" not in seen
    assert seen["prefer"] == "wait=5"


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/../../admin",
        "/api/v1/%2e%2e/admin",
        "/api/http://evil.example/v1/x",
        "/api//evil.example/v1/deployments",
        "/openai/v1/../../etc/passwd",
        "/openai/v2/models",
    ],
)
def test_paths_outside_the_apis_are_refused_before_anything_is_sent(
    console: str, target: str
) -> None:
    status, body = _raw(console, "GET", target, {**CONSOLE, "Host": console[7:]})
    assert status == 400
    assert body["message"].startswith("path:")


def test_another_host_name_is_refused(console: str) -> None:
    # A DNS-rebound name pointing at 127.0.0.1 must not reach the page or the proxy
    for target in ("/", "/api/v1/deployments"):
        status, body = _raw(console, "GET", target, {**CONSOLE, "Host": "evil.example"})
        assert status == 403
        assert body["message"].startswith("Host:")


def test_a_request_without_the_consoles_header_is_refused(console: str) -> None:
    # What a form or an <img> on another site can send: no custom headers
    reply = httpx.post(
        f"{console}/api/v1/deployments", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    assert reply.status_code == 403
    assert "x-llmhost-console" in reply.json()["message"]


def test_an_upstream_that_is_down_is_a_502_saying_which(
    gateway: BackgroundServer, openai: tuple[OpenAiStandIn, BackgroundServer]
) -> None:
    server = _console(gateway, "http://127.0.0.1:9")  # discard port: nothing listens
    try:
        reply = httpx.post(
            f"{server.url}/openai/v1/chat/completions", json={"model": "x"}, headers=CONSOLE
        )
    finally:
        server.shutdown()
    assert reply.status_code == 502
    assert "http://127.0.0.1:9" in reply.json()["message"]


def test_the_page_is_served_with_its_script_and_a_strict_policy(console: str) -> None:
    page = httpx.get(console + "/")
    script = httpx.get(console + "/console.js")
    assert page.status_code == 200 and 'src="/console.js"' in page.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    # Nothing on the page comes from elsewhere
    for name in ("/", "/console.js", "/console.css"):
        assert "http://" not in httpx.get(console + name).text.replace("http://www.w3.org", "")


# ---------------------------------------------------------------------------- streams


def test_a_chat_stream_passes_through_chunk_by_chunk_with_the_local_key(
    console: str, openai: tuple[OpenAiStandIn, BackgroundServer]
) -> None:
    stand_in = openai[0]
    for gate in stand_in.release:
        gate.clear()
    body = {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST",
        f"{console}/openai/v1/chat/completions",
        json=body,
        headers={**CONSOLE, "Authorization": "Bearer from-the-browser"},
        timeout=30,
    ) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = reply.iter_lines()
        received = []
        # Each event reaches the client while the server still holds back the next
        for number, gate in enumerate(stand_in.release):
            gate.set()
            line = next(line for line in lines if line)
            received.append(json.loads(line.removeprefix("data: ")))
            assert received[-1] == {"n": number, "released": True, "model": "demo"}
        assert next(line for line in lines if line) == "data: [DONE]"
    assert stand_in.headers["authorization"] == f"Bearer {LOCAL_API_KEY}"
