"""template.yaml's roles grant every AWS call the control plane's code makes: the API, the
scaling hook and the reconciler run against moto and the SageMaker stand-in with their
calls recorded, and each call (and alarm name) is checked against its role.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

import sam_template as sam


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam.load()


def _record_aws_calls() -> list[tuple[str, dict[str, Any]]]:
    """Every AWS call made from now on through llmhost's clients, as (IAM action, params).

    The service names llmhost builds clients for are also their IAM prefixes, and each of
    these operations is authorized by the action of the same name.
    """
    from llmhost import aws

    calls: list[tuple[str, dict[str, Any]]] = []

    def attach(service: str, client: Any) -> None:
        def record(params: dict[str, Any], model: Any, **_: Any) -> None:
            calls.append((f"{service}:{model.name}", dict(params)))

        client.meta.events.register("before-parameter-build", record)

    attach("dynamodb", aws.client("dynamodb"))  # the fixture built and cached it already
    aws.add_customizer(attach)
    return calls


def _assert_granted(
    template: dict[str, Any], role: str, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    grants = sam.grants(template, role)
    for action, params in calls:
        if action == "dynamodb:TransactWriteItems":
            # IAM authorizes each item of a transaction by its own action.
            for item in params["TransactItems"]:
                (kind,) = item
                (item_action,) = {
                    "Put": "dynamodb:PutItem",
                    "Update": "dynamodb:UpdateItem",
                    "Delete": "dynamodb:DeleteItem",
                    "ConditionCheck": "dynamodb:ConditionCheckItem",
                }[kind].split()
                assert item_action in grants, f"{role} lacks {item_action} (in a transaction)"
            continue
        assert action in grants, f"{role} lacks {action}, which the code calls"
        if action.startswith("dynamodb:"):
            assert {"Fn::GetAtt": ["RegistryTable", "Arn"]} in grants[action], action
        if not action.startswith("cloudwatch:"):
            continue
        names = [*params.get("AlarmNames", [])]
        names += [params[key] for key in ("AlarmName", "AlarmNamePrefix") if key in params]
        assert names, f"{action}: a call naming no alarm is authorized against every alarm"
        for alarm in names:
            patterns = [r["Fn::Sub"].split(":alarm:")[1] for r in grants[action]]
            assert any(fnmatch.fnmatchcase(alarm, p) for p in patterns), (role, action, alarm)


SCALE_TO_ZERO = {
    "min_capacity": 0,
    "max_capacity": 2,
    "scale_to_zero": True,
    # a night window: an EventBridge Scheduler schedule the reconciler creates and deletes
    "schedules": [{"cron": "0 20 ? * MON-FRI *", "action": "sleep"}],
}


SHARED_SPEC = {
    "name": "zephyr",
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"},
    "scaling": SCALE_TO_ZERO,
}


DEDICATED_SPEC = {
    "name": "llama3-8b",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    "scaling": {"min_capacity": 1, "max_capacity": 2, "scale_to_zero": True, "idle_minutes": 30},
}


ASYNC_SPEC = {
    "name": "mistral-jobs",
    "model": {"kind": "hub", "model_id": "mistralai/Mistral-7B-Instruct-v0.2"},
    "hosting": {"kind": "async", "instance_type": "ml.g5.2xlarge"},
    "scaling": {"min_capacity": 0, "max_capacity": 2},
}


def _settle(standin: Any, clock: Any, name: str, done: Callable[[Any], bool]) -> Any:
    """Reconcile, letting SageMaker time pass, until ``done(record)``."""
    from llmhost import runtime

    reconciler, registry = runtime.reconciler(), runtime.registry()
    for _ in range(40):
        reconciler.reconcile(name)
        record = registry.get(name)
        if done(record):
            return record
        clock.advance(900)
        standin.tick()
    raise AssertionError(f"{name} did not settle: {registry.get(name)}")


def test_each_control_plane_role_grants_every_call_its_code_makes(
    template: dict[str, Any], standin: Any, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    from llmhost import runtime
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.specs import parse_spec
    from llmhost_local.cloud import load_handler
    from llmhost_local.events import LambdaContext, api_gateway_event

    for key, value in {
        "SCHEDULE_GROUP": "llmhost-schedules",
        "SCALING_FUNCTION_ARN": "arn:aws:lambda:us-east-1:123456789012:function:scaling",
        "SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/llmhost-scheduler",
    }.items():
        monkeypatch.setenv(key, value)
    # (a client of its own: llmhost's scheduler client must be built after the recorder)
    boto3.client("scheduler", region_name="us-east-1").create_schedule_group(
        Name="llmhost-schedules"
    )
    runtime.reset()  # the reconciler reads its settings once
    calls = _record_aws_calls()
    registry = runtime.registry()
    # Given a shared model scaling to zero, brought into service by the reconciler (scalable
    # target, target tracking and step policies, the no-capacity and idle alarms)
    registry.create(DeploymentRecord(name="zephyr", spec=parse_spec(SHARED_SPEC)))
    _settle(standin, clock, "zephyr", lambda r: r.status == "IN_SERVICE" and r.scaling_applied)
    # and an async one at min 0 (AsyncInferenceConfig, backlog target tracking, the step
    # policy and its HasBacklogWithoutCapacity alarm)
    registry.create(DeploymentRecord(name="mistral-jobs", spec=parse_spec(ASYNC_SPEC)))
    _settle(
        standin, clock, "mistral-jobs", lambda r: r.status == "IN_SERVICE" and r.scaling_applied
    )
    # and a dedicated one the registry shows in service. (The reconciler is not run on it:
    # moto answers a delete of an absent variant policy with ValidationException where AWS
    # says ObjectNotFoundException, so it would fail here and not in AWS.)
    dedicated = DeploymentRecord(name="llama3-8b", spec=parse_spec(DEDICATED_SPEC))
    registry.create(dedicated.model_copy(update={"status": "IN_SERVICE"}))
    reconcile_calls = list(calls)
    assert {
        "application-autoscaling:RegisterScalableTarget",
        "application-autoscaling:PutScalingPolicy",
        "cloudwatch:PutMetricAlarm",
    } <= {a for a, _ in reconcile_calls}
    # When the deployment API shows their scaling
    calls.clear()
    api = load_handler("api", "llmhost-api")
    shown = {}
    for name in ("zephyr", "llama3-8b"):
        event = api_gateway_event("GET", f"/v1/deployments/{name}/scaling", {}, b"", "tester")
        response = api.handler(event, LambdaContext("api"))
        assert response["statusCode"] == 200, response["body"]
        shown[name] = json.loads(response["body"])["autoscaling"]
    assert shown == {"zephyr": True, "llama3-8b": False}
    # Then it made exactly the reads its role grants beyond the registry
    assert {a for a, _ in calls if not a.startswith("dynamodb:")} == sam.API_SCALING_READS
    _assert_granted(template, "ApiFunctionRole", calls)
    # When the hook handles both alarm samples (idle: llama3-8b sleeps; no capacity: zephyr)
    calls.clear()
    hook = load_handler("scaling", "llmhost-scaling")
    for sample in ("cloudwatch-alarm-idle.json", "cloudwatch-alarm-no-capacity.json"):
        result = hook.handler(
            json.loads((sam.EVENTS / sample).read_text()), LambdaContext("scaling")
        )
        assert result["handled"] is True, sample
    assert registry.get("llama3-8b").desired_state == "sleeping"
    # Then it only read and wrote the registry, as its role allows
    assert {a for a, _ in calls} == {"dynamodb:GetItem", "dynamodb:PutItem"}
    _assert_granted(template, "ScalingFunctionRole", calls)
    # When, with a GPU cap and a daily budget, it handles every other event kind it receives
    # (the overload and underload alarms, target tracking's scale-out alarm, a request at zero
    # copies, the sleep and wake schedules, the budget tick)
    calls.clear()
    os.environ.update({"GPU_CAPACITY_CAP": "8", "DAILY_BUDGET_USD": "100"})
    try:
        runtime.reset()
        for sample in (
            "cloudwatch-alarm-overload.json",
            "cloudwatch-alarm-underload.json",
            "cloudwatch-alarm-target-tracking-high.json",
            "serving-wake.json",
            "scheduler-wake.json",
            "scheduler-sleep.json",
            "budget-tick.json",
        ):
            event = json.loads((sam.EVENTS / sample).read_text())
            assert "handled" in hook.handler(event, LambdaContext("scaling")), sample
    finally:
        for key in ("GPU_CAPACITY_CAP", "DAILY_BUDGET_USD"):
            os.environ.pop(key)
        runtime.reset()
    # Then it read capacity and moved leases, asked for the copies an overload needs and set
    # its alarm back to OK, and every call is granted to its role
    assert {
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DescribeScalingActivities",
        "sagemaker:DescribeInferenceComponent",
        "sagemaker:UpdateInferenceComponentRuntimeConfig",
        "cloudwatch:SetAlarmState",
        "dynamodb:TransactWriteItems",  # the budget ledger
    } <= {a for a, _ in calls}
    _assert_granted(template, "ScalingFunctionRole", calls)
    # When the reconciler deletes the shared one
    calls.clear()
    registry.save(registry.get("zephyr").model_copy(update={"desired_state": "deleted"}))
    _settle(standin, clock, "zephyr", lambda r: r.status == "DELETED")
    reconcile_calls += calls
    assert {
        "application-autoscaling:DeleteScalingPolicy",
        "application-autoscaling:DeregisterScalableTarget",
        "cloudwatch:DeleteAlarms",
        "scheduler:CreateSchedule",
        "scheduler:ListSchedules",
        "scheduler:DeleteSchedule",
    } <= {a for a, _ in reconcile_calls}
    # Then every call it made on the way, and every alarm name, is granted to its role
    _assert_granted(template, "ReconcileFunctionRole", reconcile_calls)
