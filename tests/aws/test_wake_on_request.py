"""A request for a sleeping model: 503 with Retry-After, and exactly one wake under a burst."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from llmhost import runtime
from llmhost.lifecycle.record import DeploymentRecord, HistoryEntry
from llmhost.serving.routing import ModelDirectory, ModelNotReady, wake_estimate_s
from llmhost.specs import parse_spec

SPEC = {"name": "sleepy", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}


def sleeping(history: list[HistoryEntry] | None = None) -> DeploymentRecord:
    record = DeploymentRecord(name="sleepy", spec=parse_spec(SPEC))
    return record.model_copy(
        update={"status": "SLEEPING", "desired_state": "sleeping", "history": history or []}
    )


def test_a_burst_of_requests_wakes_the_model_exactly_once(moto_aws: None) -> None:
    registry = runtime.registry()
    registry.create(sleeping())
    # Given several processes' worth of directories (each Lambda container has its own)
    directories = [ModelDirectory(runtime.registry) for _ in range(4)]
    errors: list[Exception] = []
    barrier = threading.Barrier(16)

    def request(directory: ModelDirectory) -> None:
        barrier.wait()
        try:
            directory.route("sleepy")
        except ModelNotReady as error:
            errors.append(error)

    # When 16 requests arrive at once
    threads = [threading.Thread(target=request, args=(directories[i % 4],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every one is told to retry later, and one wake is recorded
    assert len(errors) == 16
    assert all(error.status == 503 and error.retry_after > 0 for error in errors)
    record = registry.get("sleepy")
    assert record.desired_state == "in_service"
    assert [h.event for h in record.history].count("WakeRequested") == 1
    # And later requests (fresh directories) see it waking without writing again
    with pytest.raises(ModelNotReady, match="waking"):
        ModelDirectory(runtime.registry).route("sleepy")
    assert [h.event for h in registry.get("sleepy").history].count("WakeRequested") == 1


def test_retry_after_comes_from_this_deployments_recorded_wakes() -> None:
    def entry(at: str, event: str, status: Any) -> HistoryEntry:
        return HistoryEntry(at=at, event=event, status=status, generation=1)

    history = [
        entry("2026-01-01T00:00:00Z", "WakeRequested", "SLEEPING"),
        entry("2026-01-01T00:07:00Z", "StatusChanged", "IN_SERVICE"),
        entry("2026-01-02T00:00:00Z", "WakeRequested", "SLEEPING"),
        entry("2026-01-02T00:09:00Z", "StatusChanged", "IN_SERVICE"),
        entry("2026-01-03T00:00:00Z", "WakeRequested", "SLEEPING"),
        entry("2026-01-03T00:08:00Z", "StatusChanged", "IN_SERVICE"),
    ]
    # the median of 420, 540 and 480 seconds
    assert wake_estimate_s(sleeping(history)) == 480
    # with no recorded wake, SageMaker's typical startup for the hosting kind
    assert wake_estimate_s(sleeping()) == 600


# ------------------------------------------------------- a shared component at zero copies

ZERO_SPEC = {
    "name": "cold",
    "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"},
    "scaling": {"min_capacity": 0, "max_capacity": 2, "scale_to_zero": True, "idle_minutes": 5},
}
NO_CAPACITY = (
    "Inference Component has no capacity to process this request. ApplicationAutoScaling may "
    "be in-progress (if configured) or try to increase the capacity by invoking "
    "UpdateInferenceComponentRuntimeConfig API."
)


def zero_copies(history: list[HistoryEntry] | None = None) -> DeploymentRecord:
    """IN_SERVICE, as the registry sees it after Application Auto Scaling took it to zero."""
    record = DeploymentRecord(name="cold", spec=parse_spec(ZERO_SPEC))
    return record.model_copy(update={"status": "IN_SERVICE", "history": history or []})


class ScaledToZeroRuntime:
    """A sagemaker-runtime client for a component with no copy: SageMaker's own refusal
    (ValidationError, HTTP 400) until ``copies`` turns positive."""

    def __init__(self) -> None:
        self.copies = 0
        self.calls: list[dict[str, Any]] = []

    def invoke_endpoint(self, **request: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        self.calls.append(request)
        if self.copies == 0:
            raise ClientError(
                {
                    "Error": {"Code": "ValidationError", "Message": NO_CAPACITY},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                "InvokeEndpoint",
            )
        return {"Body": b'[{"generated_text": "awake"}]'}


class RecordingDispatcher:
    def __init__(self) -> None:
        self.events: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def dispatch(self, event: dict[str, str]) -> None:
        with self._lock:
            self.events.append(event)


def chat_service(directory: ModelDirectory, runtime_client: Any) -> Any:
    from llmhost.serving.invoke import ModelInvoker
    from llmhost.serving.service import ServingService

    invoker = ModelInvoker(runtime_client, timeout_s=5, max_attempts=1)
    unused = lambda: pytest.fail("a chat without rag needs no embedder or store")  # noqa: E731
    return ServingService(directory, lambda: invoker, unused, unused)


def chat(service: Any) -> Any:
    from llmhost.serving.requests import ChatCompletionRequest

    request = ChatCompletionRequest.model_validate(
        {"model": "cold", "messages": [{"role": "user", "content": "hello?"}]}
    )
    return service.chat(request)


def entry(at: str, event: str, status: Any = "IN_SERVICE") -> HistoryEntry:
    return HistoryEntry(at=at, event=event, status=status, generation=1)


def test_a_burst_on_a_zero_copy_component_wakes_it_once_with_one_dispatch(
    moto_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import datetime

    from llmhost.lifecycle import record as records
    from llmhost.serving.errors import ModelUnavailable

    # The burst happens at one instant, whatever the machine's pace: the wake's entry and
    # every refusal read the same fixed clock.
    instant = datetime.fromisoformat("2026-01-03T09:00:00+00:00")
    monkeypatch.setattr(records, "utc_now", lambda: "2026-01-03T09:00:00Z")
    registry = runtime.registry()
    # Given a component at zero copies whose two recorded wakes took 200 s and 260 s
    registry.create(
        zero_copies(
            [
                entry("2026-01-01T00:00:00Z", "WakeRequested"),
                entry("2026-01-01T00:03:20Z", "Woken"),
                entry("2026-01-02T00:00:00Z", "WakeRequested"),
                entry("2026-01-02T00:04:20Z", "Woken"),
            ]
        )
    )
    sagemaker = ScaledToZeroRuntime()
    dispatcher = RecordingDispatcher()
    # And four Lambda containers' worth of directories
    services = [
        chat_service(
            ModelDirectory(runtime.registry, wake=lambda: dispatcher, now=lambda: instant),
            sagemaker,
        )
        for _ in range(4)
    ]
    refusals: list[ModelUnavailable] = []
    unexpected: list[BaseException] = []
    barrier = threading.Barrier(16)

    def request(service: Any) -> None:
        barrier.wait()
        try:
            chat(service)
        except ModelUnavailable as error:
            refusals.append(error)
        except BaseException as error:  # reported below, with the test's assertion
            unexpected.append(error)

    # When 16 requests arrive at once and SageMaker refuses each for want of a copy
    threads = [threading.Thread(target=request, args=(services[i % 4],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every client gets a 503 with Retry-After from this deployment's wakes (the
    # median, 260 s: no time passes between the wake's entry and the refusals)
    assert not unexpected, unexpected
    assert len(refusals) == 16 and len(sagemaker.calls) == 16
    assert all(r.status == 503 and r.reason == "sleeping" for r in refusals)
    assert [r.retry_after for r in refusals] == [260] * 16
    assert all(r.headers()["Retry-After"] == str(r.retry_after) for r in refusals)
    assert all("no capacity" not in r.message.lower() for r in refusals)  # no raw SageMaker text
    # And exactly one wake was recorded and handed to the scaling function
    record = registry.get("cold")
    wakes = [h for h in record.history if h.event == "WakeRequested"]
    assert len(wakes) == 3  # two old ones, one new
    assert record.status == "IN_SERVICE" and record.desired_state == "in_service"
    assert dispatcher.events == [
        {
            "source": "llmhost.serving",
            "action": "wake",
            "deployment": "cold",
            "requested_at": wakes[-1].at,
        }
    ]


def test_the_first_answer_after_a_wake_records_its_end_once(
    moto_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime, timedelta

    from llmhost.lifecycle import record as records
    from llmhost.serving.errors import ModelUnavailable

    # A clock of the test's own: the wake takes exactly as long as the test says
    now = [datetime(2026, 1, 3, 9, 0, tzinfo=UTC)]
    monkeypatch.setattr(
        records, "utc_now", lambda: now[0].isoformat(timespec="seconds").replace("+00:00", "Z")
    )
    registry = runtime.registry()
    registry.create(zero_copies())
    sagemaker = ScaledToZeroRuntime()
    dispatcher = RecordingDispatcher()
    first, second = (
        chat_service(
            ModelDirectory(runtime.registry, wake=lambda: dispatcher, now=lambda: now[0]),
            sagemaker,
        )
        for _ in range(2)
    )
    # Given a request refused for want of a copy: one wake, and with no recorded wake yet,
    # SageMaker's typical 300 s for a shared model
    with pytest.raises(ModelUnavailable) as refused:
        chat(first)
    assert refused.value.retry_after == 300
    assert len(dispatcher.events) == 1

    # When, 42 s later, the scaling hook has added a copy and two containers answer requests
    now[0] += timedelta(seconds=42)
    sagemaker.copies = 1
    assert chat(first)["choices"][0]["message"]["content"] == "awake"
    assert chat(second)["choices"][0]["message"]["content"] == "awake"
    chat(first)

    # Then the wake's end is recorded once, and the estimate now comes from it
    record = registry.get("cold")
    events = [h.event for h in record.history]
    assert events.count("WakeRequested") == 1 and events.count("Woken") == 1
    assert events.index("Woken") > events.index("WakeRequested")
    assert wake_estimate_s(record) == 42
    # And no further dispatch happened
    assert len(dispatcher.events) == 1


def test_a_recent_pending_wake_is_not_asked_again_but_a_lost_one_is(moto_aws: None) -> None:
    from datetime import datetime

    from llmhost.serving.routing import capacity_retry_after_s, wake_is_recent

    # Given a wake requested at noon for a model whose wakes take 240 s
    history = [
        entry("2026-01-01T00:00:00Z", "WakeRequested"),
        entry("2026-01-01T00:04:00Z", "Woken"),
        entry("2026-01-02T12:00:00Z", "WakeRequested"),
    ]
    record = zero_copies(history)
    at = lambda hms: datetime.fromisoformat(f"2026-01-02T{hms}+00:00")  # noqa: E731
    # Then 100 s later it is waited for, and a client is told the time left
    assert wake_is_recent(record, at("12:01:40"))
    assert capacity_retry_after_s(record, at("12:01:40")) == 140
    # And once the estimate has passed, clients poll every 15 s
    assert capacity_retry_after_s(record, at("12:05:00")) == 15
    # And after three wake times (720 s) unanswered, it is presumed lost: a refused request
    # may ask again
    assert not wake_is_recent(record, at("12:12:01"))

    # When such a refused request arrives through a directory
    registry = runtime.registry()
    registry.create(record)
    dispatcher = RecordingDispatcher()
    directory = ModelDirectory(
        runtime.registry, wake=lambda: dispatcher, now=lambda: at("12:20:00")
    )
    directory.refused_for_capacity("cold")
    # Then a new wake is recorded and dispatched
    events = [h.event for h in registry.get("cold").history]
    assert events.count("WakeRequested") == 3
    assert len(dispatcher.events) == 1


def test_a_failed_dispatch_still_answers_503_and_keeps_the_wake_recorded(
    moto_aws: None, caplog: pytest.LogCaptureFixture
) -> None:
    from llmhost.serving.errors import ModelUnavailable
    from llmhost.serving.wake import LambdaWakeDispatcher

    runtime.registry().create(zero_copies())
    # Given a scaling function name that Lambda does not know (moto has no such function)
    dispatcher = LambdaWakeDispatcher(lambda: _lambda_client(), "llmhost-scaling-missing")
    service = chat_service(
        ModelDirectory(runtime.registry, wake=lambda: dispatcher), ScaledToZeroRuntime()
    )
    # When a request finds no copy
    with pytest.raises(ModelUnavailable) as refused:
        chat(service)
    # Then the client still gets its 503 with Retry-After, the wake is recorded, and the
    # operator's log names the function and what to check
    assert refused.value.status == 503 and refused.value.retry_after == 300
    events = [h.event for h in runtime.registry().get("cold").history]
    assert events.count("WakeRequested") == 1
    assert "llmhost-scaling-missing" in caplog.text and "lambda:InvokeFunction" in caplog.text


def _lambda_client() -> Any:
    from llmhost.serving.wake import lambda_client

    return lambda_client()


def test_serving_settings_choose_the_dispatcher(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmhost.serving.wake import LambdaWakeDispatcher, NoWakeDispatch

    # Given no SCALING_FUNCTION_NAME, serving only writes the registry
    assert isinstance(runtime.wake_dispatcher(), NoWakeDispatch)
    # Given one, it invokes that function asynchronously
    monkeypatch.setenv("SCALING_FUNCTION_NAME", "llmhost-scaling")
    dispatcher = runtime.wake_dispatcher()
    assert isinstance(dispatcher, LambdaWakeDispatcher)
    assert dispatcher.function_name == "llmhost-scaling"


def test_the_lambda_dispatcher_sends_an_async_invoke_with_the_event() -> None:
    from llmhost.serving.wake import LambdaWakeDispatcher, WakeDispatchFailed, wake_event

    calls: list[dict[str, Any]] = []

    class FakeLambda:
        status = 202

        def invoke(self, **request: Any) -> dict[str, Any]:
            calls.append(request)
            return {"StatusCode": self.status}

    client = FakeLambda()
    dispatcher = LambdaWakeDispatcher(lambda: client, "llmhost-scaling")
    event = wake_event("cold", "2026-01-01T00:00:00Z")
    dispatcher.dispatch(event)
    assert calls == [
        {
            "FunctionName": "llmhost-scaling",
            "InvocationType": "Event",
            "Payload": json.dumps(event).encode(),
        }
    ]
    # A synchronous answer (200) means the event was not queued as asked
    client.status = 200
    with pytest.raises(WakeDispatchFailed, match="202"):
        dispatcher.dispatch(event)


def test_the_wake_event_is_the_one_the_scaling_hook_reads() -> None:
    from conftest import load_event
    from llmhost.scaling.hook_events import parse_event
    from llmhost.serving.wake import wake_event

    # Given the contract's sample of event 4, serving sends exactly that shape
    sample = load_event("serving-wake.json")
    assert wake_event(sample["deployment"], sample["requested_at"]) == sample
    # And the scaling hook understands it
    assert parse_event(sample) is not None


class ThrottledRegistry:
    """The registry, with writes refused by DynamoDB (throttling) while ``throttled``."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self.throttled = True

    def save(self, record: DeploymentRecord) -> DeploymentRecord:
        from botocore.exceptions import ClientError

        from llmhost.lifecycle.registry import registry_error

        if self.throttled:
            # What the registry raises for DynamoDB's refusal (its adapter types it)
            raise registry_error(
                ClientError(
                    {
                        "Error": {
                            "Code": "ProvisionedThroughputExceededException",
                            "Message": "slow",
                        }
                    },
                    "PutItem",
                )
            )
        return self._registry.save(record)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


def test_registry_trouble_never_turns_an_answer_or_a_503_into_a_500(moto_aws: None) -> None:
    from llmhost.serving.errors import ModelUnavailable

    # Given a component at zero copies and a registry whose writes DynamoDB throttles
    runtime.registry().create(zero_copies())
    registry = ThrottledRegistry(runtime.registry())
    sagemaker = ScaledToZeroRuntime()
    dispatcher = RecordingDispatcher()
    service = chat_service(ModelDirectory(lambda: registry, wake=lambda: dispatcher), sagemaker)
    # When a request finds no copy, the client still gets a 503 with Retry-After (no wake
    # could be recorded, so none is dispatched: AWS's no-capacity alarm adds the copy)
    with pytest.raises(ModelUnavailable) as refused:
        chat(service)
    assert refused.value.status == 503 and refused.value.retry_after == 300
    assert dispatcher.events == []
    # And with the wake recorded after all, the first answer still reaches the client while
    # the wake's end cannot be written
    registry.throttled = False
    with pytest.raises(ModelUnavailable):
        chat(service)
    assert len(dispatcher.events) == 1
    sagemaker.copies = 1
    registry.throttled = True
    assert chat(service)["choices"][0]["message"]["content"] == "awake"
    # Then the next answered request records the wake's end once writes work again
    registry.throttled = False
    chat(service)
    events = [h.event for h in runtime.registry().get("cold").history]
    assert events.count("WakeRequested") == 1 and events.count("Woken") == 1


class RefusingGuard:
    """A GPU cap with no room left (the hook's view of ``CapacityGuard.admit_wake``)."""

    def admit_wake(self, name: str, units: int) -> Any:
        from llmhost.scaling.leases import Grant

        return Grant(name, "WakeRefused", False, "the GPU cap of 2 is held by other-model 2")


@pytest.mark.parametrize("guard", [None, RefusingGuard()], ids=["room", "cap-full"])
def test_with_a_scaling_function_a_sleeping_model_is_woken_through_the_cap(
    moto_aws: None, guard: Any
) -> None:
    from llmhost.scaling.hook import ScalingHook
    from llmhost.scaling.hook_events import parse_event

    registry = runtime.registry()
    registry.create(sleeping())
    dispatcher = RecordingDispatcher()
    directories = [ModelDirectory(runtime.registry, wake=lambda: dispatcher) for _ in range(4)]
    barrier = threading.Barrier(16)
    refused: list[ModelNotReady] = []

    def request(directory: ModelDirectory) -> None:
        barrier.wait()
        try:
            directory.route("sleepy")
        except ModelNotReady as error:
            refused.append(error)

    # When 16 requests for the sleeping model arrive at once
    threads = [threading.Thread(target=request, args=(directories[i % 4],)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one wake is asked for and handed to the scaling function, and the
    # request does not wake the model itself (the hook decides, under the GPU cap)
    record = registry.get("sleepy")
    assert len(refused) == 16 and all(e.status == 503 and e.retry_after for e in refused)
    assert [h.event for h in record.history].count("WakeRequested") == 1
    assert record.desired_state == "sleeping"
    assert len(dispatcher.events) == 1
    # When the hook receives it
    hook = ScalingHook(registry, guard=guard)
    event = parse_event(dispatcher.events[0])
    assert event is not None
    (outcome,) = hook.handle_event(event)
    record = registry.get("sleepy")
    if guard is None:
        # Then, with room, it is admitted and the reconciler will wake it
        assert outcome.decision.event == "WakeAdmitted"
        assert record.desired_state == "in_service"
    else:
        # Then, over the cap, the refusal is recorded with its reason, and it sleeps on
        assert outcome.decision.event == "WakeRefused"
        assert record.desired_state == "sleeping"
        assert "GPU cap" in record.history[-1].reason


def test_a_wake_survives_an_unrelated_write_between_read_and_save(
    moto_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = runtime.registry()
    registry.create(sleeping())
    dispatcher = RecordingDispatcher()
    directory = ModelDirectory(runtime.registry, wake=lambda: dispatcher)
    # Given the reconciler writes the record (not about waking) just after serving read it
    real_save = registry.save
    interleaved: list[str] = []

    def save_after_another_write(record: DeploymentRecord) -> DeploymentRecord:
        if not interleaved:
            interleaved.append("reconciler")
            current = registry.get(record.name)
            real_save(current.with_event("StatusChanged", reason="the reconciler looked again"))
        return real_save(record)

    monkeypatch.setattr(registry, "save", save_after_another_write)
    monkeypatch.setattr(runtime, "registry", lambda: registry)
    # When a request arrives for the sleeping model
    with pytest.raises(ModelNotReady):
        directory.route("sleepy")
    # Then its wake is still asked for, once
    assert interleaved == ["reconciler"]
    history = [h.event for h in registry.get("sleepy").history]
    assert history.count("WakeRequested") == 1
    assert len(dispatcher.events) == 1


class LostAnswerRegistry:
    """The registry, where the first save lands but its answer is lost: botocore's retry of
    it then fails the version condition (ConcurrentModification)."""

    def __init__(self, registry: Any) -> None:
        self._registry = registry
        self.lost = 0

    def save(self, record: DeploymentRecord) -> DeploymentRecord:
        from llmhost.errors import ConcurrentModification

        self._registry.save(record)
        if not self.lost:
            self.lost += 1
            raise ConcurrentModification(record.name)
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._registry, name)


@pytest.mark.parametrize("kind", ["zero-copy", "sleeping"])
def test_a_wake_whose_write_landed_but_answered_a_conflict_is_still_handed_over(
    moto_aws: None, kind: str
) -> None:
    record = zero_copies() if kind == "zero-copy" else sleeping()
    runtime.registry().create(record)
    registry = LostAnswerRegistry(runtime.registry())
    dispatcher = RecordingDispatcher()
    directory = ModelDirectory(lambda: registry, wake=lambda: dispatcher)
    # When a refused request's wake write lands, and the retry of it reports a conflict
    if kind == "zero-copy":
        assert directory.refused_for_capacity(record.name) > 0
    else:
        with pytest.raises(ModelNotReady):
            directory.route(record.name)
    # Then the request knows the wake as its own: recorded once and handed over
    history = [h.event for h in runtime.registry().get(record.name).history]
    assert registry.lost == 1 and history.count("WakeRequested") == 1
    assert len(dispatcher.events) == 1
