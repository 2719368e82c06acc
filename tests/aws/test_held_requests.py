"""A request that asks to wait for a cold model is held while it wakes, then answered.

Against moto's DynamoDB (the registry) and a SageMaker runtime that refuses a component at
zero copies as SageMaker does, until the wake adds a copy. The hold's own time is a fake
clock where a test says so: the wake takes exactly as long as the test decides.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from test_wake_on_request import (
    RecordingDispatcher,
    ScaledToZeroRuntime,
    chat,
    chat_service,
    entry,
    sleeping,
    zero_copies,
)

from llmhost import runtime
from llmhost.clock import CloudClock
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.serving.errors import ModelUnavailable
from llmhost.serving.hold import HoldOutlastsRequest, HoldPolicy
from llmhost.serving.routing import ModelDirectory, ModelNotFound, ModelWillNotWake


class FakeTime:
    """The hold's monotonic clock and its sleep, and the cloud's wall clock, in step: a
    sleep moves time on and runs what was due meanwhile (the scaling hook adding a copy)."""

    START = datetime(2026, 1, 3, 9, 0, tzinfo=UTC)

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._due: list[tuple[float, Callable[[], None]]] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return self.START + timedelta(seconds=self.now)

    def iso(self) -> str:
        return self.wall().isoformat(timespec="seconds").replace("+00:00", "Z")

    def after(self, seconds: float, action: Callable[[], None]) -> None:
        self._due.append((self.now + seconds, action))

    def wait(self, seconds: float) -> bool:
        self.slept.append(seconds)
        self.now += seconds
        for due in [d for d in self._due if d[0] <= self.now]:
            self._due.remove(due)
            due[1]()
        return False  # never cancelled


class CountingRegistry:
    """The registry, counting the reads a request costs (GetItem and Scan)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self.reads = 0

    def find(self, name: str) -> DeploymentRecord | None:
        self.reads += 1
        return self._registry.find(name)

    def get(self, name: str) -> DeploymentRecord:
        self.reads += 1
        return self._registry.get(name)

    def deployments(self, include_deleted: bool = False) -> list[DeploymentRecord]:
        self.reads += 1
        return self._registry.deployments(include_deleted)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


class WakingDispatcher(RecordingDispatcher):
    """The scaling function: a copy is up ``seconds`` after the wake is handed over."""

    def __init__(self, time: FakeTime, sagemaker: ScaledToZeroRuntime, seconds: float) -> None:
        super().__init__()
        self._time, self._sagemaker, self._seconds = time, sagemaker, seconds

    def dispatch(self, event: dict[str, str]) -> None:
        super().dispatch(event)
        self._time.after(self._seconds, lambda: setattr(self._sagemaker, "copies", 1))


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    from llmhost.lifecycle import record as records

    time = FakeTime()
    monkeypatch.setattr(records, "utc_now", time.iso)  # the history's timestamps
    return time


def held(time: FakeTime, wait_s: float, time_left_s: float = 300, as_job: bool = False) -> Any:
    policy = HoldPolicy(answer_s=12)
    return policy.hold(wait_s, time_left_s, as_job=as_job, monotonic=time.monotonic, wait=time.wait)


@pytest.mark.parametrize("wake_s", [42, 300])
def test_a_held_request_on_a_zero_copy_model_is_answered_after_the_wake(
    moto_aws: None, fake_time: FakeTime, wake_s: int
) -> None:
    # Given a component at zero copies whose last wake took about as long as this one will,
    # and a scaling function that adds a copy ``wake_s`` after it is asked
    woken = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=wake_s + 10)
    history = [
        entry("2026-01-01T00:00:00Z", "WakeRequested"),
        entry(woken.isoformat().replace("+00:00", "Z"), "Woken"),
    ]
    runtime.registry().create(zero_copies(history))
    registry = CountingRegistry(runtime.registry())
    sagemaker = ScaledToZeroRuntime()
    dispatcher = WakingDispatcher(fake_time, sagemaker, seconds=wake_s)
    directory = ModelDirectory(lambda: registry, wake=lambda: dispatcher, now=fake_time.wall)
    service = chat_service(directory, sagemaker)
    # When a request that may wait ten minutes arrives (on the stream function: 15 minutes)
    hold = held(fake_time, 600, time_left_s=900)
    answer = chat_with(service, hold)
    # Then it is answered by the woken model, once the copy is up and within one poll of it
    assert answer["choices"][0]["message"]["content"] == "awake"
    assert wake_s <= fake_time.now <= wake_s + 15
    # And exactly one wake was asked for and handed over, and its end recorded
    assert len(dispatcher.events) == 1
    events = [h.event for h in runtime.registry().get("cold").history]
    assert events.count("WakeRequested") == 2 and events.count("Woken") == 2
    # And the registry was read once per poll, plus the first view and the wake's end
    polls = len(fake_time.slept)
    print(
        f"held {fake_time.now:.0f} s for a {wake_s} s wake: polls={polls} "
        f"registry reads={registry.reads}"
    )
    assert registry.reads <= polls + 2


def chat_with(service: Any, hold: Any) -> Any:
    from llmhost.serving.requests import ChatCompletionRequest

    request = ChatCompletionRequest.model_validate(
        {"model": "cold", "messages": [{"role": "user", "content": "hello?"}]}
    )
    return service.chat(request, hold=hold)


def test_a_held_request_on_a_sleeping_model_is_answered_once_it_is_in_service(
    moto_aws: None, fake_time: FakeTime
) -> None:
    # Given a sleeping model (no scaling function: the request wakes it itself)
    registry = runtime.registry()
    registry.create(sleeping())
    sagemaker = ScaledToZeroRuntime()
    sagemaker.copies = 1

    def reconciled() -> None:  # the reconciler brings it back 90 s later
        record = registry.get("sleepy")
        registry.save(record.with_event("StatusChanged", status="IN_SERVICE", reason="woken"))

    fake_time.after(90, reconciled)
    directory = ModelDirectory(runtime.registry, now=fake_time.wall)
    service = chat_service(directory, sagemaker)
    # When a request that may wait ten minutes arrives (a dedicated endpoint's estimate,
    # with no wake recorded yet), in a function with 15 minutes
    answer = service.chat(chat_request("sleepy"), hold=held(fake_time, 600, time_left_s=900))
    # Then it is answered after the wake, and the wake was recorded once
    assert answer["choices"][0]["message"]["content"] == "awake"
    assert 90 <= fake_time.now <= 90 + 15
    assert [h.event for h in registry.get("sleepy").history].count("WakeRequested") == 1


def test_a_burst_of_held_requests_wakes_the_model_once_and_all_are_answered(
    moto_aws: None,
) -> None:
    # Given a component at zero copies, four containers' directories on a compressed clock,
    # and a scaling function that adds a copy a moment after it is asked. (6x: a minute of
    # cloud time, after which serving counts a wake as lost or over, lasts 10 s, far longer
    # than any thread of a loaded machine takes between a refusal and its handling.)
    runtime.registry().create(zero_copies())
    clock = CloudClock(speed=6)
    sagemaker = ScaledToZeroRuntime()
    dispatcher = RecordingDispatcher()
    woken = threading.Event()

    def wake(event: dict[str, str]) -> None:
        RecordingDispatcher.dispatch(dispatcher, event)
        threading.Timer(0.3, lambda: (setattr(sagemaker, "copies", 1), woken.set())).start()

    dispatcher.dispatch = wake  # type: ignore[method-assign]
    services = [
        chat_service(
            ModelDirectory(runtime.registry, wake=lambda: dispatcher, cloud_clock=clock), sagemaker
        )
        for _ in range(4)
    ]
    policy = HoldPolicy(answer_s=12, clock=clock)
    answers: list[Any] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(16)

    def request(service: Any) -> None:
        barrier.wait()
        try:
            answers.append(chat_with(service, policy.hold(60, 300)))
        except BaseException as error:  # reported below
            failures.append(error)

    # When 16 requests that may wait a minute arrive at once
    threads = [threading.Thread(target=request, args=(services[i % 4],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every one is answered by the woken model
    assert not failures, failures
    assert [a["choices"][0]["message"]["content"] for a in answers] == ["awake"] * 16
    # And exactly one wake was recorded and handed to the scaling function
    assert woken.is_set() and len(dispatcher.events) == 1
    events = [h.event for h in runtime.registry().get("cold").history]
    assert events.count("WakeRequested") == 1


def test_without_a_hold_a_cold_model_is_refused_as_before(moto_aws: None) -> None:
    runtime.registry().create(zero_copies())
    dispatcher = RecordingDispatcher()
    service = chat_service(
        ModelDirectory(runtime.registry, wake=lambda: dispatcher), ScaledToZeroRuntime()
    )
    with pytest.raises(ModelUnavailable) as refused:
        chat(service)
    assert refused.value.status == 503 and refused.value.retry_after == 300
    assert len(dispatcher.events) == 1


def test_a_model_that_fails_while_waited_for_ends_the_hold_with_its_error(
    moto_aws: None, fake_time: FakeTime
) -> None:
    registry = runtime.registry()
    registry.create(sleeping())

    def failed() -> None:
        record = registry.get("sleepy")
        registry.save(
            record.with_event("StatusChanged", status="FAILED", reason="the container crashed")
        )

    fake_time.after(20, failed)
    directory = ModelDirectory(runtime.registry, now=fake_time.wall)
    service = chat_service(directory, ScaledToZeroRuntime())
    # When a held request waits for it, and the deployment fails 20 s in
    with pytest.raises(ModelWillNotWake) as ended:
        service.chat(chat_request("sleepy"), hold=held(fake_time, 600, time_left_s=900))
    # Then the hold ends at the next poll with the failure, not at the end of its wait
    assert ended.value.status == 503 and "the container crashed" in ended.value.message
    assert fake_time.now <= 20 + 15


def chat_request(model: str) -> Any:
    from llmhost.serving.requests import ChatCompletionRequest

    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    )


def test_a_model_deleted_while_waited_for_ends_the_hold_with_404(
    moto_aws: None, fake_time: FakeTime
) -> None:
    registry = runtime.registry()
    registry.create(zero_copies())

    def deleted() -> None:  # deleted through the API, the reconciler removed it
        record = registry.get("cold")
        registry.save(record.with_event("Deleted", status="DELETED", reason="deleted"))

    fake_time.after(10, deleted)
    directory = ModelDirectory(runtime.registry, wake=RecordingDispatcher, now=fake_time.wall)
    service = chat_service(directory, ScaledToZeroRuntime())
    with pytest.raises(ModelNotFound):
        service.chat(chat_request("cold"), hold=held(fake_time, wait_s=300))
    assert fake_time.now <= 10 + 15


def test_a_wake_the_scaling_hook_refuses_ends_the_hold(moto_aws: None, fake_time: FakeTime) -> None:
    registry = runtime.registry()
    registry.create(zero_copies())

    def refused() -> None:  # the hook finds the GPU cap full
        record = registry.get("cold")
        registry.save(
            record.with_event(
                "WakeRefused", reason="a request found no copy: the GPU cap of 2 is held"
            )
        )

    dispatcher = RecordingDispatcher()
    fake_time.after(3, refused)
    directory = ModelDirectory(runtime.registry, wake=lambda: dispatcher, now=fake_time.wall)
    service = chat_service(directory, ScaledToZeroRuntime())
    with pytest.raises(ModelWillNotWake, match=r"could not be woken: .*GPU cap") as ended:
        service.chat(chat_request("cold"), hold=held(fake_time, wait_s=300))
    assert ended.value.status == 503 and ended.value.retry_after > 0
    assert len(dispatcher.events) == 1


def test_a_wait_longer_than_the_function_can_hold_becomes_a_job(
    moto_aws: None, fake_time: FakeTime
) -> None:
    # Given a component whose wakes take 5 minutes, and the serve function's 29 s
    history = [
        entry("2026-01-01T00:00:00Z", "WakeRequested"),
        entry("2026-01-01T00:05:00Z", "Woken"),
    ]
    runtime.registry().create(zero_copies(history))
    dispatcher = RecordingDispatcher()
    directory = ModelDirectory(runtime.registry, wake=lambda: dispatcher, now=fake_time.wall)
    service = chat_service(directory, ScaledToZeroRuntime())
    # When a request that may wait 10 minutes arrives
    with pytest.raises(HoldOutlastsRequest) as outlasting:
        service.chat(chat_request("cold"), hold=held(fake_time, 600, time_left_s=29, as_job=True))
    # Then it becomes a job at once (no hold API Gateway would cut), and the wake is asked
    assert fake_time.now == 0 and len(dispatcher.events) == 1
    assert outlasting.value.retry_after == 300


# ----------------------------------------------------------------- the serve function


def serve_call(
    module: Any, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    from llmhost_local.events import LambdaContext, api_gateway_event

    event = api_gateway_event(
        "POST",
        "/v1/chat/completions",
        {"Content-Type": "application/json", **headers},
        json.dumps(body).encode(),
        "tester",
        resource="/v1/chat/completions",
        path_parameters=None,
    )
    response = module.handler(event, LambdaContext("llmhost-serve"))
    merged = {**(response.get("headers") or {})}
    for name, values in (response.get("multiValueHeaders") or {}).items():
        merged[name] = ",".join(values)
    return response["statusCode"], merged, json.loads(response["body"])


@pytest.fixture
def serve_function(moto_aws: None) -> tuple[Any, ScaledToZeroRuntime, RecordingDispatcher]:
    from llmhost_local.cloud import load_handler

    runtime.registry().create(zero_copies())
    clock = CloudClock(speed=600)
    sagemaker = ScaledToZeroRuntime()
    dispatcher = RecordingDispatcher()

    def wake(event: dict[str, str]) -> None:
        RecordingDispatcher.dispatch(dispatcher, event)
        threading.Timer(0.2, lambda: setattr(sagemaker, "copies", 1)).start()

    dispatcher.dispatch = wake  # type: ignore[method-assign]
    directory = ModelDirectory(runtime.registry, wake=lambda: dispatcher, cloud_clock=clock)
    runtime.override(serving_service=chat_service(directory, sagemaker), clock=clock)
    return load_handler("serve", "llmhost-serve"), sagemaker, dispatcher


CHAT = {"model": "cold", "messages": [{"role": "user", "content": "hello?"}]}


def test_the_serve_function_holds_a_request_that_prefers_to_wait(serve_function: Any) -> None:
    module, _, dispatcher = serve_function
    # When a client asks a zero-copy model with Prefer: wait=20
    status, headers, body = serve_call(module, CHAT, {"Prefer": "wait=20"})
    # Then it is answered once the copy is up, and told the preference was applied
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "awake"
    assert headers["Preference-Applied"] == "wait=20"
    assert len(dispatcher.events) == 1


def test_the_serve_function_without_the_preference_answers_503_as_before(
    serve_function: Any,
) -> None:
    module, _, dispatcher = serve_function
    status, headers, body = serve_call(module, CHAT, {})
    assert status == 503 and int(headers["Retry-After"]) > 0
    assert body["error"]["code"] == "model_unavailable"
    assert "Preference-Applied" not in headers
    assert len(dispatcher.events) == 1


@pytest.mark.parametrize("value", ["wait=soon", "wait=-3", "wait"])
def test_a_malformed_wait_is_a_400_naming_the_header(serve_function: Any, value: str) -> None:
    module, _, dispatcher = serve_function
    status, _, body = serve_call(module, CHAT, {"Prefer": value})
    assert status == 400 and body["error"]["code"] == "invalid_prefer"
    assert "Prefer" in body["error"]["message"]
    assert dispatcher.events == []  # refused before anything was asked of the model


def test_a_refusal_that_raced_the_copy_asks_no_second_wake(moto_aws: None) -> None:
    # Given a component whose wake ended (its first answer recorded) 5 s ago
    history = [
        entry("2026-01-03T09:00:00Z", "WakeRequested"),
        entry("2026-01-03T09:00:40Z", "Woken"),
    ]
    runtime.registry().create(zero_copies(history))
    dispatcher = RecordingDispatcher()
    now = datetime(2026, 1, 3, 9, 0, 45, tzinfo=UTC)
    directory = ModelDirectory(runtime.registry, wake=lambda: dispatcher, now=lambda: now)
    # When a request SageMaker refused just before the copy came is handled now
    retry_after = directory.refused_for_capacity("cold")
    # Then no second wake is asked for the same burst, and the client retries at once
    assert retry_after == 1
    assert dispatcher.events == []
    events = [h.event for h in runtime.registry().get("cold").history]
    assert events.count("WakeRequested") == 1


def test_the_api_document_lists_the_prefer_header_and_the_202(moto_aws: None) -> None:
    from conftest import api_function

    code, document = api_function()("GET", "/v1/openapi.json")
    assert code == 200
    for path in ("/v1/chat/completions", "/v1/rag"):
        operation = document["paths"][path]["post"]
        assert "Prefer" in [p["name"] for p in operation.get("parameters", [])]
        assert "Location" in operation["responses"]["202"]["headers"]
        assert "Preference-Applied" in operation["responses"]["200"]["headers"]


def test_a_wait_api_gateway_cannot_hold_becomes_a_job_the_worker_answers(
    moto_aws: None,
) -> None:
    from test_jobs_worker import World

    from llmhost_local.cloud import load_handler

    # Given a component at zero copies whose wakes take 5 minutes, and the jobs' AWS
    world = World()
    world.hosting["cold"] = "shared"
    history = [
        entry("2026-01-01T00:00:00Z", "WakeRequested"),
        entry("2026-01-01T00:05:00Z", "Woken"),
    ]
    runtime.registry().create(zero_copies(history))
    sagemaker = ScaledToZeroRuntime()
    dispatcher = RecordingDispatcher()
    service = chat_service(ModelDirectory(runtime.registry, wake=lambda: dispatcher), sagemaker)
    runtime.override(serving_service=service)
    module = load_handler("serve", "llmhost-serve")
    # When a client that may wait 10 minutes asks through the serve function (29 s)
    status, headers, body = serve_call(module, CHAT, {"Prefer": "wait=600"})
    # Then it is accepted as a job at once, with where to poll it, and the wake is asked
    assert status == 202, body
    assert headers["Location"] == f"/v1/jobs/{body['id']}"
    assert headers["Preference-Applied"] == "wait=600"
    assert body["status"] == "QUEUED" and body["model"] == "cold"
    assert len(dispatcher.events) == 1
    # And once the copy is up, the jobs worker answers it
    sagemaker.copies = 1
    world.serving = service
    world.deliver_until(lambda: world.status(body["id"]) == "SUCCEEDED")
    result = world.store.get(body["id"]).result
    assert result is not None and result["choices"][0]["message"]["content"] == "awake"


class CountingEmbedder:
    """The real embedder, counting the queries it embeds (one per retrieval)."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.queries = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def embed(self, texts: Any) -> Any:
        self.queries += 1
        return self._real.embed(texts)


def test_a_held_rag_request_retrieves_once_however_many_polls_it_waits(
    moto_aws: None, fake_time: FakeTime, embedder: Any, tmp_path: Any
) -> None:
    from qdrant_client import QdrantClient

    from llmhost.rag.collections import Collections
    from llmhost.rag.store import VectorStore
    from llmhost.serving.invoke import ModelInvoker
    from llmhost.serving.requests import RagRequest
    from llmhost.serving.service import ServingService

    # Given a collection, and a component at zero copies that a copy reaches 40 s later
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    store = VectorStore(client)
    counting = CountingEmbedder(embedder)
    Collections(lambda: store, lambda: embedder).add_documents(
        "kb", [{"id": "etna", "text": "Mount Etna is an active volcano on Sicily."}]
    )
    runtime.registry().create(zero_copies())
    sagemaker = ScaledToZeroRuntime()
    dispatcher = WakingDispatcher(fake_time, sagemaker, seconds=40)
    directory = ModelDirectory(runtime.registry, wake=lambda: dispatcher, now=fake_time.wall)
    invoker = ModelInvoker(sagemaker, timeout_s=5, max_attempts=1)
    service = ServingService(directory, lambda: invoker, lambda: counting, lambda: store)
    # When a RAG request that may wait ten minutes arrives
    request = RagRequest.model_validate({"model": "cold", "collection": "kb", "query": "Etna?"})
    try:
        answer = service.rag(request, hold=held(fake_time, 600, time_left_s=900))
    finally:
        client.close()
    # Then it is answered with its sources after the wake, having retrieved them once
    assert answer["answer"] == "awake" and answer["sources"][0]["id"] == "etna"
    assert len(fake_time.slept) > 1 and counting.queries == 1


class RecordingJobs:
    """The job operations, recording what is submitted (the queue is not this test's)."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, Any]] = []

    def submit(self, kind: str, request: Any) -> Any:
        from types import SimpleNamespace

        self.submitted.append((kind, request))
        return SimpleNamespace(id=f"job-{len(self.submitted):026d}")

    def view(self, job: Any) -> dict[str, Any]:
        return {"id": job.id, "status": "QUEUED"}


def test_a_caller_who_waits_for_an_async_deployment_is_given_a_job(moto_aws: None) -> None:
    from llmhost.specs import parse_spec
    from llmhost_local.cloud import load_handler

    # Given an async deployment (its endpoint answers queued requests only)
    spec = {
        "name": "slow",
        "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"},
        "hosting": {"kind": "async"},
    }
    record = DeploymentRecord(name="slow", spec=parse_spec(spec))
    runtime.registry().create(record.model_copy(update={"status": "IN_SERVICE"}))
    jobs = RecordingJobs()
    runtime.override(
        serving_service=chat_service(ModelDirectory(runtime.registry), ScaledToZeroRuntime()),
        jobs=jobs,
    )
    module = load_handler("serve", "llmhost-serve")
    body = {**CHAT, "model": "slow"}
    # When a client asks it synchronously: 409, naming the jobs route, as before
    status, _, refused = serve_call(module, body, {})
    assert status == 409 and refused["error"]["code"] == "model_answers_jobs_only"
    assert jobs.submitted == []
    # When it prefers to wait: the request becomes a job
    status, headers, accepted = serve_call(module, body, {"Prefer": "wait=60"})
    assert status == 202, accepted
    assert headers["Location"] == f"/v1/jobs/{accepted['id']}"
    assert [(kind, r.model) for kind, r in jobs.submitted] == [("chat", "slow")]


def test_the_api_document_lists_the_409_of_an_async_deployment(moto_aws: None) -> None:
    from conftest import api_function

    _, document = api_function()("GET", "/v1/openapi.json")
    for path in ("/v1/chat/completions", "/v1/rag"):
        assert "409" in document["paths"][path]["post"]["responses"]
