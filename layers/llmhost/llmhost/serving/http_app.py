"""The OpenAI-compatible HTTP server: ``/v1/chat/completions`` (streaming for real), ``/v1/models``.

In AWS it runs inside the stream function behind the Lambda Web Adapter, whose function URL
is in RESPONSE_STREAM mode, so each SSE event leaves as soon as the model produces it.
Locally, ``make run`` serves the same app. It is a plain ``http.server`` app: no framework to
load on a cold start, and chunked transfer encoding written by hand so nothing buffers.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from llmhost.errors import LlmhostError
from llmhost.serving.auth import ApiKeyAuth
from llmhost.serving.requests import ChatCompletionRequest, RagRequest
from llmhost.specs import issues_from_validation_error

MAX_BODY_BYTES = 1_048_576


def openai_error(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    """OpenAI's error body, which its client turns into typed exceptions."""
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        422: "invalid_request_error",
        429: "rate_limit_error",
    }
    return {
        "error": {
            "message": message,
            "type": kinds.get(status, "api_error"),
            "code": code,
            "param": extra.get("param"),
            **extra,
        }
    }


class ServingHttpApp:
    """Routes requests to a serving service; owns only HTTP concerns (auth, SSE, errors)."""

    def __init__(
        self,
        service: Callable[[], Any],
        auth: ApiKeyAuth | None,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self._service = service
        self._auth = auth
        self._log = log

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        app = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Stream events are small writes; Nagle's algorithm would hold them back.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_GET(self) -> None:
                app.handle(self, "GET")

            def do_POST(self) -> None:
                app.handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    # ------------------------------------------------------------------------- dispatch

    def handle(self, http: BaseHTTPRequestHandler, method: str) -> None:
        path = http.path.split("?", 1)[0].rstrip("/") or "/"
        started = time.perf_counter()
        status = 500
        try:
            if path in {"/", "/health"}:
                status = self._send_json(http, 200, {"status": "ok"})
                return
            if self._auth is not None:
                self._auth.authenticate(http.headers.get("Authorization"))
            body = self._read_json(http) if method == "POST" else None
            if method == "GET" and path == "/v1/models":
                status = self._send_json(http, 200, self._service().models())
            elif method == "POST" and path == "/v1/chat/completions":
                request = ChatCompletionRequest.model_validate(body)
                if request.stream:
                    status = self._stream(http, request)
                else:
                    status = self._send_json(http, 200, self._service().chat(request))
            elif method == "POST" and path == "/v1/rag":
                status = self._send_json(
                    http, 200, self._service().rag(RagRequest.model_validate(body))
                )
            else:
                status = self._send_json(
                    http, 404, openai_error(404, "route_not_found", f"no route for {method} {path}")
                )
        except ValidationError as error:
            issues = issues_from_validation_error(error)
            message = "; ".join(f"{i.field}: {i.message}" for i in issues[:3])
            status = self._send_json(
                http,
                422,
                openai_error(
                    422,
                    "invalid_request",
                    message,
                    param=issues[0].field if issues else None,
                    fields=[i.as_dict() for i in issues],
                ),
            )
        except LlmhostError as error:
            headers = {}
            retry_after = getattr(error, "retry_after", None)
            if retry_after:
                headers["Retry-After"] = str(int(retry_after))
            status = self._send_json(
                http, error.status, openai_error(error.status, error.code, error.message), headers
            )
        except Exception:  # no stack trace reaches the client; the log has it
            import traceback

            self._log(traceback.format_exc())
            status = self._send_json(
                http, 500, openai_error(500, "internal_error", "llmhost hit an internal error")
            )
        finally:
            self._log(
                f"{method} {path} -> {status} in {(time.perf_counter() - started) * 1000:.1f} ms"
            )

    # -------------------------------------------------------------------------- helpers

    def _read_json(self, http: BaseHTTPRequestHandler) -> Any:
        length = int(http.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise BodyInvalid(f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}")
        raw = http.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise BodyInvalid("the body is not valid JSON") from None

    def _stream(self, http: BaseHTTPRequestHandler, request: ChatCompletionRequest) -> int:
        # Routing and validation happen before the first byte, so errors keep their status.
        chunks = self._service().chat_stream(request)
        first = next(chunks, None)
        http.send_response(200)
        http.send_header("Content-Type", "text/event-stream; charset=utf-8")
        http.send_header("Cache-Control", "no-cache")
        http.send_header("Transfer-Encoding", "chunked")
        http.send_header("X-Accel-Buffering", "no")
        http.end_headers()
        try:
            for chunk in _chain(first, chunks):
                self._write_chunk(http, b"data: " + json.dumps(chunk).encode() + b"\n\n")
        except LlmhostError as error:
            # Mid-stream failure: OpenAI clients surface an "error" event as an APIError.
            payload = openai_error(error.status, error.code, error.message)
            self._write_chunk(http, b"data: " + json.dumps(payload).encode() + b"\n\n")
        self._write_chunk(http, b"data: [DONE]\n\n")
        http.wfile.write(b"0\r\n\r\n")
        http.wfile.flush()
        return 200

    @staticmethod
    def _write_chunk(http: BaseHTTPRequestHandler, data: bytes) -> None:
        http.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        http.wfile.flush()

    @staticmethod
    def _send_json(
        http: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> int:
        data = json.dumps(body).encode()
        http.send_response(status)
        http.send_header("Content-Type", "application/json")
        http.send_header("Content-Length", str(len(data)))
        http.send_header("x-request-id", uuid.uuid4().hex)
        for key, value in (headers or {}).items():
            http.send_header(key, value)
        http.end_headers()
        http.wfile.write(data)
        return status


class BodyInvalid(LlmhostError):
    code = "invalid_body"
    status = 400


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    if first is not None:
        yield first
    yield from rest


def serve(app: ServingHttpApp, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    """Bind and return the server (call ``serve_forever`` on it)."""
    server = ThreadingHTTPServer((host, port), app.handler_class())
    server.daemon_threads = True
    return server
