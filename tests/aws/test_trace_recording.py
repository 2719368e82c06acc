"""Every chat, RAG and job request ends with one observation, answered or refused: through
the API Gateway serving function, the OpenAI-compatible server (streams included) and the
jobs worker; with the trace recorder in place, its trace is stored and named in the reply.

A real ServingService over moto's registry and a SageMaker runtime that answers (or refuses a
component at zero copies, as SageMaker does).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from test_wake_on_request import ScaledToZeroRuntime, chat_service, zero_copies

from llmhost import runtime
from llmhost.observe import RequestObservation
from llmhost.serving.routing import ModelDirectory
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext, api_gateway_event

JSON = {"Content-Type": "application/json"}


class Collector:
    def __init__(self) -> None:
        self.seen: list[RequestObservation] = []

    def observe(self, observation: RequestObservation) -> None:
        self.seen.append(observation)


class Exploding:
    def observe(self, observation: RequestObservation) -> None:
        raise RuntimeError("the trace store is down")


@pytest.fixture
def sagemaker(moto_aws: None) -> ScaledToZeroRuntime:
    runtime.registry().create(zero_copies())
    fake = ScaledToZeroRuntime()
    fake.copies = 1
    runtime.override(
        serving_service=chat_service(ModelDirectory(runtime.registry), fake),
    )
    return fake


@pytest.fixture
def collector() -> Collector:
    seen = Collector()
    runtime.override(request_observers=[seen])
    return seen


def post(path: str, body: Any, caller: str = "alice") -> dict[str, Any]:
    serve = load_handler("serve", "llmhost-serve")
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    event = api_gateway_event("POST", path, JSON, raw, caller)
    return serve.handler(event, LambdaContext("test"))


CHAT = {"model": "cold", "messages": [{"role": "user", "content": "hello? mail me at a@b.io"}]}


def test_an_answered_chat_is_observed_once_with_its_prompt_answer_and_stages(
    sagemaker: ScaledToZeroRuntime, collector: Collector
) -> None:
    # When a chat is answered through the API Gateway function
    response = post("/v1/chat/completions", {**CHAT, "max_tokens": 20, "temperature": 0.3})
    body = json.loads(response["body"])
    assert response["statusCode"] == 200

    # Then exactly one observation says what happened
    (seen,) = collector.seen
    assert seen.kind == "chat" and seen.status == 200 and seen.error_code is None
    assert seen.request_id == body["id"]  # the client's completion id finds its trace
    assert seen.model == "cold" and seen.generation == 1 and seen.hosting == "shared"
    assert seen.caller == "arn:aws:iam::123456789012:user/alice"
    assert seen.query == "hello? mail me at a@b.io"
    assert seen.answer == "awake"
    assert seen.prompt  # exactly what was sent: a message list or the rendered prompt
    sent = json.loads(sagemaker.calls[-1]["Body"])
    if isinstance(seen.prompt, str):
        assert sent["inputs"] == seen.prompt
    else:
        assert sent["messages"] == seen.prompt
    assert seen.input_tokens == body["usage"]["prompt_tokens"] > 0
    assert seen.output_tokens == body["usage"]["completion_tokens"]
    assert seen.parameters["max_tokens"] == 20 and seen.parameters["temperature"] == 0.3
    assert seen.parameters["model_id"] == "HuggingFaceH4/zephyr-7b-beta"
    assert [s.name for s in seen.stages] == ["generate"]
    assert seen.ttft_ms is not None and seen.duration_ms >= seen.stages[0].duration_ms
    assert seen.cold is False
    # And the reply names the trace
    from llmhost.traces.record import trace_id_for

    assert response["multiValueHeaders"]["x-llmhost-trace-id"] == [trace_id_for(body["id"])]


def test_a_cold_refusal_is_observed_with_its_wake(
    sagemaker: ScaledToZeroRuntime, collector: Collector
) -> None:
    # Given a component at zero copies
    sagemaker.copies = 0
    response = post("/v1/chat/completions", CHAT)
    # Then the 503 is observed: cold, with the attempt that woke it
    assert response["statusCode"] == 503
    (seen,) = collector.seen
    assert seen.status == 503 and seen.cold and seen.error_class == "503"
    assert seen.error_code == json.loads(response["body"])["error"]["code"]
    assert [s.name for s in seen.stages] == ["wake"]


def test_a_refused_body_is_observed_with_the_model_it_named(
    sagemaker: ScaledToZeroRuntime, collector: Collector
) -> None:
    response = post("/v1/chat/completions", {"model": "cold", "messages": "not a list"})
    assert response["statusCode"] == 422
    (seen,) = collector.seen
    assert (seen.status, seen.model, seen.error_code) == (422, "cold", "invalid_request")
    # An unknown model is a 404, observed too
    post("/v1/rag", {"model": "nope", "query": "q", "collection": "docs"})
    assert [(o.kind, o.status, o.model) for o in collector.seen[1:]] == [("rag", 404, "nope")]


def test_an_observer_that_fails_changes_nothing(sagemaker: ScaledToZeroRuntime) -> None:
    # Given a trace store that is down
    runtime.override(request_observers=[Exploding()])
    # Then the answer is the same as without it
    response = post("/v1/chat/completions", CHAT)
    assert response["statusCode"] == 200
    assert json.loads(response["body"])["choices"][0]["message"]["content"] == "awake"


def test_the_trace_is_stored_redacted(sagemaker: ScaledToZeroRuntime) -> None:
    from conftest import ROOT
    from llmhost import aws
    from llmhost.traces.store import TraceStore
    from llmhost_local.traces import TRACES_TABLE, provision_traces, traces_source

    # Given the traces table and the function's settings (TraceContent: redacted)
    provision_traces(aws.client("dynamodb"), traces_source(ROOT / "template.yaml"))
    runtime.override(trace_store=TraceStore(aws.client("dynamodb"), TRACES_TABLE))
    runtime._trace_recorder.cache_clear()
    # When a chat is answered
    response = post("/v1/chat/completions", CHAT)
    trace_id = response["multiValueHeaders"]["x-llmhost-trace-id"][0]
    # Then its trace is stored, with the email masked everywhere
    trace = TraceStore(aws.client("dynamodb"), TRACES_TABLE).get(trace_id)
    assert trace["content"] == "redacted" and trace["answer"] == "awake"
    assert trace["query"] == "hello? mail me at [email]"
    assert "a@b.io" not in json.dumps(trace)
    assert trace["attributes"]["gen_ai.request.model"] == "cold"
    assert trace["attributes"]["gen_ai.usage.output_tokens"] == 1


# ------------------------------------------------------------------ the OpenAI server


class StreamingService:
    """A stand-in service whose stream fills the watch as the real one does, then ends or
    fails after its first chunk."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail

    def chat_stream(self, request: Any, watch: Any = None) -> Iterator[dict[str, Any]]:
        def chunks() -> Iterator[dict[str, Any]]:
            yield {"id": watch.request_id, "choices": [{"index": 0, "delta": {"content": "a"}}]}
            watch.answer, watch.output_tokens = "a", 1
            if self.fail is not None:
                raise self.fail

        return chunks()


@pytest.mark.parametrize("fail", [None, "model_error"])
def test_a_stream_is_observed_after_its_last_chunk(
    moto_aws: None, collector: Collector, fail: str | None
) -> None:
    from starlette.testclient import TestClient

    from llmhost.serving.errors import ModelUnavailable
    from llmhost.serving.http_app import ServingHttpApp

    error = ModelUnavailable("service_unavailable", log_detail="boom") if fail else None
    app = ServingHttpApp(lambda: StreamingService(error), auth=None)
    response = TestClient(app).post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    assert response.text.rstrip().endswith("data: [DONE]")
    (seen,) = collector.seen
    assert seen.stream and seen.answer == "a" and seen.output_tokens == 1
    assert response.headers["x-llmhost-trace-id"]
    if fail:
        assert seen.status == error.status and seen.error_code == error.code
    else:
        assert seen.status == 200


def test_a_refusal_on_the_openai_server_is_observed(moto_aws: None, collector: Collector) -> None:
    from starlette.testclient import TestClient

    from llmhost.serving.http_app import ServingHttpApp

    app = ServingHttpApp(lambda: StreamingService(), auth=None)
    response = TestClient(app).post("/v1/rag", json={"model": "cold", "query": ""})
    assert response.status_code == 422
    assert [(o.kind, o.status, o.model) for o in collector.seen] == [("rag", 422, "cold")]


# --------------------------------------------------------------------------- the jobs worker


def test_a_job_run_is_observed_as_a_job(moto_aws: None, collector: Collector) -> None:
    from test_jobs_worker import CHAT as JOB_CHAT
    from test_jobs_worker import World

    from llmhost.serving.errors import ModelUnavailable

    world = World()
    # Given a job whose model answers, and one whose model fails for good
    answered = world.jobs.submit("chat", JOB_CHAT)
    world.deliver_until(lambda: world.status(answered.id) == "SUCCEEDED")

    def refuse() -> dict[str, Any]:
        raise ModelUnavailable("not_deployed")

    world.serving.behave = [refuse]
    refused = world.jobs.submit("chat", JOB_CHAT)
    world.deliver_until(lambda: len(collector.seen) >= 2)
    # Then each run is one observation of kind job, under the job's id
    first, second = collector.seen[:2]
    assert (first.kind, first.request_id, first.status) == ("job", answered.id, 200)
    assert first.model == "demo"
    assert (second.request_id, second.status) == (
        refused.id,
        ModelUnavailable("not_deployed").status,
    )
    assert second.error_code == ModelUnavailable("not_deployed").code
