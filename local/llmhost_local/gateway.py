"""The local API Gateway: llmhost's REST API with IAM auth in front of its functions (ASGI).

What API Gateway does for ``template.yaml``'s API, this does too:

- routing: the serving resources (``SERVE_RESOURCES``, as the template declares them, with
  their path parameters, a greedy ``{name+}`` last one taking every remaining segment) go to
  the serve function, every other path to the api function's ``/{proxy+}``;
- IAM auth: a request not signed with the local key pair is refused with 403, API Gateway's
  message and its ``x-amzn-ErrorType`` (``llmhost_local.sigv4``);
- the 10 MB payload limit (413);
- the Lambda proxy integration (payload 1.0): the event as ``events.api_gateway_event``
  builds it, and the function's answer as API Gateway returns it: ``statusCode``,
  ``headers`` and ``multiValueHeaders`` merged (a name in both keeps the
  ``multiValueHeaders`` values), ``Content-Type: application/json`` when the function set
  none, a base64 body decoded. A function that raises or answers without a status is
  API Gateway's 502 ``{"message": "Internal server error"}``.

HTTP itself is uvicorn's (``llmhost_local.http_server``). Functions run as Lambda runs them:
each invocation in an execution environment of its own (a freshly imported handler module,
started cold when all are busy) that handles one event at a time, since a handler's module
state is not made for concurrent events; at most ``concurrency`` at a time (as a Lambda
concurrency limit would; others wait).

Unlike Lambda's, these environments are threads of one process: a module imported once
(Powertools, llmhost's library, botocore) is shared by every copy of a handler, and its state
by every invocation running at the same time. What belongs to one invocation must not live
there: Powertools keeps the resolver's current event on a class, so llmhost's resolvers keep
theirs per thread (``llmhost.api.http.OwnEventResolver``); its ``Metrics`` share one metric
set per process, so each function publishes through ``EphemeralMetrics`` of its own; and the
AWS clients, shared by all, keep as many connections as the runner has invocations at once
(``LLMHOST_AWS_MAX_POOL_CONNECTIONS``). Still shared: the Logger's keys per service (a log
line of one invocation may carry another's request id) and the cold-start flag (only the
first invocation of the process reports a cold start).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import anyio
import anyio.to_thread

from llmhost_local import events, sigv4

logger = logging.getLogger(__name__)

# API Gateway's maximum payload for a REST API.
MAX_PAYLOAD_BYTES = 10 * 1024 * 1024
# (resource, methods) the serve function has in template.yaml; the rest is the api function's.
SERVE_RESOURCES: tuple[tuple[str, frozenset[str]], ...] = (
    ("/v1/rag", frozenset({"POST"})),
    ("/v1/chat/completions", frozenset({"POST"})),
    ("/v1/models", frozenset({"GET"})),
    ("/v1/collections", frozenset({"GET", "POST"})),
    ("/v1/collections/{name}", frozenset({"GET", "DELETE"})),
    ("/v1/collections/{name}/documents", frozenset({"POST"})),
    ("/v1/collections/{name}/documents/{doc_id+}", frozenset({"DELETE"})),
    ("/v1/jobs", frozenset({"GET", "POST"})),
    ("/v1/jobs/{job_id}", frozenset({"GET", "DELETE"})),
)
# Paths the serve function answers even for a method it lacks (its router says 404/405).
SERVING_PREFIXES = ("/v1/rag", "/v1/chat/", "/v1/models", "/v1/collections", "/v1/jobs")
# Hop-by-hop and framing headers API Gateway sets itself, whatever the function says.
_OWN_HEADERS = frozenset({"content-length", "connection", "transfer-encoding", "keep-alive"})

Function = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class Integration:
    """Which function a request goes to, under which resource, with which path parameters."""

    function: str  # "api" or "serve"
    resource: str
    path_parameters: dict[str, str] | None


def integration_for(method: str, path: str) -> Integration:
    """The integration API Gateway picks for ``method`` on ``path`` (percent-encoded)."""
    segments = path.strip("/").split("/")
    for resource, methods in SERVE_RESOURCES:
        if method not in methods:
            continue
        parameters = _match(resource.strip("/").split("/"), segments)
        if parameters is not None:
            return Integration("serve", resource, parameters or None)
    function = "serve" if path.startswith(SERVING_PREFIXES) else "api"
    return Integration(function, "/{proxy+}", {"proxy": unquote(path.lstrip("/"))})


def _match(template: list[str], segments: list[str]) -> dict[str, str] | None:
    """The path parameters of ``segments`` under a resource's ``template``, or None.

    A parameter takes one non-empty segment; a greedy one (``{name+}``, always last) takes
    all that remain, each non-empty, joined by '/'. Values are decoded (``path`` is not).
    """
    last = len(template) - 1
    greedy = template[last].startswith("{") and template[last].endswith("+}")
    fits = len(segments) > last if greedy else len(segments) == len(template)
    if not fits:
        return None
    parameters: dict[str, str] = {}
    for i, want in enumerate(template):
        got = segments[i:] if greedy and i == last else segments[i : i + 1]
        if want.startswith("{"):
            if not all(got):
                return None
            parameters[want.strip("{+}")] = unquote("/".join(got))
        elif [want] != got:
            return None
    return parameters


class Environments:
    """A function's execution environments: ``start`` makes one (a cold start); each runs
    one invocation at a time and is kept for the next, as Lambda keeps them warm."""

    def __init__(self, start: Callable[[], Function]) -> None:
        self._start = start
        self._idle: list[Function] = []
        self._lock = threading.Lock()
        self.started = 0

    @contextlib.contextmanager
    def acquire(self) -> Iterator[Function]:
        with self._lock:
            handler = self._idle.pop() if self._idle else None
        if handler is None:
            handler = self._start()
            with self._lock:
                self.started += 1
        try:
            yield handler
        finally:
            with self._lock:
                self._idle.append(handler)


def response_headers(response: dict[str, Any]) -> list[tuple[str, str]]:
    """The headers API Gateway sends for a proxy integration's ``response`` (see above)."""
    multi = response.get("multiValueHeaders") or {}
    merged: list[tuple[str, str]] = []
    in_multi = {name.lower() for name in multi}
    for name, value in (response.get("headers") or {}).items():
        if name.lower() not in in_multi and value is not None:
            merged.append((name, str(value)))
    for name, values in multi.items():
        for value in values if isinstance(values, list) else [values]:
            merged.append((name, str(value)))
    merged = [(n, v) for n, v in merged if n.lower() not in _OWN_HEADERS]
    if not any(name.lower() == "content-type" for name, _ in merged):
        merged.append(("Content-Type", "application/json"))
    return merged


def response_body(response: dict[str, Any]) -> bytes:
    body = response.get("body") or ""
    if response.get("isBase64Encoded"):
        return base64.b64decode(body)
    return str(body).encode()


class LocalApiGateway:
    """The ASGI app. ``functions`` maps "api"/"serve" to a function that starts a new
    execution environment (returns a fresh handler); ``answered`` is told each request's
    (method, path, body, status) after it was answered."""

    def __init__(
        self,
        functions: dict[str, Callable[[], Function]],
        *,
        access_key: str,
        secret_key: str,
        answered: Callable[[str, str, bytes, int], None] = lambda *_: None,
        concurrency: int = 64,
    ) -> None:
        self.environments = {name: Environments(start) for name, start in functions.items()}
        self._access_key = access_key
        self._secret_key = secret_key
        self._answered = answered
        self._limiter = anyio.CapacityLimiter(concurrency)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        path = scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        target = f"{path}?{query}" if query else path
        headers = [
            (_header_name(name.decode("latin-1")), value.decode("latin-1"))
            for name, value in scope["headers"]
        ]
        body = await _read_body(receive, headers)
        if body is None:
            await _send(send, *_error(413, "Request Too Long"))
            return
        client = (scope.get("client") or ("127.0.0.1", 0))[0]
        status, out_headers, out_body = await anyio.to_thread.run_sync(
            self._invoke, method, target, headers, body, client, limiter=self._limiter
        )
        await _send(send, status, out_headers, out_body)
        try:
            self._answered(method, path, body, status)
        except Exception:  # a listener's trouble must not become the client's
            logger.exception("after-response hook failed for %s %s", method, path)

    def _invoke(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes, client: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            caller = sigv4.verify(method, target, headers, body, self._access_key, self._secret_key)
        except sigv4.AuthError as error:
            return _error(403, error.message, error.error_type)
        path = target.split("?", 1)[0]
        integration = integration_for(method, path)
        event = events.api_gateway_event(
            method,
            target,
            headers,
            body,
            caller,
            resource=integration.resource,
            path_parameters=integration.path_parameters,
            source_ip=client,
        )
        name = f"llmhost-{integration.function}"
        try:
            with self.environments[integration.function].acquire() as handler:
                response = handler(event, events.LambdaContext(name))
            status = int(response["statusCode"])
            return status, response_headers(response), response_body(response)
        except Exception:
            # Lambda reports the error; API Gateway answers 502 without details.
            logger.exception("%s failed on %s %s", name, method, path)
            return _error(502, "Internal server error", "InternalServerErrorException")


def _header_name(lower: str) -> str:
    """``content-type`` -> ``Content-Type``: ASGI lowercases names; clients mostly send these."""
    return "-".join(word[:1].upper() + word[1:] for word in lower.split("-"))


def _error(
    status: int, message: str, error_type: str | None = None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """An answer API Gateway gives itself: ``{"message": ...}`` and its error type."""
    headers = [("Content-Type", "application/json")]
    if error_type:
        headers.append(("x-amzn-ErrorType", error_type))
    return status, headers, json.dumps({"message": message}).encode()


async def _read_body(receive: Any, headers: list[tuple[str, str]]) -> bytes | None:
    """The request body, or None when it exceeds API Gateway's payload limit."""
    declared = next((v for n, v in headers if n.lower() == "content-length"), None)
    if declared is not None and declared.isdigit() and int(declared) > MAX_PAYLOAD_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_PAYLOAD_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def _send(send: Any, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    raw = [(n.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for n, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
