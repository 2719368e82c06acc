"""A local SageMaker runtime: ``InvokeEndpoint`` and ``InvokeEndpointWithResponseStream`` over
the real REST API, so ``boto3.client("sagemaker-runtime", endpoint_url=...)`` works unchanged.

What it does, as SageMaker does it:

- ``POST /endpoints/{EndpointName}/invocations`` and ``.../invocations-response-stream``,
  with the headers botocore sends (``X-Amzn-SageMaker-Inference-Component``,
  ``X-Amzn-SageMaker-Custom-Attributes``, ``Content-Type``, ``Accept`` or
  ``X-Amzn-SageMaker-Accept``), checked against the constraints of botocore's own service
  model (lengths, patterns, the 6 MB body) and refused with AWS's ``ValidationError`` wording.
- A ``routes(endpoint_name, inference_component_name)`` callable decides where a request
  goes (a ``RouteTarget``, ``llmhost_local.runtime_state``): a ``LocalEngine`` in this
  process, a TGI/vLLM server's ``/invocations`` (the runner uses this for
  ``LLMHOST_ENGINE_URL``), or a refusal AWS would give (no such endpoint, a component scaled
  to zero, a model not ready, throttling).
- The container's reply comes back as ``InvokeEndpoint``'s body, or, streamed, as
  ``PayloadPart`` events in AWS event-stream framing over HTTP chunked transfer, one event
  per piece the container produced, or re-cut every ``split_bytes`` bytes to stress clients.
- Container errors become ``ModelError`` (424) with ``OriginalStatusCode``/``OriginalMessage``;
  a failure after streaming began becomes a ``ModelStreamError`` event.
- Every request that reaches a container, and every one refused for want of a copy, is
  counted in ``RuntimeFront.invocations`` (an ``InvocationLog``, ``llmhost_local.runtime_state``):
  the ``Invocations`` and ``NoCapacityInvocationFailures`` metrics the local alarm evaluator
  reads.

Errors use the REST-JSON shape (``x-amzn-ErrorType`` header, JSON body with ``Message``) so
botocore raises its modeled exceptions: ``client.exceptions.ValidationError``, ``ModelError``,
``ModelNotReadyException``... AWS wordings reproduced here, with where they were observed:

- unknown endpoint: "Endpoint <name> of account <account> not found." (ValidationError;
  aws/amazon-sagemaker-examples#293 and #559)
- inference component scaled to zero: "Inference Component has no capacity to process this
  request. ApplicationAutoScaling may be in-progress (if configured) or try to increase the
  capacity by invoking UpdateInferenceComponentRuntimeConfig API." (ValidationError, HTTP 400;
  AWS ML blog "Unlock cost savings with the new scale down to zero feature in SageMaker
  Inference", Dec 2024)
- endpoint with components called without one: "Inference Component Name header is required
  for endpoints to which you plan to deploy inference components. Please include Inference
  Component Name header or consider using SageMaker models." (aws-samples/
  amazon-kendra-langchain-extensions#64)
- container error: 'Received client error (422) from primary with message "<body>". See
  https://<region>.console.aws.amazon.com/cloudwatch/home?region=<region>#logEventViewer:
  group=/aws/sagemaker/Endpoints/<name> in account <account> for more information.'
  (aws/sagemaker-python-sdk#2955, aws/amazon-sagemaker-examples#407)
- container timeout: "Your invocation timed out while waiting for a response from container
  primary. Review the latency metrics for each container in Amazon CloudWatch, resolve the
  issue, and try again." (ModelError; aws-samples/host-yolov8-on-sagemaker-endpoint#21)
- oversize body: "Request <request id> has oversize body." (ValidationError;
  aws/sagemaker-python-sdk#4271, seen on serverless endpoints; real-time endpoints once
  answered a bare HTTP 413)

``InvokeEndpointAsync`` (``POST /endpoints/{EndpointName}/async-invocations``) is checked
the same way and handed to an ``AsyncInference`` (``llmhost_local.async_inference``: the
queue, the instances stepping it, S3 and SNS); its answer is HTTP 202 with ``InferenceId``
and the output and failure locations, as SageMaker's.

Not emulated: SigV4 verification (any credentials work), sessions.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from llmhost.errors import LlmhostError
from llmhost_local import eventstream
from llmhost_local.async_inference import AsyncInference, AsyncRequestInvalid
from llmhost_local.engine import EngineReply
from llmhost_local.engine_server import StreamingHandler
from llmhost_local.runtime_state import InvocationLog, Routes, RouteTarget

INVOKE = "InvokeEndpoint"
INVOKE_STREAM = "InvokeEndpointWithResponseStream"
INVOKE_ASYNC = "InvokeEndpointAsync"
_PATH = re.compile(
    r"^/endpoints/([^/]+)/(invocations|invocations-response-stream|async-invocations)$"
)
_OPERATIONS = {
    "invocations": INVOKE,
    "invocations-response-stream": INVOKE_STREAM,
    "async-invocations": INVOKE_ASYNC,
}

NO_CAPACITY_MESSAGE = (
    "Inference Component has no capacity to process this request. ApplicationAutoScaling may "
    "be in-progress (if configured) or try to increase the capacity by invoking "
    "UpdateInferenceComponentRuntimeConfig API."
)
COMPONENT_REQUIRED_MESSAGE = (
    "Inference Component Name header is required for endpoints to which you plan to deploy "
    "inference components. Please include Inference Component Name header or consider using "
    "SageMaker models."
)
NOT_READY_MESSAGE = (
    "Either a serverless endpoint variant's resources are still being provisioned, or a "
    "multi-model endpoint is still downloading or loading the target model. Wait and try "
    "your request again."
)
TIMEOUT_MESSAGE = (
    "Your invocation timed out while waiting for a response from container primary. Review "
    "the latency metrics for each container in Amazon CloudWatch, resolve the issue, and try "
    "again."
)


class RuntimeApiError(LlmhostError):
    """An error the SageMaker runtime API returns: ``code`` is AWS's error code (botocore's
    exception name), ``status`` its HTTP status, ``fields`` the modeled extras."""

    def __init__(self, code: str, status: int, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.fields = fields


def _validation(message: str) -> RuntimeApiError:
    return RuntimeApiError("ValidationError", 400, message)


@dataclass
class FrontReply:
    """What the front answers: a complete body, or event-stream messages to send as chunks."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    events: Iterator[bytes] | None = None


@dataclass(frozen=True)
class _Invocation:
    operation: str
    endpoint: str
    component: str | None
    headers: Mapping[str, str]
    body: bytes
    request_id: str


class RuntimeFront:
    """The SageMaker runtime API's rules, independent of HTTP: ``handle`` takes a request's
    method, path, headers and body and returns a ``FrontReply``.

    ``routes`` maps (endpoint name, inference component name or None) to a ``RouteTarget``
    (None: no such endpoint). ``split_bytes`` re-cuts streamed bytes into PayloadParts of at
    most that many bytes (None: one part per piece the container sent).
    """

    def __init__(
        self,
        routes: Routes,
        account_id: str = "123456789012",
        split_bytes: int | None = None,
        region: str = "us-east-1",
        invocations: InvocationLog | None = None,
        async_inference: AsyncInference | None = None,
    ) -> None:
        if split_bytes is not None and split_bytes <= 0:
            raise ValueError(
                f"split_bytes must be a positive byte count or None, got {split_bytes}"
            )
        self.routes = routes
        self.account_id = account_id
        self.split_bytes = split_bytes
        self.region = region
        self.invocations = invocations or InvocationLog()
        self.async_inference = async_inference

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> FrontReply:
        """Serve one runtime API request; every failure becomes AWS's error reply."""
        request_id = str(uuid.uuid4())
        try:
            invocation = self._parse(method, path, headers, body, request_id)
            return self._invoke(invocation)
        except RuntimeApiError as error:
            return self._error(error, request_id)

    # -- request

    def _parse(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, request_id: str
    ) -> _Invocation:
        match = _PATH.match(urlsplit(path).path)
        if method != "POST" or not match:
            raise RuntimeApiError(
                "UnknownOperationException",
                404,
                f"{method} {urlsplit(path).path} is not a SageMaker runtime operation; this "
                "front serves POST /endpoints/{name}/invocations, "
                "/endpoints/{name}/invocations-response-stream and "
                "/endpoints/{name}/async-invocations",
            )
        operation = _OPERATIONS[match[2]]
        lowered = {k.lower(): v for k, v in headers.items()}
        endpoint = unquote(match[1])
        problems = _violations(operation, endpoint, lowered)
        if problems:
            noun = "validation error" if len(problems) == 1 else "validation errors"
            raise _validation(f"{len(problems)} {noun} detected: {'; '.join(problems)}")
        if len(body) > _body_limit(operation):
            raise _validation(f"Request {request_id} has oversize body.")
        component = lowered.get("x-amzn-sagemaker-inference-component") or None
        return _Invocation(operation, endpoint, component, lowered, body, request_id)

    # -- routing

    def _invoke(self, call: _Invocation) -> FrontReply:
        if call.operation == INVOKE_ASYNC:
            return self._queue(call)
        target = self.routes(call.endpoint, call.component)
        if target is None:
            raise _validation(f"Endpoint {call.endpoint} of account {self.account_id} not found.")
        if target.kind == "no_capacity":
            self.invocations.record(call.endpoint, call.component, "no_capacity")
            raise _validation(NO_CAPACITY_MESSAGE)
        if target.kind == "component_required":
            raise _validation(COMPONENT_REQUIRED_MESSAGE)
        if target.kind == "component_not_found":
            raise _validation(
                f"Inference Component {call.component} of endpoint {call.endpoint} of account "
                f"{self.account_id} not found."
            )
        if target.kind == "not_ready":
            raise RuntimeApiError("ModelNotReadyException", 429, NOT_READY_MESSAGE)
        if target.kind == "throttled":
            raise RuntimeApiError("ThrottlingException", 400, "Rate exceeded")
        self.invocations.record(call.endpoint, call.component, "invoked")
        reply = self._container(target, call)
        if reply.status != 200:
            raise self._model_error(call, reply.status, _drain(reply))
        common = {
            "x-amzn-RequestId": call.request_id,
            "x-Amzn-Invoked-Production-Variant": target.variant,
            **{
                name: value
                for name, value in reply.headers.items()
                if name.lower() == "x-amzn-sagemaker-custom-attributes"
            },
        }
        if call.operation == INVOKE:
            return FrontReply(200, {**common, "Content-Type": reply.content_type}, _drain(reply))
        stream = {
            **common,
            "Content-Type": "application/vnd.amazon.eventstream",
            "X-Amzn-SageMaker-Content-Type": reply.content_type,
        }
        return FrontReply(200, stream, events=self._events(reply))

    def _queue(self, call: _Invocation) -> FrontReply:
        """InvokeEndpointAsync: queued, answered 202 with where the result will be."""
        if self.async_inference is None:
            raise RuntimeApiError(
                "UnknownOperationException",
                404,
                "this runtime front has no asynchronous inference (give it an AsyncInference)",
            )
        headers = call.headers
        try:
            queued = self.async_inference.submit(
                call.endpoint,
                body=call.body or None,
                input_location=headers.get("x-amzn-sagemaker-inputlocation"),
                inference_id=headers.get("x-amzn-sagemaker-inference-id"),
                content_type=headers.get("x-amzn-sagemaker-content-type"),
                accept=headers.get("x-amzn-sagemaker-accept"),
            )
        except AsyncRequestInvalid as error:
            raise _validation(str(error)) from None
        locations = {"X-Amzn-SageMaker-OutputLocation": queued["OutputLocation"]}
        if "FailureLocation" in queued:
            locations["X-Amzn-SageMaker-FailureLocation"] = queued["FailureLocation"]
        body = json.dumps({"InferenceId": queued["InferenceId"]}).encode()
        return FrontReply(
            202,
            {"x-amzn-RequestId": call.request_id, "Content-Type": "application/json", **locations},
            body,
        )

    def _container(self, target: RouteTarget, call: _Invocation) -> EngineReply:
        if target.kind == "engine":
            assert target.engine is not None
            return target.engine.handle("POST", "/invocations", call.body)
        assert target.url is not None
        try:
            return _post_upstream(target.url, target.timeout_s, call)
        except _UpstreamTimeout as error:
            raise self._model_error(call, 0, TIMEOUT_MESSAGE.encode()) from error
        except _UpstreamUnreachable as error:
            raise self._model_error(
                call,
                502,
                f"llmhost could not reach the engine at {target.url}: {error}. Check that it "
                "runs and that LLMHOST_ENGINE_URL points at it".encode(),
            ) from error

    def _events(self, reply: EngineReply) -> Iterator[bytes]:
        """Container bytes as PayloadPart messages, one HTTP chunk per container piece; a
        failure mid-stream ends with a ModelStreamError event, as SageMaker does."""
        pieces = reply.stream if reply.stream is not None else iter([reply.body])
        try:
            for piece in pieces:
                if piece:
                    yield b"".join(eventstream.payload_parts(piece, self.split_bytes))
        except TimeoutError:
            yield eventstream.model_stream_error(
                TIMEOUT_MESSAGE, eventstream.INVOCATION_TIME_EXCEEDED
            )
        except (OSError, http.client.HTTPException) as error:
            yield eventstream.model_stream_error(
                f"The model's stream broke: {error}", eventstream.STREAM_BROKEN
            )
        finally:
            close = getattr(pieces, "close", None)
            if close:
                close()

    # -- errors

    def _model_error(self, call: _Invocation, status: int, body: bytes) -> RuntimeApiError:
        # AWS reports a container that never answered (a timeout) as status 0.
        original = body.decode("utf-8", errors="replace")
        side = "client" if 400 <= status < 500 else "server"
        group = f"/aws/sagemaker/Endpoints/{call.endpoint}"
        console = (
            f"https://{self.region}.console.aws.amazon.com/cloudwatch/home?region={self.region}"
            f"#logEventViewer:group={group}"
        )
        return RuntimeApiError(
            "ModelError",
            424,
            f'Received {side} error ({status}) from primary with message "{original}". '
            f"See {console} in account {self.account_id} for more information.",
            OriginalStatusCode=status,
            OriginalMessage=original,
            LogStreamArn=f"arn:aws:logs:{self.region}:{self.account_id}:log-group:{group}",
        )

    def _error(self, error: RuntimeApiError, request_id: str) -> FrontReply:
        body = json.dumps({"Message": error.message, **error.fields}).encode()
        headers = {
            "x-amzn-RequestId": request_id,
            "x-amzn-ErrorType": error.code,
            "Content-Type": "application/json",
        }
        return FrontReply(error.status, headers, body)


def _drain(reply: EngineReply) -> bytes:
    if reply.stream is None:
        return reply.body
    return b"".join(reply.stream)


# ---- upstream containers --------------------------------------------------------------------


class _UpstreamTimeout(Exception):
    """The container did not answer within the route's timeout."""


class _UpstreamUnreachable(Exception):
    """The container's URL refused or failed the connection."""


def _post_upstream(base_url: str, timeout_s: float, call: _Invocation) -> EngineReply:
    """POST the body to ``<base_url>/invocations`` the way SageMaker calls a container. A
    streamed reply's body is read piece by piece as the container sends it.

    Raises ``_UpstreamTimeout`` when a read waits longer than ``timeout_s`` seconds and
    ``_UpstreamUnreachable`` when the connection fails.
    """
    parts = urlsplit(base_url)
    factory = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = factory(parts.hostname or "", parts.port, timeout=timeout_s)
    forwarded = {
        "Content-Type": call.headers.get("content-type", "application/json"),
        "Accept": call.headers.get("accept")
        or call.headers.get("x-amzn-sagemaker-accept")
        or "*/*",
    }
    if "x-amzn-sagemaker-custom-attributes" in call.headers:
        forwarded["X-Amzn-SageMaker-Custom-Attributes"] = call.headers[
            "x-amzn-sagemaker-custom-attributes"
        ]
    try:
        connection.request("POST", f"{parts.path}/invocations", body=call.body, headers=forwarded)
        response = connection.getresponse()
        content_type = response.getheader("Content-Type", "application/octet-stream")
        headers = dict(response.getheaders())
        if call.operation == INVOKE or response.status != 200:
            with closing(connection):
                return EngineReply(response.status, content_type, response.read(), headers=headers)
    except TimeoutError as error:
        connection.close()
        raise _UpstreamTimeout() from error
    except (OSError, http.client.HTTPException) as error:
        connection.close()
        raise _UpstreamUnreachable(str(error)) from error
    return EngineReply(
        response.status, content_type, stream=_pieces(response, connection), headers=headers
    )


def _pieces(
    response: http.client.HTTPResponse, connection: http.client.HTTPConnection
) -> Iterator[bytes]:
    try:
        while True:
            piece = response.read1(65536)
            if not piece:
                return
            yield piece
    finally:
        connection.close()


# ---- request constraints from botocore's service model ------------------------------------


@lru_cache(maxsize=1)
def _service_model() -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker-runtime")


def _body_limit(operation: str) -> int:
    body = _service_model().operation_model(operation).input_shape.members["Body"]
    return int(body.metadata.get("max", 6 * 1024 * 1024))


def _violations(operation: str, endpoint: str, headers: Mapping[str, str]) -> list[str]:
    """AWS's constraint messages for the URI and header members of the operation's input."""
    found: list[str] = []
    shape = _service_model().operation_model(operation).input_shape
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        if location == "uri":
            value: str | None = endpoint
        elif location == "header":
            value = headers.get(member.serialization["name"].lower())
        else:
            continue
        if value is None:
            continue
        meta = member.metadata
        path = name[:1].lower() + name[1:]
        if member.type_name == "integer":
            if not value.isdigit() or not meta.get("min", 0) <= int(value) <= meta.get(
                "max", 2**31
            ):
                found.append(
                    f"Value '{value}' at '{path}' failed to satisfy constraint: Member must "
                    f"have value between {meta.get('min', 0)} and {meta.get('max', 2**31)}"
                )
            continue
        if "min" in meta and len(value) < meta["min"]:
            found.append(
                f"Value '{value}' at '{path}' failed to satisfy constraint: Member must have "
                f"length greater than or equal to {meta['min']}"
            )
        if "max" in meta and len(value) > meta["max"]:
            found.append(
                f"Value '{value}' at '{path}' failed to satisfy constraint: Member must have "
                f"length less than or equal to {meta['max']}"
            )
        pattern = _java_pattern(meta.get("pattern", ""))
        if pattern is not None and not pattern.fullmatch(value):
            found.append(
                f"Value '{value}' at '{path}' failed to satisfy constraint: Member must satisfy "
                f"regular expression pattern: {meta['pattern']}"
            )
    return found


@lru_cache(maxsize=64)
def _java_pattern(pattern: str) -> re.Pattern[str] | None:
    # The service model's patterns are Java regexes; translate the classes it uses.
    if not pattern:
        return None
    translated = (
        pattern.replace(r"[\p{Print}]", r"[\x20-\x7E]")
        .replace(r"\p{Print}", r"[\x20-\x7E]")
        .replace(r"\p{ASCII}", r"[\x00-\x7F]")
        .replace(r"\z", r"\Z")
    )
    try:
        return re.compile(translated)
    except re.error:
        return None


# ---- HTTP ---------------------------------------------------------------------------------


class _FrontHandler(StreamingHandler):
    front: RuntimeFront

    def do_POST(self) -> None:
        self._serve("POST", self.read_body())

    def do_GET(self) -> None:
        self._serve("GET", b"")

    def _serve(self, method: str, body: bytes) -> None:
        reply = self.front.handle(method, self.path, dict(self.headers.items()), body)
        if reply.events is not None:
            self.send_chunked(reply.status, reply.headers, reply.events)
        else:
            self.send_complete(reply.status, reply.headers, reply.body)


def serve_front(
    front: RuntimeFront, port: int = 0, host: str = "127.0.0.1"
) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``front`` over HTTP from a daemon thread; returns the server (stop it with
    ``shutdown()`` then ``server_close()``) and the URL to give boto3 as ``endpoint_url``."""
    handler = type("RuntimeFrontHandler", (_FrontHandler,), {"front": front})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},  # shutdown() waits up to one interval
        name="llmhost-runtime-front",
        daemon=True,
    ).start()
    return server, f"http://{host}:{server.server_port}"


__all__ = [
    "FrontReply",
    "RuntimeApiError",
    "RuntimeFront",
    "serve_front",
]
