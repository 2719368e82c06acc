"""Faults on the request path: every AWS and Qdrant call of serving and ingestion fails in turn.

AWS faults are injected below botocore's parsers and retry handler (a ``before-send`` hook
answers each HTTP request with the service's own error response, or raises the transport
error), so botocore's protocol parsing and standard-mode retries decide what llmhost sees,
as in AWS. Qdrant faults are the exceptions its HTTP client raises. Whatever fails, the
client gets 429 (throttled), 503 (5xx, unreachable) or 504 (timed out), with Retry-After
where waiting helps, never a 500; ingestion reports each document it could not index as
retryable, and sending them again indexes each exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from conftest import load_event
from llmhost import aws, runtime
from llmhost.errors import LlmhostError
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.rag.embeddings.artifact import REPO_MODEL_DIR
from llmhost.rag.embeddings.sagemaker import SageMakerEmbedder
from llmhost.rag.store import VectorStore
from llmhost.serving.invoke import ModelInvoker, build_runtime_client
from llmhost.serving.requests import ChatCompletionRequest
from llmhost.serving.routing import ModelDirectory, pending_wake
from llmhost.serving.service import ServingService
from llmhost.specs import parse_spec
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext

FAULTS = ["throttled", "5xx", "timeout", "unreachable"]
STATUS = {"throttled": 429, "5xx": 503, "timeout": 504, "unreachable": 503}
# A throttled registry is llmhost's table being busy, not the caller sending too much: 503.
REGISTRY_STATUS = {**STATUS, "throttled": 503}
MODEL = {"name": "faulty", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}

# The error each service answers, per fault: (HTTP status, error code).
AWS_ERRORS = {
    "dynamodb": {"throttled": (400, "ThrottlingException"), "5xx": (500, "InternalServerError")},
    "sagemaker-runtime": {
        "throttled": (400, "ThrottlingException"),
        "5xx": (500, "InternalFailure"),
    },
    "secretsmanager": {
        "throttled": (400, "ThrottlingException"),
        "5xx": (500, "InternalServiceError"),
    },
    "s3": {"throttled": (503, "SlowDown"), "5xx": (500, "InternalError")},
    "lambda": {"throttled": (429, "TooManyRequestsException"), "5xx": (500, "ServiceException")},
}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class Injected:
    """Makes every request of ``client`` (or only its ``operation``) fail with ``fault`` until
    ``heal()``; counts sends."""

    def __init__(self, client: Any, service: str, fault: str, operation: str = "") -> None:
        self.client, self.service, self.fault = client, service, fault
        self.sent = 0
        self.healed = False
        event = f"before-send.{service}.{operation}" if operation else "before-send"
        client.meta.events.register_first(event, self._send)

    def heal(self) -> None:
        self.healed = True

    def _send(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse
        from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

        if self.healed:
            return None
        self.sent += 1
        if self.fault == "timeout":
            raise ReadTimeoutError(endpoint_url=request.url)
        if self.fault == "unreachable":
            raise EndpointConnectionError(endpoint_url=request.url)
        status, code = AWS_ERRORS[self.service][self.fault]
        if self.service == "s3":
            body = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            headers = {"Content-Type": "application/xml"}
        else:
            body = json.dumps({"__type": code, "message": "injected"}).encode()
            headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-ErrorType": code}
        return AWSResponse(request.url, status, headers, _Raw(body))


def qdrant_fault(fault: str) -> Exception:
    """What qdrant-client's HTTP client raises for each fault."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if fault == "throttled":
        return UnexpectedResponse(429, "Too Many Requests", b"{}", httpx.Headers())
    if fault == "5xx":
        return UnexpectedResponse(503, "Service Unavailable", b"{}", httpx.Headers())
    if fault == "timeout":
        return ResponseHandlingException(httpx.ReadTimeout("timed out"))
    return ResponseHandlingException(httpx.ConnectError("connection refused"))


def fail_qdrant(
    monkeypatch: pytest.MonkeyPatch,
    client: QdrantClient,
    method: str,
    fault: str,
    times: int | None = None,
) -> None:
    """``client.method`` raises ``fault`` (the first ``times`` calls, or every call)."""
    real = getattr(client, method)
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if times is None or calls["n"] <= times:
            raise qdrant_fault(fault)
        return real(*args, **kwargs)

    monkeypatch.setattr(client, method, failing)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore still retries as configured, without sleeping between attempts."""
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)


class Stack:
    """The serving function over moto's registry, embedded Qdrant and a runtime client."""

    def __init__(self, tmp_path: Path, embedder: Any) -> None:
        self.qdrant = QdrantClient(":memory:")
        self.store = VectorStore(self.qdrant)
        self.embedder = embedder
        record = DeploymentRecord(name="faulty", spec=parse_spec(MODEL))
        runtime.registry().create(record.model_copy(update={"status": "IN_SERVICE"}))
        # The process's shared client factory (one botocore session: models load once).
        self.runtime_client = build_runtime_client(read_timeout_s=12, max_attempts=2)
        invoker = ModelInvoker(self.runtime_client, timeout_s=12, max_attempts=2)
        self.service = ServingService(
            ModelDirectory(runtime.registry),
            lambda: invoker,
            lambda: self.embedder,
            lambda: self.store,
        )
        runtime.override(serving_service=self.service, store=self.store, embedder=embedder)
        self.serve = load_handler("serve", "llmhost-serve")
        self.call(
            "POST",
            "/v1/collections/docs/documents",
            {
                "documents": [
                    {"id": "zero", "text": "A model scaled to zero answers 503 and wakes up."}
                ]
            },
        )

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
        event = load_event("api-rag.json")
        event.update(httpMethod=method, path=path, body=json.dumps(body) if body else None)
        response = self.serve.handler(event, LambdaContext("llmhost-serve"))
        headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
        return response["statusCode"], json.loads(response["body"]), headers

    def use_embedder(self, embedder: Any) -> None:
        self.embedder = embedder
        runtime.override(embedder=embedder)

    def rag(self) -> tuple[int, Any, dict[str, str]]:
        return self.call(
            "POST",
            "/v1/rag",
            {
                "model": "faulty",
                "collection": "docs",
                "query": "What does a model at zero answer?",
                "k": 2,
            },
        )


@pytest.fixture
def stack(moto_aws: None, tmp_path: Path, embedder: Any) -> Iterator[Stack]:
    built = Stack(tmp_path, embedder)
    yield built
    built.qdrant.close()


def sagemaker_embedder(fault: str) -> tuple[SageMakerEmbedder, Injected]:
    client = build_runtime_client(read_timeout_s=5, max_attempts=2)
    injected = Injected(client, "sagemaker-runtime", fault)
    return SageMakerEmbedder("embedder", client, REPO_MODEL_DIR), injected


def assert_documented(
    status: int, body: Any, headers: dict[str, str], fault: str, expected: dict[str, int] = STATUS
) -> None:
    assert status == expected[fault], body
    assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    assert "Traceback" not in json.dumps(body)
    if status in (429, 503):
        assert int(headers["Retry-After"]) > 0, headers


# ------------------------------------------------------------------------------- serving


def _serving_calls() -> dict[str, Callable[[Stack, str, pytest.MonkeyPatch], Any]]:
    def embedding(stack: Stack, fault: str, mp: pytest.MonkeyPatch) -> Any:
        stack.embedder, _ = sagemaker_embedder(fault)
        return stack.rag()

    def search(stack: Stack, fault: str, mp: pytest.MonkeyPatch) -> Any:
        fail_qdrant(mp, stack.qdrant, "query_points", fault)
        return stack.rag()

    def invoke(stack: Stack, fault: str, mp: pytest.MonkeyPatch) -> Any:
        injected = Injected(stack.runtime_client, "sagemaker-runtime", fault)
        answer = stack.rag()
        assert injected.sent == 2  # botocore's standard retries ran first (2 attempts)
        return answer

    def registry(stack: Stack, fault: str, mp: pytest.MonkeyPatch) -> Any:
        Injected(aws.client("dynamodb"), "dynamodb", fault)
        return stack.rag()

    def models(stack: Stack, fault: str, mp: pytest.MonkeyPatch) -> Any:
        Injected(aws.client("dynamodb"), "dynamodb", fault)
        return stack.call("GET", "/v1/models")

    return {
        "sagemaker-embedding": embedding,
        "qdrant-search": search,
        "sagemaker-invoke": invoke,
        "dynamodb-registry-route": registry,
        "dynamodb-registry-models": models,
    }


SERVING_CALLS = _serving_calls()


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("call", sorted(SERVING_CALLS))
def test_a_failing_call_on_the_serving_path_gets_a_documented_status(
    stack: Stack, call: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the call fails (the others work); When a client asks
    status, body, headers = SERVING_CALLS[call](stack, fault, monkeypatch)
    # Then it gets 429/503/504 by kind, Retry-After where waiting helps, and no internals
    expected = REGISTRY_STATUS if call.startswith("dynamodb-registry") else STATUS
    assert_documented(status, body, headers, fault, expected)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_failing_streamed_invocation_is_a_typed_error_before_the_stream(
    stack: Stack, fault: str
) -> None:
    Injected(stack.runtime_client, "sagemaker-runtime", fault)
    request = ChatCompletionRequest.model_validate(
        {"model": "faulty", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    )
    with pytest.raises(LlmhostError) as caught:
        stack.service.chat_stream(request)
    assert caught.value.status == STATUS[fault]
    if caught.value.status in (429, 503):
        assert getattr(caught.value, "retry_after", 0) > 0


@pytest.mark.parametrize("fault", FAULTS)
def test_secrets_manager_failing_is_a_typed_error_for_api_keys_and_the_qdrant_key(
    moto_aws: None, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.rag.store import store_from_env
    from llmhost.serving.auth import ApiKeyAuth, hashes_from_secret

    arn = aws.client("secretsmanager").create_secret(Name="keys", SecretString="{}")["ARN"]
    Injected(aws.client("secretsmanager"), "secretsmanager", fault)
    # The OpenAI-compatible server's API keys: 503 whatever the kind, retried in 30 s (the
    # keys are not re-read per request while Secrets Manager fails)
    with pytest.raises(LlmhostError) as caught:
        ApiKeyAuth(hashes_from_secret(arn)).authenticate("Bearer llmh-key")
    assert caught.value.status == 503 and getattr(caught.value, "retry_after", 0) > 0
    # The Qdrant API key, read when the store is first built
    monkeypatch.setenv("QDRANT_URL", "https://qdrant.test:6333")
    monkeypatch.setenv("QDRANT_API_KEY_SECRET_ARN", arn)
    with pytest.raises(LlmhostError) as caught:
        store_from_env()
    assert caught.value.status == STATUS[fault]


# ------------------------------------------------------------------------ the wake path

WAKE_MODELS = {
    # a shared component Application Auto Scaling took to zero copies: SageMaker refuses
    "zero-copy": {
        "name": "cold",
        "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"},
        "hosting": {"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"},
        "scaling": {"min_capacity": 0, "max_capacity": 2, "scale_to_zero": True},
    },
    # a deployment put to sleep: serving refuses before invoking anything
    "sleeping": {"name": "sleepy", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}},
}
NO_CAPACITY = (
    "Inference Component has no capacity to process this request. ApplicationAutoScaling may "
    "be in-progress (if configured) or try to increase the capacity by invoking "
    "UpdateInferenceComponentRuntimeConfig API."
)


class WakeStack:
    """The serve function for one cold model, whose wakes go to the scaling function through
    an asynchronous Lambda invoke, on a clock the test moves."""

    def __init__(self, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
        from datetime import UTC, datetime

        from llmhost.lifecycle import record as records
        from llmhost.serving.wake import LambdaWakeDispatcher, lambda_client

        self.kind = kind
        self.name = WAKE_MODELS[kind]["name"]
        self.now = datetime(2026, 1, 3, 9, 0, tzinfo=UTC)
        monkeypatch.setattr(records, "utc_now", lambda: self.now.isoformat().replace("+00:00", "Z"))
        record = DeploymentRecord(name=self.name, spec=parse_spec(WAKE_MODELS[kind]))
        update: dict[str, Any] = {"status": "IN_SERVICE"}
        if kind == "sleeping":
            update = {"status": "SLEEPING", "desired_state": "sleeping"}
        runtime.registry().create(record.model_copy(update=update))
        # Lambda queues each async invoke (202) unless a fault is injected first
        self.lambda_client = lambda_client()
        self.dispatched: list[dict[str, Any]] = []
        self.lambda_client.meta.events.register("before-send.lambda.Invoke", self._queued)
        self.lambda_client.meta.events.register("after-call.lambda.Invoke", self._accepted)
        self._sending: list[dict[str, Any]] = []
        runtime_client = build_runtime_client(read_timeout_s=5, max_attempts=1)
        runtime_client.meta.events.register_first(
            "before-send.sagemaker-runtime.InvokeEndpoint", self._no_capacity
        )
        directory = ModelDirectory(
            runtime.registry,
            ttl_s=0,  # every request reads the registry: what it holds is what is tested
            wake=lambda: LambdaWakeDispatcher(lambda: self.lambda_client, "llmhost-scaling"),
            now=lambda: self.now,
        )
        invoker = ModelInvoker(runtime_client, timeout_s=5, max_attempts=1)
        unused = lambda: pytest.fail("a chat needs no embedder or store")  # noqa: E731
        runtime.override(serving_service=ServingService(directory, lambda: invoker, unused, unused))
        self.serve = load_handler("serve", "llmhost-serve")

    def _queued(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        self._sending.append(json.loads(request.body))
        return AWSResponse(request.url, 202, {}, _Raw(b""))

    def _accepted(self, http_response: Any, **_: Any) -> None:
        # every handler sees each send, even one a fault answered: count the queued ones
        if http_response.status_code == 202:
            self.dispatched.append(self._sending[-1])

    def _no_capacity(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        body = json.dumps({"__type": "ValidationError", "message": NO_CAPACITY}).encode()
        headers = {"Content-Type": "application/json", "x-amzn-ErrorType": "ValidationError"}
        return AWSResponse(request.url, 400, headers, _Raw(body))

    def chat(self) -> tuple[int, Any, dict[str, str]]:
        event = load_event("api-rag.json")
        body = {"model": self.name, "messages": [{"role": "user", "content": "Hi"}]}
        event.update(httpMethod="POST", path="/v1/chat/completions", body=json.dumps(body))
        response = self.serve.handler(event, LambdaContext("llmhost-serve"))
        headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
        return response["statusCode"], json.loads(response["body"]), headers

    def record(self) -> DeploymentRecord:
        return runtime.registry().get(self.name)

    def wakes(self) -> int:
        return [h.event for h in self.record().history].count("WakeRequested")


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("call", ["lambda-invoke", "dynamodb-wake-write"])
@pytest.mark.parametrize("kind", sorted(WAKE_MODELS))
def test_a_failing_wake_still_answers_503_and_a_later_request_asks_again(
    moto_aws: None, kind: str, call: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import timedelta

    stack = WakeStack(kind, monkeypatch)
    if call == "lambda-invoke":
        injected = Injected(stack.lambda_client, "lambda", fault, "Invoke")
    else:
        injected = Injected(aws.client("dynamodb"), "dynamodb", fault, "PutItem")
    # When a request finds the model cold while the call fails
    status, body, headers = stack.chat()
    # Then the client gets the model's 503 with Retry-After, never a 500
    assert injected.sent > 0
    assert_documented(status, body, headers, "5xx")
    if call == "lambda-invoke":
        assert stack.dispatched == []
    # When the service is back and the next request arrives
    injected.heal()
    status, body, headers = stack.chat()
    assert_documented(status, body, headers, "5xx")
    if call == "dynamodb-wake-write":
        # Then one wake is asked for and handed over, whether the failed write never arrived
        # (timed out, unreachable: the next request writes it) or landed though its answer
        # was an error (throttled, 5xx: moto applies the write before the injected answer,
        # as DynamoDB may before a 5xx), which the failed request itself then hands over
        # rather than taking its own wake for another request's
        assert stack.wakes() == 1 and len(stack.dispatched) == 1, stack.record().history
        assert stack.dispatched[0]["requested_at"] == pending_wake(stack.record())
        return
    if kind == "sleeping":
        # Then the wake under way is serving's own: a sleeping model whose hand-over failed
        # is woken by the request (there is no alarm to wake it)
        assert stack.wakes() >= 1 and stack.record().desired_state == "in_service"
        return
    # A zero-copy wake recorded but not handed over is left to AWS's no-capacity alarm for
    # a while: the next request does not ask again at once
    assert (stack.wakes(), stack.dispatched) == (1, [])
    # And once it has gone unanswered for three wake times it is presumed lost: the next
    # refused request records a new wake and hands it to the scaling function
    stack.now += timedelta(seconds=3 * 300 + 1)
    status, body, headers = stack.chat()
    assert_documented(status, body, headers, "5xx")
    assert stack.wakes() == 2 and len(stack.dispatched) == 1
    assert stack.dispatched[0]["requested_at"] == "2026-01-03T09:15:01Z"


# ----------------------------------------------------------------------------- ingestion

DOCS = [
    {"id": f"note-{i}", "text": f"Field note {i}: the river rose {i} centimetres overnight."}
    for i in range(6)
]


def _ingestion_calls() -> dict[str, Callable[[Stack, str, pytest.MonkeyPatch], None]]:
    def embedding(stack: Stack, fault: str, mp: pytest.MonkeyPatch) -> None:
        stack.use_embedder(sagemaker_embedder(fault)[0])

    def upsert(stack: Stack, fault: str, mp: pytest.MonkeyPatch) -> None:
        fail_qdrant(mp, stack.qdrant, "upsert", fault)

    def lookup(stack: Stack, fault: str, mp: pytest.MonkeyPatch) -> None:
        # the collection's existence and parameters, read before anything is embedded
        fail_qdrant(mp, stack.qdrant, "collection_exists", fault)

    return {"sagemaker-embedding": embedding, "qdrant-upsert": upsert, "qdrant-lookup": lookup}


INGESTION_CALLS = _ingestion_calls()


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("call", sorted(INGESTION_CALLS))
def test_ingestion_reports_each_document_a_fault_kept_out_and_a_resend_lands_it_once(
    stack: Stack, call: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_embedder = stack.embedder
    # Given the call fails while documents are posted
    INGESTION_CALLS[call](stack, fault, monkeypatch)
    status, body, headers = stack.call(
        "POST", "/v1/collections/docs/documents", {"documents": DOCS}
    )
    # Then nothing landed: 503 with Retry-After, each document reported by id as retryable
    assert status == 503 and int(headers["Retry-After"]) > 0, body
    assert body["indexed"] == []
    assert [(r["id"], r["retryable"]) for r in body["rejected"]] == [(d["id"], True) for d in DOCS]
    # When the service is back and the same documents are sent twice
    monkeypatch.undo()
    stack.use_embedder(real_embedder)
    for _ in range(2):
        status, body, _ = stack.call("POST", "/v1/collections/docs/documents", {"documents": DOCS})
        assert status == 200 and len(body["indexed"]) == len(DOCS)
    # Then each is indexed exactly once (one chunk each, beside the first document)
    assert stack.store.collection("docs").points == len(DOCS) + 1


def test_a_fault_in_one_batch_keeps_only_its_documents_out(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.rag.ingest import IngestLimits, ingest_documents

    # Given the store fails its first write only, and documents embedded two at a time
    fail_qdrant(monkeypatch, stack.qdrant, "upsert", "5xx", times=1)
    report = ingest_documents(
        "docs", DOCS, stack.embedder, stack.store, IngestLimits(embed_batch=2)
    )
    # Then the first batch is reported retryable and the rest landed
    assert [r.id for r in report.failed] == ["note-0", "note-1"]
    assert [i.id for i in report.indexed] == [d["id"] for d in DOCS[2:]]
    # And sending everything again lands each document once
    ingest_documents("docs", DOCS, stack.embedder, stack.store)
    assert stack.store.collection("docs").points == len(DOCS) + 1


@pytest.mark.parametrize("fault", FAULTS)
def test_deleting_a_document_while_qdrant_fails_gets_a_documented_status(
    stack: Stack, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_qdrant(monkeypatch, stack.qdrant, "count", fault)
    fail_qdrant(monkeypatch, stack.qdrant, "delete", fault)
    status, body, headers = stack.call("DELETE", "/v1/collections/docs/documents/zero")
    assert_documented(status, body, headers, fault)


# ------------------------------------------------------------------ the bucket's function


@pytest.fixture
def bucket(moto_aws: None, tmp_path: Path, embedder: Any) -> Iterator[tuple[Any, QdrantClient]]:
    qdrant = QdrantClient(":memory:")
    runtime.override(store=VectorStore(qdrant), embedder=embedder)
    event = load_event("s3-object-created.json")
    name = event["Records"][0]["s3"]["bucket"]["name"]
    aws.client("s3").create_bucket(Bucket=name)
    lines = "\n".join(json.dumps(d) for d in DOCS).encode()
    aws.client("s3").put_object(Bucket=name, Key="collections/docs/notes.jsonl", Body=lines)
    yield load_handler("ingest", "llmhost-ingest"), qdrant
    qdrant.close()


def _object_event(action: str) -> dict[str, Any]:
    event = load_event(f"s3-object-{action}.json")
    event["Records"][0]["s3"]["object"]["key"] = "collections/docs/notes.jsonl"
    return event


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("call", ["s3-get", "qdrant-lookup", "qdrant-upsert", "qdrant-delete"])
def test_the_ingest_function_fails_the_event_for_a_retry_and_the_retry_converges(
    bucket: tuple[Any, QdrantClient], call: str, fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmhost.rag.bucket import ObjectNotIndexed
    from llmhost.rag.store import VectorStoreUnavailable

    handler, qdrant = bucket
    if call == "qdrant-delete":
        handler.handler(_object_event("created"), LambdaContext("x"))
        fail_qdrant(monkeypatch, qdrant, "count", fault)
        # A removal that cannot reach Qdrant fails typed, for Lambda to deliver again
        with pytest.raises(VectorStoreUnavailable) as caught:
            handler.handler(_object_event("removed"), LambdaContext("x"))
        assert caught.value.status == STATUS[fault]
        monkeypatch.undo()
        handler.handler(_object_event("removed"), LambdaContext("x"))
        assert runtime.store().collection("docs").points == 0
        return
    if call == "s3-get":
        injected = Injected(aws.client("s3"), "s3", fault)
    elif call == "qdrant-lookup":
        fail_qdrant(monkeypatch, qdrant, "collection_exists", fault)
    else:
        fail_qdrant(monkeypatch, qdrant, "upsert", fault)
    # When the object's event is delivered while the call fails, the function fails typed
    # (Lambda delivers it again, then to the dead-letter queue), naming what did not land
    with pytest.raises(ObjectNotIndexed) as caught:
        handler.handler(_object_event("created"), LambdaContext("x"))
    assert all(r["retryable"] for r in caught.value.result["rejected"])
    # And the retry, once the service is back, indexes every document exactly once
    if call == "s3-get":
        injected.heal()
    monkeypatch.undo()
    for _ in range(2):
        result = handler.handler(_object_event("created"), LambdaContext("x"))
        assert result["results"][0]["indexed"] == len(DOCS)
    assert runtime.store().collection("docs").points == len(DOCS)


@pytest.mark.parametrize("fault", FAULTS)
def test_the_deployment_api_over_a_failing_registry_gets_a_documented_status(
    moto_aws: None, fault: str
) -> None:
    # Given the deployment API
    api = load_handler("api", "llmhost-api")
    Injected(aws.client("dynamodb"), "dynamodb", fault)
    event = load_event("api-list-deployments.json")
    # When DynamoDB fails under it
    response = api.handler(event, LambdaContext("llmhost-api"))
    headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
    # Then the registry's typed error answers by kind (throttled: busy, 503), not with a 500
    body = json.loads(response["body"])
    assert_documented(response["statusCode"], body, headers, fault, REGISTRY_STATUS)


class _UntypedRegistry:
    """A registry whose reads raise botocore's error as it is, as an adapter that does not
    type its errors would."""

    def __init__(self, fault: str) -> None:
        self.fault = fault

    def deployments(self, include_deleted: bool = False) -> Any:
        from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

        if self.fault == "timeout":
            raise ReadTimeoutError(endpoint_url="https://dynamodb.test")
        if self.fault == "unreachable":
            raise EndpointConnectionError(endpoint_url="https://dynamodb.test")
        status, code = AWS_ERRORS["dynamodb"][self.fault]
        raise ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Scan"
        )


@pytest.mark.parametrize("fault", FAULTS)
def test_an_aws_fault_no_adapter_typed_still_gets_a_documented_status(
    moto_aws: None, fault: str
) -> None:
    # Given the deployment API over a dependency that lets botocore's errors through
    api = load_handler("api", "llmhost-api")
    runtime.override(registry=_UntypedRegistry(fault))
    event = load_event("api-list-deployments.json")
    # When it fails
    response = api.handler(event, LambdaContext("llmhost-api"))
    headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
    # Then the one error mapping answers by kind, not with a 500
    assert_documented(response["statusCode"], json.loads(response["body"]), headers, fault)
