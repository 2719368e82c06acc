"""The scaling hook driven by CloudWatch alarm state-change samples (moto DynamoDB)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conftest import load_event
from llmhost import runtime
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.scaling.hook import decide
from llmhost.scaling.hook_events import parse_alarm_event
from llmhost.specs import parse_spec
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext

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


# ---- schedules, request wakes and budget ticks (events/*.json) --------------------------


def test_scheduled_sleep_puts_the_deployment_to_sleep(hook: Any) -> None:
    # Given a dedicated deployment in service
    runtime.registry().create(in_service(DEDICATED))
    # When its sleep schedule fires
    result = hook.handler(load_event("scheduler-sleep.json"), LambdaContext("scaling"))
    # Then it is asked to sleep, and the history names the schedule and the capacity
    assert result["decision"] == "ScheduledSleep"
    record = runtime.registry().get("llama3-8b")
    assert record.desired_state == "sleeping"
    assert "llama3-8b-5d41402a" in record.history[-1].reason
    assert "-> 0" in record.history[-1].reason


def test_scheduled_wake_wakes_within_the_cap_and_is_refused_over_it(
    hook: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sleeping deployment and another one holding the only GPU unit of the cap
    monkeypatch.setenv("GPU_CAPACITY_CAP", "1")
    runtime.registry().create(in_service(DEDICATED, status="SLEEPING", desired_state="sleeping"))
    runtime.registry().create(in_service({**DEDICATED, "name": "other"}))
    # When the wake schedule fires
    result = hook.handler(load_event("scheduler-wake.json"), LambdaContext("scaling"))
    # Then the wake is refused and recorded; the deployment keeps sleeping
    assert result["decision"] == "WakeRefused"
    record = runtime.registry().get("llama3-8b")
    assert record.desired_state == "sleeping"
    assert "cap of 1" in record.history[-1].reason and "other 1" in record.history[-1].reason
    # When the cap is raised, the next firing wakes it
    monkeypatch.setenv("GPU_CAPACITY_CAP", "2")
    result = hook.handler(load_event("scheduler-wake.json"), LambdaContext("scaling"))
    assert result["decision"] == "ScheduledWake"
    assert runtime.registry().get("llama3-8b").desired_state == "in_service"


def test_budget_tick_bills_into_the_ledger(hook: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a budget and one deployment
    monkeypatch.setenv("DAILY_BUDGET_USD", "100")
    runtime.registry().create(in_service(DEDICATED))
    # When the tick runs
    result = hook.handler(load_event("budget-tick.json"), LambdaContext("scaling"))
    # Then it is handled, and its ledger items stay out of the deployment list
    assert result["handled"] is True and result["decision"] == "BudgetTick"
    assert [r.name for r in runtime.registry().deployments()] == ["llama3-8b"]
    from llmhost.scaling.budget import BudgetLedger

    assert BudgetLedger(runtime.registry()).state().last_tick is not None


def test_request_wake_gives_a_zero_copy_component_one_copy_once(standin: Any, clock: Any) -> None:
    from llmhost import aws

    # Given zephyr's component on a pool, scaled to zero copies
    sm = aws.client("sagemaker")
    role = "arn:aws:iam::123456789012:role/x"
    image = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4"
    sm.create_model(ModelName="m1", ExecutionRoleArn=role, PrimaryContainer={"Image": image})
    sm.create_endpoint_config(
        EndpointConfigName="pool-c1",
        ExecutionRoleArn=role,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "InstanceType": "ml.g5.12xlarge",
                "InitialInstanceCount": 1,
                "ManagedInstanceScaling": {
                    "Status": "ENABLED",
                    "MinInstanceCount": 0,
                    "MaxInstanceCount": 2,
                },
            }
        ],
    )
    sm.create_endpoint(EndpointName="pool", EndpointConfigName="pool-c1")
    clock.advance(600)
    standin.tick()
    sm.create_inference_component(
        InferenceComponentName="zephyr",
        EndpointName="pool",
        VariantName="AllTraffic",
        Specification={
            "ModelName": "m1",
            "ComputeResourceRequirements": {
                "MinMemoryRequiredInMb": 8192,
                "NumberOfAcceleratorDevicesRequired": 1,
            },
        },
        RuntimeConfig={"CopyCount": 1},
    )
    clock.advance(240)
    standin.tick()
    sm.update_inference_component_runtime_config(
        InferenceComponentName="zephyr", DesiredRuntimeConfig={"CopyCount": 0}
    )
    clock.advance(180)
    standin.tick()
    runtime.registry().create(in_service(SHARED))
    hook = load_handler("scaling", "llmhost-scaling")
    # When serving sends its wake
    result = hook.handler(load_event("serving-wake.json"), LambdaContext("scaling"))
    # Then the component is asked for one copy, recorded 0 -> 1
    assert result["decision"] == "CopiesRequested"
    described = sm.describe_inference_component(InferenceComponentName="zephyr")
    assert described["InferenceComponentStatus"] == "Updating"
    clock.advance(180)
    standin.tick()
    described = sm.describe_inference_component(InferenceComponentName="zephyr")
    assert described["RuntimeConfig"]["DesiredCopyCount"] == 1
    history = runtime.registry().get("zephyr").history
    assert history[-1].event == "CopiesRequested" and "0 -> 1" in history[-1].reason
    # When a second wake arrives, it finds the copy and records nothing (so does one that
    # arrives while the copy is being added)
    again = hook.handler(load_event("serving-wake.json"), LambdaContext("scaling"))
    assert again["decision"] == "CopiesPresent"
    assert len(runtime.registry().get("zephyr").history) == len(history)


def test_every_sample_event_is_recognised() -> None:
    from llmhost.scaling.hook_events import (
        BudgetTick,
        RequestWake,
        ScheduleFired,
        TargetAlarm,
        parse_event,
    )

    high = parse_event(load_event("cloudwatch-alarm-target-tracking-high.json"))
    assert isinstance(high, TargetAlarm) and high.deployment == "zephyr"
    assert (high.which, high.state) == ("AlarmHigh", "ALARM")
    assert isinstance(parse_event(load_event("scheduler-sleep.json")), ScheduleFired)
    assert isinstance(parse_event(load_event("budget-tick.json")), BudgetTick)
    assert isinstance(parse_event(load_event("serving-wake.json")), RequestWake)
    dedicated = load_event("cloudwatch-alarm-target-tracking-high.json")
    dedicated["detail"]["alarmName"] = (
        "TargetTracking-endpoint/llama3-8b/variant/AllTraffic-AlarmHigh-0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
    )
    parsed = parse_event(dedicated)
    assert isinstance(parsed, TargetAlarm) and parsed.deployment == "llama3-8b"
