"""ModelInvoker against a real boto3 ``sagemaker-runtime`` client, offline.

moto has neither inference components nor response streaming for SageMaker runtime, so:
plain invocations and errors go through ``botocore.stub.Stubber`` (which validates every
request against the service model), and streams go through botocore's own event-stream
parser, fed binary ``PayloadPart`` / exception messages by a ``before-send`` hook (the
Stubber refuses a list of events as the streamed ``Body``).
"""

from __future__ import annotations

import binascii
import itertools
import json
import random
import struct
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber

from llmhost.engines.codecs import GenerationParams, StreamDelta, Usage, iter_deltas
from llmhost.engines.tgi import TgiCodec
from llmhost.serving.errors import (
    ModelFailed,
    ModelInputRejected,
    ModelInvocationError,
    ModelThrottled,
    ModelTimeout,
    ModelUnavailable,
    PromptTooLong,
    StreamInterrupted,
)
from llmhost.serving.invoke import InvocationTarget, ModelInvoker, build_runtime_client

DEDICATED = InvocationTarget("llmhost-mistral")
SHARED = InvocationTarget("llmhost-shared-g5", inference_component="llama-3-8b")
PAYLOAD = TgiCodec().build_generate("[INST] Hi [/INST]", GenerationParams(max_new_tokens=8), False)
LOG_ARN = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/sagemaker/Endpoints/llmhost-mistral"


_SESSION = boto3.session.Session()


def invoker(max_attempts: int = 1, timeout_s: float = 5.0) -> ModelInvoker:
    # One session for all tests: building a client from it skips reloading the service
    # model; each test still gets its own client (its own Stubber and event hooks), with the
    # limits build_runtime_client would give it.
    client = _SESSION.client(
        "sagemaker-runtime",
        region_name="us-east-1",
        config=Config(
            read_timeout=timeout_s,
            connect_timeout=3,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
        ),
    )
    return ModelInvoker(client, timeout_s=timeout_s, max_attempts=max_attempts)


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- invoke


def test_invoke_names_the_inference_component_for_shared_hosting() -> None:
    # Given a stubbed runtime that expects exactly this request
    inv = invoker()
    with Stubber(inv._client) as stub:
        stub.add_response(
            "invoke_endpoint",
            {"Body": b'[{"generated_text":"Hello"}]', "ContentType": "application/json"},
            {
                "EndpointName": "llmhost-shared-g5",
                "InferenceComponentName": "llama-3-8b",
                "ContentType": "application/json",
                "Accept": "application/json",
                "Body": body_of(PAYLOAD),
            },
        )
        # When the invoker calls it
        reply = inv.invoke(SHARED, PAYLOAD)
        stub.assert_no_pending_responses()
    # Then the reply body comes back as bytes the codec can read
    assert TgiCodec().parse_reply(reply).text == "Hello"


def test_invoke_without_a_component_sends_none() -> None:
    inv = invoker()
    with Stubber(inv._client) as stub:
        stub.add_response(
            "invoke_endpoint",
            {"Body": b"{}"},
            {
                "EndpointName": "llmhost-mistral",
                "ContentType": "application/json",
                "Accept": "application/json",
                "Body": body_of(PAYLOAD),
            },
        )
        assert inv.invoke(DEDICATED, PAYLOAD) == b"{}"


def test_the_client_limits_are_the_invokers_limits() -> None:
    client = build_runtime_client(read_timeout_s=20, max_attempts=2, connect_timeout_s=2)
    assert client.meta.config.read_timeout == 20
    assert client.meta.config.connect_timeout == 2
    assert client.meta.config.retries == {"total_max_attempts": 2, "mode": "standard"}
    inv = ModelInvoker(client, timeout_s=20, max_attempts=2, connect_timeout_s=2)
    assert inv.worst_case_s == 44
    with pytest.raises(ValueError, match="build_runtime_client"):
        ModelInvoker(client, timeout_s=60, max_attempts=2)


TGI_TOO_LONG = json.dumps(
    {
        "error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. "
        "Given: 4000 `inputs` tokens and 200 `max_new_tokens`",
        "error_type": "validation",
    }
)


def model_error(status: int, original: str, message: str | None = None) -> dict[str, Any]:
    return {
        "service_error_code": "ModelError",
        "service_message": message
        or f'Received client error ({status}) from primary with message "{original}". See '
        "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#logEventViewer:"
        "group=/aws/sagemaker/Endpoints/llmhost-mistral in account 123456789012 for more "
        "information.",
        "http_status_code": 424,
        "modeled_fields": {
            "OriginalStatusCode": status,
            "OriginalMessage": original,
            "LogStreamArn": LOG_ARN,
        },
    }


CASES: list[tuple[str, dict[str, Any], type[ModelInvocationError], int, str | None]] = [
    ("validation", model_error(422, TGI_TOO_LONG), PromptTooLong, 422, None),
    (
        "bad-parameter",
        model_error(
            422,
            json.dumps(
                {
                    "error": "Input validation error: `top_p` must be > 0.0 and < 1.0",
                    "error_type": "validation",
                }
            ),
        ),
        ModelInputRejected,
        422,
        None,
    ),
    (
        "engine-overloaded",
        model_error(429, json.dumps({"error": "Model is overloaded", "error_type": "overloaded"})),
        ModelThrottled,
        429,
        "2",
    ),
    (
        "engine-crash",
        model_error(
            500,
            json.dumps({"error": "Incomplete generation", "error_type": "incomplete_generation"}),
            message='Received server error (500) from primary with message "Incomplete".',
        ),
        ModelFailed,
        502,
        None,
    ),
    (
        "container-timeout",
        {
            "service_error_code": "ModelError",
            "service_message": 'Received server error (0) from primary with message "Your '
            "invocation timed out while waiting for a response from container primary. Review "
            "the latency metrics for each container in Amazon CloudWatch, resolve the issue, and "
            'try again.". See https://eu-west-1.console.aws.amazon.com/cloudwatch/home',
            "http_status_code": 424,
        },
        ModelTimeout,
        504,
        None,
    ),
    (
        "throttled",
        {
            "service_error_code": "ThrottlingException",
            "service_message": "Rate exceeded",
            "http_status_code": 400,
        },
        ModelThrottled,
        429,
        "2",
    ),
    (
        "scaled-to-zero",
        {
            "service_error_code": "ValidationError",
            "service_message": "Inference Component has no capacity to process this request. "
            "ApplicationAutoScaling may be in-progress (if configured) or try to increase the "
            "capacity by invoking UpdateInferenceComponentRuntimeConfig API.",
            "http_status_code": 400,
        },
        ModelUnavailable,
        503,
        "60",
    ),
    (
        "endpoint-gone",
        {
            "service_error_code": "ValidationError",
            "service_message": "Endpoint llmhost-mistral of account 123456789012 not found.",
            "http_status_code": 400,
        },
        ModelUnavailable,
        503,
        "60",
    ),
    (
        "endpoint-creating",
        {
            "service_error_code": "ValidationError",
            "service_message": "Endpoint llmhost-mistral is not in service.",
            "http_status_code": 400,
        },
        ModelUnavailable,
        503,
        "30",
    ),
    (
        "serverless-cold",
        {
            "service_error_code": "ModelNotReadyException",
            "service_message": "Model not ready",
            "http_status_code": 429,
        },
        ModelUnavailable,
        503,
        "10",
    ),
    (
        "service-down",
        {
            "service_error_code": "ServiceUnavailable",
            "service_message": "Try again",
            "http_status_code": 503,
        },
        ModelUnavailable,
        503,
        "5",
    ),
    # SageMaker's own 5xx (not the model's, which is a ModelError) passes: 503, Retry-After.
    (
        "internal",
        {
            "service_error_code": "InternalFailure",
            "service_message": "An internal failure occurred.",
            "http_status_code": 500,
        },
        ModelUnavailable,
        503,
        "5",
    ),
    (
        "dependency",
        {
            "service_error_code": "InternalDependencyException",
            "service_message": "Dependency failed",
            "http_status_code": 530,
        },
        ModelUnavailable,
        503,
        "5",
    ),
]


@pytest.mark.parametrize(
    ("name", "error", "kind", "status", "retry_after"), CASES, ids=[c[0] for c in CASES]
)
@pytest.mark.parametrize("streamed", [False, True], ids=["invoke", "stream"])
def test_sagemaker_errors_map_to_clear_http_errors(
    name: str,
    error: dict[str, Any],
    kind: type[ModelInvocationError],
    status: int,
    retry_after: str | None,
    streamed: bool,
) -> None:
    # Given SageMaker answering the call with this error
    inv = invoker()
    operation = "invoke_endpoint_with_response_stream" if streamed else "invoke_endpoint"
    with Stubber(inv._client) as stub:
        stub.add_client_error(operation, **error)
        # When the invoker calls the model
        with pytest.raises(ModelInvocationError) as caught:
            if streamed:
                inv.stream(SHARED, PAYLOAD)
            else:
                inv.invoke(SHARED, PAYLOAD)
    mapped = caught.value
    # Then it is the typed error with its HTTP status and Retry-After
    assert type(mapped) is kind
    assert mapped.status == status
    assert mapped.headers().get("Retry-After") == retry_after
    # And the client-facing message has no SageMaker internals
    for leak in ("arn:aws", "123456789012", "https://", "cloudwatch", "Received"):
        assert leak not in mapped.message
    # And the operator's log line keeps the detail, minus ARNs and links
    assert mapped.log_detail and "arn:aws" not in mapped.log_detail


def test_model_validation_message_reaches_the_client_with_token_counts() -> None:
    inv = invoker()
    with Stubber(inv._client) as stub:
        stub.add_client_error("invoke_endpoint", **model_error(422, TGI_TOO_LONG))
        with pytest.raises(PromptTooLong) as caught:
            inv.invoke(DEDICATED, PAYLOAD)
    assert "must be <= 4096" in caught.value.message
    assert caught.value.limits.input_tokens == 4000
    assert caught.value.limits.allowed_input_tokens == 3896


def test_sleeping_model_says_it_is_waking_up() -> None:
    inv = invoker()
    with Stubber(inv._client) as stub:
        stub.add_client_error("invoke_endpoint", **CASES[6][1])
        with pytest.raises(ModelUnavailable) as caught:
            inv.invoke(SHARED, PAYLOAD)
    assert caught.value.reason == "sleeping"
    assert "scaled to zero" in caught.value.message and "retry after 60 s" in caught.value.message


def test_read_timeouts_are_retried_within_the_attempt_budget_then_504(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a client allowed 3 attempts whose every send times out (no backoff sleeps)
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0)
    inv = invoker(max_attempts=3)
    sends: list[str] = []

    def time_out(request: Any, **_: Any) -> None:
        sends.append(request.url)
        raise ReadTimeoutError(endpoint_url=request.url)

    inv._client.meta.events.register("before-send.sagemaker-runtime.InvokeEndpoint", time_out)
    # When invoked, Then it tries exactly 3 times and reports a 504
    with pytest.raises(ModelTimeout) as caught:
        inv.invoke(DEDICATED, PAYLOAD)
    assert len(sends) == 3
    assert caught.value.status == 504 and "max_tokens" in caught.value.message


# --------------------------------------------------------------------------- streaming


def event_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One message of AWS's binary event-stream encoding (string headers only)."""
    encoded = b"".join(
        struct.pack("!B", len(k)) + k.encode() + b"\x07" + struct.pack("!H", len(v)) + v.encode()
        for k, v in headers.items()
    )
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack("!II", total, len(encoded))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message) & 0xFFFFFFFF)


def payload_part(data: bytes) -> bytes:
    return event_message(
        {
            ":event-type": "PayloadPart",
            ":content-type": "application/octet-stream",
            ":message-type": "event",
        },
        data,
    )


def stream_error(kind: str, body: dict[str, str]) -> bytes:
    return event_message(
        {
            ":exception-type": kind,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps(body).encode(),
    )


class RawStream:
    """Stands in for urllib3's response: hands out the wire bytes in the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.closed = False

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        yield from self.pieces

    def close(self) -> None:
        self.closed = True


def serve_stream(inv: ModelInvoker, wire: bytes, rng: random.Random, seen: list[Any]) -> RawStream:
    cuts = sorted(rng.sample(range(1, len(wire)), 15))
    raw = RawStream([wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)])

    def respond(request: Any, **_: Any) -> AWSResponse:
        seen.append(request)
        headers = {
            "Content-Type": "application/vnd.amazon.eventstream",
            "X-Amzn-SageMaker-Content-Type": "text/event-stream",
        }
        return AWSResponse(request.url, 200, headers, raw)

    inv._client.meta.events.register(
        "before-send.sagemaker-runtime.InvokeEndpointWithResponseStream", respond
    )
    return raw


SSE_TEXT = (
    'data:{"index":1,"token":{"id":1,"text":"Bonjour","logprob":-0.1,"special":false},'
    '"generated_text":null,"details":null}\r\n\r\n'
    'data:{"index":2,"token":{"id":2,"text":", wörld","logprob":-0.1,"special":false},'
    '"generated_text":null,"details":null}\r\n\r\n'
    'data:{"index":3,"token":{"id":3,"text":" 日本 🎉","logprob":-0.1,"special":false},'
    '"generated_text":null,"details":null}\r\n\r\n'
    'data:{"index":4,"token":{"id":2,"text":"</s>","logprob":0.0,"special":true},'
    '"generated_text":"Bonjour, wörld 日本 🎉","details":{"finish_reason":"eos_token",'
    '"generated_tokens":4,"seed":null,"input_length":9}}\r\n\r\n'
).encode()


def awkward_parts(text: bytes) -> list[bytes]:
    """PayloadParts cut inside the UTF-8 characters and between CR and LF."""
    cuts = {
        text.index("ö".encode()) + 1,
        text.index("日".encode()) + 2,
        text.index("🎉".encode()) + 3,
        text.index(b"\r\n") + 1,
        text.index(b"data:", 10) + 3,
    }
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def test_stream_end_to_end_through_the_event_stream_sse_decoder_and_codec() -> None:
    # Given a streamed TGI answer whose PayloadParts split characters and line endings,
    # sent as binary event-stream messages that the network also cuts at random places
    parts = awkward_parts(SSE_TEXT)
    assert len(parts) == 6
    wire = b"".join(payload_part(p) for p in parts)
    inv = invoker()
    seen: list[Any] = []
    raw = serve_stream(inv, wire, random.Random(9), seen)
    # When the invoker streams it and the TGI codec reads it
    chunks = inv.stream(SHARED, TgiCodec().build_generate("Hi", GenerationParams(), True))
    deltas = list(iter_deltas(TgiCodec(), chunks))
    # Then the text arrives whole, token by token, with the finish reason and usage
    assert "".join(d.text for d in deltas) == "Bonjour, wörld 日本 🎉"
    assert deltas[-1] == StreamDelta("", "stop", Usage(prompt_tokens=9, completion_tokens=4))
    # And the request named the inference component and asked for a stream
    request = seen[0]
    assert request.headers["X-Amzn-SageMaker-Inference-Component"] == b"llama-3-8b"
    assert json.loads(request.body)["stream"] is True
    assert raw.closed


def test_stream_chunks_are_payload_bytes_in_order() -> None:
    parts = awkward_parts(SSE_TEXT)
    inv = invoker()
    serve_stream(inv, b"".join(payload_part(p) for p in parts), random.Random(1), [])
    assert list(inv.stream(DEDICATED, PAYLOAD)) == parts


@pytest.mark.parametrize(
    ("kind", "body", "error"),
    [
        (
            "ModelStreamError",
            {
                "Message": "Model invocation time exceeded",
                "ErrorCode": "ModelInvocationTimeExceeded",
            },
            ModelTimeout,
        ),
        (
            "ModelStreamError",
            {"Message": "Stream broken", "ErrorCode": "StreamBroken"},
            StreamInterrupted,
        ),
        ("InternalStreamFailure", {"Message": "Internal stream failure"}, StreamInterrupted),
    ],
)
def test_errors_in_the_middle_of_a_stream_are_typed(
    kind: str, body: dict[str, str], error: type[ModelInvocationError]
) -> None:
    # Given a stream that delivers one part, then a SageMaker stream error
    wire = payload_part(SSE_TEXT[:120]) + stream_error(kind, body)
    inv = invoker()
    serve_stream(inv, wire, random.Random(2), [])
    chunks = inv.stream(DEDICATED, PAYLOAD)
    # When read, Then the first bytes arrive and then the typed error is raised
    assert next(chunks) == SSE_TEXT[:120]
    with pytest.raises(error) as caught:
        next(chunks)
    assert caught.value.status in (502, 504)


def test_the_runtime_client_follows_the_local_runners_endpoint_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the local runner's SageMaker runtime front on a loopback port
    monkeypatch.setenv("LLMHOST_AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    monkeypatch.setenv("LLMHOST_AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", "http://127.0.0.1:8085")
    # When a runtime client is built, Then the per-service address wins
    client = build_runtime_client(read_timeout_s=5, max_attempts=1)
    assert client.meta.endpoint_url == "http://127.0.0.1:8085"
