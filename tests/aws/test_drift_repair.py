"""Drift repair: any piece of a deployment's scaling deleted out of band comes back, exactly as
it was, on the next reconcile (the drift schedule), not only a missing scalable target."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from test_lifecycle import SPECS, Harness
from test_schedules import GROUP, MORNING, NIGHT, scheduler_env, schedules

from llmhost import aws

__all__ = ["scheduler_env"]  # the fixture, imported for this module's tests

RID = "inference-component/zephyr"
DIMENSION = "sagemaker:inference-component:DesiredCopyCount"


@pytest.fixture
def harness(standin: Any, clock: Any, scheduler_env: None) -> Harness:
    aws.client("scheduler").create_schedule_group(Name=GROUP)
    return Harness(standin, clock)


def scaling_state() -> dict[str, Any]:
    """Everything llmhost put in Application Auto Scaling, CloudWatch and Scheduler for it,
    less what AWS stamps on each write (times, state)."""
    aas, cloudwatch = aws.client("application-autoscaling"), aws.client("cloudwatch")
    volatile = {"CreationTime", "ResponseMetadata", "AlarmConfigurationUpdatedTimestamp"}
    volatile |= {"StateUpdatedTimestamp", "StateTransitionedTimestamp", "StateReason"}
    volatile |= {"StateReasonData", "StateValue", "LastModificationDate", "CreationDate"}
    volatile |= {"ScheduledActionARN", "ScalableTargetARN"}

    def clean(item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if k not in volatile}

    scope = {"ServiceNamespace": "sagemaker", "ResourceId": RID, "ScalableDimension": DIMENSION}
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[RID])
    policies = aas.describe_scaling_policies(**scope)["ScalingPolicies"]
    actions = aas.describe_scheduled_actions(**scope)["ScheduledActions"]
    alarms = cloudwatch.describe_alarms(AlarmNamePrefix="llmhost-zephyr-")["MetricAlarms"]
    # Re-created, a policy gets a new ARN (and so must the alarm acting on it), its target
    # tracking alarms new ids, a scheduled action a new ARN: names stand in for those.
    arns = {p["PolicyARN"]: f"<policy {p['PolicyName']}>" for p in policies}
    for alarm in alarms:
        alarm["AlarmActions"] = [arns.get(arn, arn) for arn in alarm["AlarmActions"]]
    for policy in policies:
        policy["PolicyARN"] = None
        policy["Alarms"] = sorted(a["AlarmName"].rsplit("-", 5)[0] for a in policy["Alarms"])
    return {
        "targets": [clean(t) for t in targets["ScalableTargets"]],
        "policies": {p["PolicyName"]: clean(p) for p in policies},
        "scheduled": {a["ScheduledActionName"]: clean(a) for a in actions},
        "alarms": {a["AlarmName"]: clean(a) for a in alarms},
        "schedules": {n: clean(s) for n, s in schedules().items()},
    }


def _delete_policy(name: str) -> Callable[[], None]:
    def delete() -> None:
        aws.client("application-autoscaling").delete_scaling_policy(
            PolicyName=name,
            ServiceNamespace="sagemaker",
            ResourceId=RID,
            ScalableDimension=DIMENSION,
        )

    return delete


def _delete_alarm(name: str) -> Callable[[], None]:
    return lambda: aws.client("cloudwatch").delete_alarms(AlarmNames=[name])


def _delete_scheduled_action() -> None:
    aas = aws.client("application-autoscaling")
    scope = {"ServiceNamespace": "sagemaker", "ResourceId": RID, "ScalableDimension": DIMENSION}
    (first, *_) = aas.describe_scheduled_actions(**scope)["ScheduledActions"]
    aas.delete_scheduled_action(ScheduledActionName=first["ScheduledActionName"], **scope)


def _delete_schedule() -> None:
    scheduler = aws.client("scheduler")
    (first, *_) = scheduler.list_schedules(GroupName=GROUP)["Schedules"]
    scheduler.delete_schedule(Name=first["Name"], GroupName=GROUP)


def _deregister_target() -> None:
    aws.client("application-autoscaling").deregister_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=RID, ScalableDimension=DIMENSION
    )


PIECES: dict[str, Callable[[], None]] = {
    "tracking-policy": _delete_policy("llmhost-zephyr-target"),
    "step-policy": _delete_policy("llmhost-zephyr-wake"),
    "idle-alarm": _delete_alarm("llmhost-zephyr-idle"),
    "no-capacity-alarm": _delete_alarm("llmhost-zephyr-no-capacity"),
    "overload-alarm": _delete_alarm("llmhost-zephyr-overload"),
    "underload-alarm": _delete_alarm("llmhost-zephyr-underload"),
    "scheduled-action": _delete_scheduled_action,
    "sleep-wake-schedule": _delete_schedule,
    "scalable-target": _deregister_target,
}


@pytest.mark.parametrize("piece", list(PIECES))
def test_one_reconcile_restores_a_piece_deleted_out_of_band(harness: Harness, piece: str) -> None:
    # Given a scale-to-zero TGI component with scheduled actions and sleep/wake schedules
    spec = copy.deepcopy(SPECS["shared"])
    spec["scaling"] = {
        "min_capacity": 0,
        "max_capacity": 4,
        "scale_to_zero": True,
        "idle_minutes": 45,
        "schedules": [
            {"cron": "0 8 ? * MON-FRI *", "timezone": "Europe/Berlin", "min_capacity": 2},
            {"cron": "0 19 ? * MON-FRI *", "timezone": "Europe/Berlin", "min_capacity": 0},
            NIGHT,
            MORNING,
        ],
    }
    harness.create(spec)
    assert harness.settle("zephyr").status == "IN_SERVICE"
    before = scaling_state()
    assert len(before["policies"]) == 2 and len(before["alarms"]) == 4
    assert len(before["scheduled"]) == 2 and len(before["schedules"]) == 2
    # When one piece is deleted behind llmhost's back
    PIECES[piece]()
    assert scaling_state() != before
    # Then one reconcile puts it back exactly as it was
    harness.reconciler.reconcile("zephyr")
    assert scaling_state() == before
    assert harness.registry.get("zephyr").status == "IN_SERVICE"
