"""``GET /v1/deployments/{name}/scaling``: capacity, policies, alarms, schedule, activity.

Read-only: Application Auto Scaling, CloudWatch and SageMaker describe calls, put together
with the deployment's own history of scaling decisions.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from llmhost.lifecycle.desired import VARIANT, wanted_sleep_wake
from llmhost.lifecycle.ownership import alarm_prefix, is_own_alarm
from llmhost.lifecycle.record import DeploymentRecord

SCALING_EVENTS = (
    "ApplyScaling",
    "IdleSleep",
    "CapacityWake",
    "WakeRequested",
    "SleepRequested",
    "DeregisterScalableTarget",
    "Alarm ",
    "SetComponentCopies",
    "CreateSchedule",
    "DeleteSchedule",
    "ScheduledSleep",
    "ScheduledWake",
    "Overload",
    "Underload",
    "CapacityHold",
    "ScaleOutHeld",
)


def scaling_resource(record: DeploymentRecord) -> tuple[str, str]:
    """(resource id, scalable dimension) of a deployment's capacity."""
    kind = record.spec.hosting.kind
    if kind == "shared":
        return (
            f"inference-component/{record.name}",
            "sagemaker:inference-component:DesiredCopyCount",
        )
    if kind == "serverless":
        return (
            f"endpoint/{record.name}/variant/{VARIANT}",
            "sagemaker:variant:DesiredProvisionedConcurrency",
        )
    return f"endpoint/{record.name}/variant/{VARIANT}", "sagemaker:variant:DesiredInstanceCount"


def scaling_view(
    record: DeploymentRecord, autoscaling: Any, cloudwatch: Any, sagemaker: Any
) -> dict[str, Any]:
    resource, dimension = scaling_resource(record)
    ns = {"ServiceNamespace": "sagemaker"}
    targets = _safe(
        lambda: autoscaling.describe_scalable_targets(**ns, ResourceIds=[resource]),
        "ScalableTargets",
    )
    policies = _safe(
        lambda: autoscaling.describe_scaling_policies(
            **ns, ResourceId=resource, ScalableDimension=dimension
        ),
        "ScalingPolicies",
    )
    scheduled = _safe(
        lambda: autoscaling.describe_scheduled_actions(
            **ns, ResourceId=resource, ScalableDimension=dimension
        ),
        "ScheduledActions",
    )
    activities = _safe(
        lambda: autoscaling.describe_scaling_activities(
            **ns, ResourceId=resource, ScalableDimension=dimension, MaxResults=10
        ),
        "ScalingActivities",
    )
    alarms = _safe(
        lambda: cloudwatch.describe_alarms(AlarmNamePrefix=alarm_prefix(record.name)),
        "MetricAlarms",
    )
    target = targets[0] if targets else None
    return {
        "name": record.name,
        "hosting": record.spec.hosting.kind,
        "status": record.status,
        "resource_id": resource,
        "dimension": dimension,
        "capacity": _capacity(record, sagemaker),
        "bounds": (
            {"min": target["MinCapacity"], "max": target["MaxCapacity"]} if target else None
        ),
        "autoscaling": target is not None,
        "policies": [
            {
                "name": p["PolicyName"],
                "type": p["PolicyType"],
                "alarms": [a["AlarmName"] for a in p.get("Alarms", [])],
            }
            for p in policies
        ],
        "alarms": [
            {"name": a["AlarmName"], "metric": _watched(a), "state": a.get("StateValue")}
            for a in alarms
            if is_own_alarm(record.name, a["AlarmName"])
        ],
        "next_scheduled_change": _next(scheduled),
        # The spec's sleep/wake windows, by the EventBridge Scheduler names llmhost gives them
        # (the status reason says so when the reconciler cannot schedule them).
        "sleep_wake_schedules": [
            {
                "name": s.name,
                "schedule": s.expression,
                "timezone": s.timezone,
                "action": s.action,
            }
            for s in wanted_sleep_wake(record.spec)
        ],
        "recent_activity": [
            {
                "at": str(a.get("StartTime")),
                "what": a.get("Description"),
                "status": a.get("StatusCode"),
                "cause": a.get("Cause"),
            }
            for a in activities
        ]
        + [
            {"at": h.at, "what": h.event, "status": h.status, "cause": h.reason}
            for h in record.history
            if h.event.startswith(SCALING_EVENTS)
        ][-10:],
    }


def _capacity(record: DeploymentRecord, sagemaker: Any) -> dict[str, int | None]:
    try:
        if record.spec.hosting.kind == "shared":
            runtime = sagemaker.describe_inference_component(
                InferenceComponentName=record.name
            ).get("RuntimeConfig", {})
            return {
                "current": runtime.get("CurrentCopyCount"),
                "desired": runtime.get("DesiredCopyCount"),
            }
        endpoint = sagemaker.describe_endpoint(EndpointName=record.name)
        variant = (endpoint.get("ProductionVariants") or [{}])[0]
        return {
            "current": variant.get("CurrentInstanceCount"),
            "desired": variant.get("DesiredInstanceCount"),
        }
    except ClientError:
        return {"current": 0, "desired": 0}  # no endpoint or component: asleep or gone


def _next(scheduled: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not scheduled:
        return None
    first = scheduled[0]
    return {
        "name": first.get("ScheduledActionName"),
        "schedule": first.get("Schedule"),
        "timezone": first.get("Timezone"),
        "action": first.get("ScalableTargetAction"),
    }


def _safe(call: Any, key: str) -> list[dict[str, Any]]:
    """A describe call's list; an API the backend refuses shows as empty, not as an error."""
    try:
        return list(call().get(key, []))
    except ClientError:
        return []


def _watched(alarm: dict[str, Any]) -> str | None:
    """The metric an alarm watches: its name, or a metric-math alarm's returned expression
    (its label, else the expression itself)."""
    if alarm.get("MetricName"):
        return str(alarm["MetricName"])
    for query in alarm.get("Metrics") or []:
        if query.get("ReturnData"):
            return str(query.get("Label") or query.get("Expression") or "") or None
    return None
