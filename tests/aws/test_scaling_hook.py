"""The scaling hook driven by CloudWatch alarm state-change samples (moto DynamoDB)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import load_event
from llmhost import runtime
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.local.events import LambdaContext
from llmhost.local.runner import load_handler
from llmhost.scaling.hook import decide, parse_alarm_event
from llmhost.specs import parse_spec

DEDICATED = {
    "name": "llama3-8b",
    "model": {"model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "scaling": {"min_capacity": 1, "max_capacity": 2, "scale_to_zero": True, "idle_minutes": 30},
}
SHARED = {
    "name": "zephyr",
    "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "shared", "pool": "pool", "instance_type": "ml.g5.12xlarge"},
    "scaling": {"min_capacity": 0, "max_capacity": 2, "scale_to_zero": True},
}


def in_service(spec: dict[str, Any], **changes: Any) -> DeploymentRecord:
    record = DeploymentRecord(name=spec["name"], spec=parse_spec(spec))
    return record.model_copy(update={"status": "IN_SERVICE", **changes})


@pytest.fixture
def hook(moto_aws: None) -> Any:
    return load_handler("scaling", "llmhost-scaling")


def test_idle_alarm_puts_a_dedicated_deployment_to_sleep(hook: Any) -> None:
    runtime.registry().create(in_service(DEDICATED))
    result = hook.handler(load_event("cloudwatch-alarm-idle.json"), LambdaContext("scaling"))
    assert result == {"handled": True, "deployment": "llama3-8b", "decision": "IdleSleep"}
    record = runtime.registry().get("llama3-8b")
    assert record.desired_state == "sleeping"
    assert record.history[-1].event == "IdleSleep" and "30 minutes" in record.history[-1].reason


def test_no_capacity_alarm_wakes_a_sleeping_component(hook: Any) -> None:
    runtime.registry().create(in_service(SHARED, status="SLEEPING", desired_state="sleeping"))
    event = load_event("cloudwatch-alarm-no-capacity.json")
    assert hook.handler(event, LambdaContext("scaling"))["decision"] == "CapacityWake"
    assert runtime.registry().get("zephyr").desired_state == "in_service"


def test_every_transition_is_recorded_even_when_nothing_is_done(hook: Any) -> None:
    runtime.registry().create(in_service(DEDICATED))
    event = copy.deepcopy(load_event("cloudwatch-alarm-idle.json"))
    event["detail"]["state"]["value"], event["detail"]["previousState"]["value"] = "OK", "ALARM"
    assert (
        hook.handler(event, LambdaContext("scaling"))["decision"] == "Alarm idle alarm ALARM -> OK"
    )
    record = runtime.registry().get("llama3-8b")
    assert record.desired_state == "in_service"
    assert record.history[-1].event.startswith("Alarm idle")


def test_idle_right_after_a_wake_is_ignored() -> None:
    woke = in_service(DEDICATED).with_event("WakeRequested", reason="request")
    change = parse_alarm_event(load_event("cloudwatch-alarm-idle.json"))
    assert change is not None
    now = datetime.now(UTC)
    assert decide(woke, change, now).desired_state is None
    assert decide(woke, change, now + timedelta(minutes=31)).desired_state == "sleeping"


def test_foreign_alarms_and_names_are_not_ours() -> None:
    event = copy.deepcopy(load_event("cloudwatch-alarm-idle.json"))
    event["detail"]["alarmName"] = "TargetTracking-endpoint/x/variant/AllTraffic-AlarmHigh-1"
    assert parse_alarm_event(event) is None
    event["detail"]["alarmName"] = "llmhost-my-model-with-dashes-idle"
    change = parse_alarm_event(event)
    assert change is not None and change.deployment == "my-model-with-dashes"
