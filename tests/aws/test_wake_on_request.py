"""A request for a sleeping model: 503 with Retry-After, and exactly one wake under a burst."""

from __future__ import annotations

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
