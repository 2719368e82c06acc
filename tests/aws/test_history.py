"""A deployment's history: every writer keeps the configured HISTORY_LIMIT, and a record that
nothing changed is not written again (each write re-triggers the reconciler's stream)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_lifecycle import Harness

from conftest import load_event
from llmhost import runtime
from llmhost.errors import LlmhostError
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.serving.routing import ModelDirectory
from llmhost.specs import parse_spec
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext, api_gateway_event

LIMIT = 5  # HistoryLimit's smallest value
SPEC = {
    "name": "llama3-8b",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    "scaling": {"min_capacity": 1, "max_capacity": 2, "scale_to_zero": True, "idle_minutes": 30},
}


@pytest.fixture
def limited(moto_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HISTORY_LIMIT", str(LIMIT))
    runtime.reset()


def api_call(method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    module = load_handler("api", "llmhost-api")
    raw = json.dumps(body).encode() if body is not None else b""
    event = api_gateway_event(method, path, {"Content-Type": "application/json"}, raw, "tester")
    response = module.handler(event, LambdaContext("llmhost-api"))
    return response["statusCode"], json.loads(response["body"])


def stored_history(name: str = "llama3-8b") -> list[str]:
    return [h.event for h in runtime.registry().get(name).history]


def test_the_api_keeps_the_configured_history_limit(limited: None) -> None:
    # Given HISTORY_LIMIT=5 and a deployment created through the API
    assert api_call("POST", "/v1/deployments", SPEC)[0] == 201
    # When PATCH, sleep and wake add more entries than that
    for tokens in (128, 256, 512):
        patch = {"generation": {"max_new_tokens": tokens}}
        assert api_call("PATCH", "/v1/deployments/llama3-8b", patch)[0] == 200
    for action in ("sleep", "wake", "sleep"):
        assert api_call("POST", f"/v1/deployments/llama3-8b/{action}")[0] == 202
    # Then the record keeps the newest five, in order
    status, body = api_call("GET", "/v1/deployments/llama3-8b")
    assert status == 200
    assert [h["event"] for h in body["history"]] == [
        "SpecUpdated",
        "SpecUpdated",
        "SleepRequested",
        "WakeRequested",
        "SleepRequested",
    ]


def test_the_scaling_hook_and_serving_keep_the_configured_history_limit(limited: None) -> None:
    # Given an in-service deployment whose history is already full
    registry = runtime.registry()
    record = DeploymentRecord(name="llama3-8b", spec=parse_spec(SPEC))
    for i in range(LIMIT):
        record = record.with_event(f"Step{i}", status="IN_SERVICE")
    registry.create(record)
    assert len(stored_history()) == LIMIT
    # When the scaling hook puts it to sleep on its idle alarm
    hook = load_handler("scaling", "llmhost-scaling")
    result = hook.handler(load_event("cloudwatch-alarm-idle.json"), LambdaContext("scaling"))
    assert result["decision"] == "IdleSleep"
    # And a request for it asks for a wake
    directory = ModelDirectory(runtime.registry)
    with pytest.raises(Exception, match="asleep"):
        directory.route("llama3-8b")
    # Then both entries were added and the history still holds five
    history = stored_history()
    assert history[-2:] == ["IdleSleep", "WakeRequested"]
    assert len(history) == LIMIT


class CannotBuild(LlmhostError):
    code = "cannot_build"
    status = 422


def test_a_failed_deployment_is_recorded_once_and_not_written_again(
    standin: Any, clock: Any
) -> None:
    harness = Harness(standin, clock)
    harness.create(SPEC)

    # Given a spec SageMaker resources can no longer be built from
    def cannot_build(*args: Any, **kwargs: Any) -> Any:
        raise CannotBuild("no image for engine lmi 82")

    harness.reconciler._resolve = cannot_build  # type: ignore[method-assign]
    harness.reconciler.reconcile("llama3-8b")
    failed = harness.registry.get("llama3-8b")
    assert failed.status == "FAILED"
    # When the reconciler runs again and again (stream records, the drift schedule)
    for _ in range(10):
        assert harness.reconciler.reconcile("llama3-8b").status == "FAILED"
    # Then the failure is recorded once and the record is never written again
    record = harness.registry.get("llama3-8b")
    assert [h.event for h in record.history].count("Failed") == 1
    assert record.version == failed.version
    assert record == failed


def test_an_identical_consecutive_entry_is_not_appended_but_a_new_wake_is() -> None:
    record = DeploymentRecord(name="llama3-8b", spec=parse_spec(SPEC))
    failed = record.with_event("Failed", status="FAILED", reason="no image", failed_generation=1)
    # An entry that says again what the last one said changes nothing
    assert failed.with_event("Failed", status="FAILED", reason="no image") is failed
    assert failed.with_event("Failed", reason="no image", failed_generation=1) is failed
    # A different reason, status or event is recorded
    assert len(failed.with_event("Failed", status="FAILED", reason="other").history) == 2
    # An entry that marks a moment (a repeated wake request restarts its clock) is kept
    woken = failed.with_event("WakeRequested")
    assert len(woken.with_event("WakeRequested", repeat=True).history) == 3
