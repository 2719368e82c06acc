"""Application Auto Scaling rules and state for the SageMaker dimensions moto does not know.

moto's Application Auto Scaling refuses ``sagemaker:inference-component:DesiredCopyCount``
(resource ids ``inference-component/<name>``) and
``sagemaker:variant:DesiredProvisionedConcurrency`` with "Unsupported service namespace,
resource type or scalable dimension". This plane holds the scalable targets, scaling
policies and scheduled actions of exactly those two dimensions; ``route`` leaves every
other request to whatever is behind the client (moto in tests):

- ``ServiceNamespace`` other than ``sagemaker``: pass.
- An operation naming one target (Register/Deregister, Put/DeleteScalingPolicy,
  Put/DeleteScheduledAction): serve if its ``ScalableDimension`` is one of ours, else pass.
- Describe* with a ``ScalableDimension``: serve if it is ours, else pass. Without one: serve
  when every resource id in the filter is ``inference-component/...`` (no other dimension
  exists for those); otherwise merge: the backend's items first, then ours, one page cut
  from the union (``endpoint/<e>/variant/<v>`` carries both moto's DesiredInstanceCount and
  our DesiredProvisionedConcurrency).
- Anything else (tags, scaling activities, forecasts): pass.

Like ``sagemaker_state``, the plane takes decoded request dicts and returns API-shaped
dicts; errors are ``AutoScalingError`` with AWS's code. Messages marked "AWS's wording"
below are reproduced from real error reports; the others are ours, with AWS's code and
condition.
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from llmhost_local.standin.errors import AwsServiceError, page_offset, page_token

Clock = Callable[[], float]
# SageMakerStandIn.describe: (kind, name) -> the Describe* result, or None if it does not exist.
DescribeSageMaker = Callable[[Any, str], dict[str, Any] | None]
Route = Literal["serve", "pass", "merge"]
Request = dict[str, Any]
Result = dict[str, Any]

NAMESPACE = "sagemaker"
COMPONENT_COPIES = "sagemaker:inference-component:DesiredCopyCount"
PROVISIONED_CONCURRENCY = "sagemaker:variant:DesiredProvisionedConcurrency"

VALIDATION = "ValidationException"
NOT_FOUND = "ObjectNotFoundException"
INVALID_TOKEN = "InvalidNextTokenException"

# AWS's wording (PutScalingPolicy / PutScheduledAction without a target, DeregisterScalableTarget
# and DeleteScalingPolicy on a missing one, a predefined metric the dimension does not take).
_UNREGISTERED = (
    "No scalable target registered for service namespace: {namespace}, resource ID: {rid}, "
    "scalable dimension: {dim}"
)
_TARGET_NOT_FOUND = (
    "No scalable target found for service namespace: {namespace}, resource ID: {rid}, "
    "scalable dimension: {dim}"
)
_POLICY_NOT_FOUND = (
    "No scaling policy found for service namespace: {namespace}, resource ID: {rid}, "
    "scalable dimension: {dim}, policy name: {name}"
)
_METRIC_NOT_SUPPORTED = (
    "Scalable dimension {dim} only supports the following predefined metric types: {metrics}"
)
# The wording moto copies for a namespace/resource/dimension mismatch.
_UNSUPPORTED = "Unsupported service namespace, resource type or scalable dimension"
# Emulators agree on this one; no real report of it was found.
_ACTION_NOT_FOUND = (
    "No scheduled action found for service namespace: {namespace}, resource ID: {rid}, "
    "scalable dimension: {dim}, scheduled action name: {name}"
)

_COMPONENT_ID = re.compile(r"inference-component/(?P<component>[^/]+)")
_VARIANT_ID = re.compile(r"endpoint/(?P<endpoint>[^/]+)/variant/(?P<variant>[^/]+)")
_RESOURCE_IDS: dict[str, re.Pattern[str]] = {
    COMPONENT_COPIES: _COMPONENT_ID,
    PROVISIONED_CONCURRENCY: _VARIANT_ID,
}
_PREDEFINED_METRICS: dict[str, tuple[str, ...]] = {
    COMPONENT_COPIES: (
        "SageMakerInferenceComponentInvocationsPerCopy",
        "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution",
    ),
    PROVISIONED_CONCURRENCY: ("SageMakerVariantProvisionedConcurrencyUtilization",),
}
_POLICY_CONFIG = {
    "TargetTrackingScaling": "TargetTrackingScalingPolicyConfiguration",
    "StepScaling": "StepScalingPolicyConfiguration",
}
_SCHEDULE = re.compile(
    r"at\(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\)"
    r"|rate\([1-9]\d* (minute|minutes|hour|hours|day|days)\)"
    r"|cron\(\S+( \S+){5}\)"
)
_ONE_TARGET_OPERATIONS = frozenset(
    {
        "RegisterScalableTarget",
        "DeregisterScalableTarget",
        "PutScalingPolicy",
        "DeleteScalingPolicy",
        "PutScheduledAction",
        "DeleteScheduledAction",
    }
)
# Describe operation -> (its resource filter, AWS's default and maximum MaxResults).
_DESCRIBES: dict[str, tuple[str, int]] = {
    "DescribeScalableTargets": ("ResourceIds", 50),
    "DescribeScalingPolicies": ("ResourceId", 10),
    "DescribeScheduledActions": ("ResourceId", 50),
}
_SUSPENDED_FLAGS = (
    "DynamicScalingInSuspended",
    "DynamicScalingOutSuspended",
    "ScheduledScalingSuspended",
)


class AutoScalingError(AwsServiceError):
    """An error Application Auto Scaling itself returns."""


def _invalid(message: str) -> AutoScalingError:
    return AutoScalingError(VALIDATION, message)


def route(operation: str, request: Request) -> Route:
    """Who answers this request: the stand-in, the backend behind the client, or both merged."""
    if request.get("ServiceNamespace") != NAMESPACE:
        return "pass"
    dimension = request.get("ScalableDimension")
    if operation == "DescribeScalingActivities":
        return "serve"  # moto does not implement it at all
    if operation in _ONE_TARGET_OPERATIONS:
        return "serve" if dimension in _RESOURCE_IDS else "pass"
    if operation not in _DESCRIBES:
        return "pass"
    if dimension is not None:
        return "serve" if dimension in _RESOURCE_IDS else "pass"
    ids = _resource_filter(operation, request)
    if ids and all(_COMPONENT_ID.fullmatch(i) for i in ids):
        return "serve"
    return "merge"


Key = tuple[str, str]  # (ResourceId, ScalableDimension)


@dataclass
class _Target:
    resource_id: str
    dimension: str
    min_capacity: int
    max_capacity: int
    role_arn: str
    suspended: dict[str, bool]
    created: float
    arn: str
    # Set when the target is created (AWS ignores Tags on a later registration).
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _Policy:
    name: str
    resource_id: str
    dimension: str
    policy_type: str
    configuration: dict[str, Any]
    arn: str
    created: float
    alarm_ids: tuple[str, str] = field(default_factory=lambda: (_uuid(), _uuid()))


@dataclass
class _ScheduledAction:
    name: str
    resource_id: str
    dimension: str
    schedule: str
    target_action: dict[str, int]
    arn: str
    created: float
    timezone: str | None = None
    start: datetime | None = None
    end: datetime | None = None


class AutoScalingControlPlane:
    """Scalable targets, policies and scheduled actions of the SageMaker dimensions moto lacks.

    ``describe_sagemaker`` (a ``SageMakerStandIn.describe``), when given, makes registration
    check that the inference component or serverless variant exists, as AWS does. Thread-safe.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        region: str,
        account_id: str,
        describe_sagemaker: DescribeSageMaker | None = None,
    ) -> None:
        self._clock = clock
        self._region = region
        self._account = account_id
        self._describe = describe_sagemaker
        self._lock = threading.RLock()
        self._targets: dict[Key, _Target] = {}
        self._policies: dict[tuple[str, str, str], _Policy] = {}
        self._actions: dict[tuple[str, str, str], _ScheduledAction] = {}

    # ---- views -------------------------------------------------------------------------

    def targets(self) -> set[Key]:
        with self._lock:
            return set(self._targets)

    def target_tags(self, resource_id: str) -> dict[str, str]:
        """The tags of the targets on ``resource_id`` (merged over their dimensions)."""
        with self._lock:
            tags: dict[str, str] = {}
            for target in self._targets.values():
                if target.resource_id == resource_id:
                    tags.update(target.tags)
            return tags

    def policies(self) -> set[tuple[str, str]]:
        with self._lock:
            return {(p.resource_id, p.name) for p in self._policies.values()}

    def scheduled_actions(self) -> set[tuple[str, str]]:
        with self._lock:
            return {(a.resource_id, a.name) for a in self._actions.values()}

    # ---- scalable targets --------------------------------------------------------------

    def register_scalable_target(self, request: Request) -> Result:
        with self._lock:
            rid, dim = _identify(request)
            self._check_resource(rid, dim)
            existing = self._targets.get((rid, dim))
            low = request.get("MinCapacity", existing.min_capacity if existing else None)
            high = request.get("MaxCapacity", existing.max_capacity if existing else None)
            if low is None or high is None:
                raise _invalid(
                    "MinCapacity and MaxCapacity are required to register a new scalable "
                    f"target (resource ID: {rid}, scalable dimension: {dim})."
                )
            _check_capacities(low, high, "")
            suspended = (
                dict(existing.suspended) if existing else dict.fromkeys(_SUSPENDED_FLAGS, False)
            )
            suspended.update(request.get("SuspendedState", {}))
            if existing is None:
                existing = self._targets[(rid, dim)] = _Target(
                    resource_id=rid,
                    dimension=dim,
                    min_capacity=low,
                    max_capacity=high,
                    role_arn=request.get("RoleARN") or self._service_linked_role(),
                    suspended=suspended,
                    created=self._clock(),
                    arn=self._arn("application-autoscaling", f"scalable-target/{_target_id()}"),
                    tags=dict(request.get("Tags", {})),
                )
            existing.min_capacity, existing.max_capacity = low, high
            existing.suspended = suspended
            return {"ScalableTargetARN": existing.arn}

    def deregister_scalable_target(self, request: Request) -> Result:
        """Drops the target with its scaling policies and scheduled actions, as AWS does."""
        with self._lock:
            key = _identify(request)
            if key not in self._targets:
                raise AutoScalingError(NOT_FOUND, _format(_TARGET_NOT_FOUND, key))
            del self._targets[key]
            for owned in (self._policies, self._actions):
                for k in [k for k in owned if k[:2] == key]:
                    del owned[k]
            return {}

    def describe_scalable_targets(self, request: Request, downstream: Sequence[Any] = ()) -> Result:
        with self._lock:
            ids = request.get("ResourceIds")
            rows = [
                {
                    "ServiceNamespace": NAMESPACE,
                    "ResourceId": t.resource_id,
                    "ScalableDimension": t.dimension,
                    "MinCapacity": t.min_capacity,
                    "MaxCapacity": t.max_capacity,
                    "RoleARN": t.role_arn,
                    "CreationTime": _utc(t.created),
                    "SuspendedState": dict(t.suspended),
                    "ScalableTargetARN": t.arn,
                }
                for t in self._targets.values()
                if (not ids or t.resource_id in ids)
                and request.get("ScalableDimension") in (None, t.dimension)
            ]
            return _page(
                "DescribeScalableTargets", "ScalableTargets", [*downstream, *rows], request
            )

    # ---- scaling policies --------------------------------------------------------------

    def put_scaling_policy(self, request: Request) -> Result:
        with self._lock:
            target = self._registered(request)
            key = (target.resource_id, target.dimension, request["PolicyName"])
            existing = self._policies.get(key)
            policy_type = request.get("PolicyType") or (existing.policy_type if existing else None)
            if policy_type is None:
                raise _invalid("PolicyType is required to create a scaling policy.")
            if policy_type not in _POLICY_CONFIG:
                raise _invalid(f"{policy_type} is not supported for SageMaker; it is ECS only.")
            config_key = _POLICY_CONFIG[policy_type]
            for other_type, other_key in _POLICY_CONFIG.items():
                if other_type != policy_type and other_key in request:
                    raise _invalid(f"{other_key} cannot be used with a {policy_type} policy.")
            config = request.get(config_key)
            if config is None and existing is not None and existing.policy_type == policy_type:
                config = existing.configuration
            if config is None:
                raise _invalid(f"{config_key} is required for a {policy_type} policy.")
            if policy_type == "TargetTrackingScaling":
                _check_target_tracking(target.dimension, config)
            else:
                _check_step_scaling(config)
            if existing is None:
                existing = self._policies[key] = _Policy(
                    name=key[2],
                    resource_id=target.resource_id,
                    dimension=target.dimension,
                    policy_type=policy_type,
                    configuration={},
                    arn=self._arn(
                        "autoscaling",
                        f"scalingPolicy:{_uuid()}:resource/{NAMESPACE}/{target.resource_id}"
                        f":policyName/{key[2]}",
                    ),
                    created=self._clock(),
                )
            policy = existing
            policy.policy_type, policy.configuration = policy_type, copy.deepcopy(config)
            result: Result = {"PolicyARN": policy.arn}
            if policy_type == "TargetTrackingScaling":
                result["Alarms"] = self._alarms(policy)
            return result

    def describe_scaling_policies(self, request: Request, downstream: Sequence[Any] = ()) -> Result:
        with self._lock:
            names = request.get("PolicyNames")
            rows = [
                {
                    "PolicyARN": p.arn,
                    "PolicyName": p.name,
                    "ServiceNamespace": NAMESPACE,
                    "ResourceId": p.resource_id,
                    "ScalableDimension": p.dimension,
                    "PolicyType": p.policy_type,
                    _POLICY_CONFIG[p.policy_type]: copy.deepcopy(p.configuration),
                    # A step policy's alarms are the caller's CloudWatch alarms; the stand-in
                    # does not see them.
                    "Alarms": self._alarms(p) if p.policy_type == "TargetTrackingScaling" else [],
                    "CreationTime": _utc(p.created),
                }
                for p in self._policies.values()
                if _matches(p.resource_id, p.dimension, request) and (not names or p.name in names)
            ]
            return _page(
                "DescribeScalingPolicies", "ScalingPolicies", [*downstream, *rows], request
            )

    def delete_scaling_policy(self, request: Request) -> Result:
        with self._lock:
            rid, dim = _identify(request)
            name = request["PolicyName"]
            if self._policies.pop((rid, dim, name), None) is None:
                raise AutoScalingError(NOT_FOUND, _format(_POLICY_NOT_FOUND, (rid, dim), name))
            return {}

    # ---- scheduled actions -------------------------------------------------------------

    def put_scheduled_action(self, request: Request) -> Result:
        """Create or update; on update, start and end times left out are cleared, as in AWS."""
        with self._lock:
            target = self._registered(request)
            name = request["ScheduledActionName"]
            key = (target.resource_id, target.dimension, name)
            existing = self._actions.get(key)
            schedule = request.get("Schedule") or (existing.schedule if existing else None)
            if schedule is None:
                raise _invalid("Schedule is required to create a scheduled action.")
            if not _SCHEDULE.fullmatch(schedule):
                raise _invalid(
                    f"Schedule {schedule!r} is not a valid expression: use "
                    "at(yyyy-mm-ddThh:mm:ss), rate(value unit) or cron(six fields)."
                )
            action = request.get("ScalableTargetAction") or (
                existing.target_action if existing else {}
            )
            if "MinCapacity" not in action and "MaxCapacity" not in action:
                raise _invalid(
                    "ScalableTargetAction needs MinCapacity, MaxCapacity or both for scheduled "
                    f"action {name!r}."
                )
            _check_capacities(
                action.get("MinCapacity"), action.get("MaxCapacity"), "ScalableTargetAction."
            )
            start, end = request.get("StartTime"), request.get("EndTime")
            if start is not None and end is not None and start >= end:
                raise _invalid(f"StartTime must be before EndTime for scheduled action {name!r}.")
            arn = (
                existing.arn
                if existing
                else self._arn(
                    "autoscaling",
                    f"scheduledAction:{_uuid()}:resource/{NAMESPACE}/{target.resource_id}"
                    f":scheduledActionName/{name}",
                )
            )
            self._actions[key] = _ScheduledAction(
                name=name,
                resource_id=target.resource_id,
                dimension=target.dimension,
                schedule=schedule,
                target_action=dict(action),
                arn=arn,
                created=existing.created if existing else self._clock(),
                timezone=request.get("Timezone") or (existing.timezone if existing else None),
                start=start,
                end=end,
            )
            return {}

    def describe_scaling_activities(
        self, request: Request, downstream: Sequence[Any] = ()
    ) -> Result:
        """No scaling ever runs here (nothing executes policies), so there is no activity."""
        return {"ScalingActivities": []}

    def describe_scheduled_actions(
        self, request: Request, downstream: Sequence[Any] = ()
    ) -> Result:
        with self._lock:
            names = request.get("ScheduledActionNames")
            rows = []
            for a in self._actions.values():
                if not _matches(a.resource_id, a.dimension, request) or (
                    names and a.name not in names
                ):
                    continue
                row: Result = {
                    "ScheduledActionName": a.name,
                    "ScheduledActionARN": a.arn,
                    "ServiceNamespace": NAMESPACE,
                    "Schedule": a.schedule,
                    "ResourceId": a.resource_id,
                    "ScalableDimension": a.dimension,
                    "ScalableTargetAction": dict(a.target_action),
                    "CreationTime": _utc(a.created),
                }
                optional = {"Timezone": a.timezone, "StartTime": a.start, "EndTime": a.end}
                row.update({k: v for k, v in optional.items() if v is not None})
                rows.append(row)
            return _page(
                "DescribeScheduledActions", "ScheduledActions", [*downstream, *rows], request
            )

    def delete_scheduled_action(self, request: Request) -> Result:
        with self._lock:
            rid, dim = _identify(request)
            name = request["ScheduledActionName"]
            if self._actions.pop((rid, dim, name), None) is None:
                raise AutoScalingError(NOT_FOUND, _format(_ACTION_NOT_FOUND, (rid, dim), name))
            return {}

    # ---- rules -------------------------------------------------------------------------

    def _registered(self, request: Request) -> _Target:
        key = _identify(request)
        target = self._targets.get(key)
        if target is None:
            raise AutoScalingError(NOT_FOUND, _format(_UNREGISTERED, key))
        return target

    def _check_resource(self, rid: str, dim: str) -> None:
        """The SageMaker resource behind a new or updated target must exist (when we can look)."""
        if self._describe is None:
            return
        match = _RESOURCE_IDS[dim].fullmatch(rid)
        assert match is not None  # _identify checked the shape
        if dim == COMPONENT_COPIES:
            if self._describe("inference-component", match["component"]) is None:
                raise _invalid(
                    f"Inference component {match['component']!r} does not exist in SageMaker; "
                    f"create it before registering {rid} as a scalable target."
                )
            return
        endpoint = self._describe("endpoint", match["endpoint"])
        if endpoint is None:
            raise _invalid(
                f"Endpoint {match['endpoint']!r} does not exist in SageMaker; create it before "
                f"registering {rid} as a scalable target."
            )
        variant = next(
            (v for v in endpoint["ProductionVariants"] if v["VariantName"] == match["variant"]),
            None,
        )
        if variant is None:
            raise _invalid(f"Endpoint {match['endpoint']!r} has no variant {match['variant']!r}.")
        serverless = variant.get("CurrentServerlessConfig") or variant.get(
            "DesiredServerlessConfig"
        )
        if not serverless or not serverless.get("ProvisionedConcurrency"):
            raise _invalid(
                f"{rid} has no provisioned concurrency: {PROVISIONED_CONCURRENCY} needs a "
                "serverless variant with ServerlessConfig.ProvisionedConcurrency."
            )

    def _alarms(self, policy: _Policy) -> list[dict[str, str]]:
        """The CloudWatch alarms AWS creates for a target tracking policy (none on scale-in off)."""
        high, low = (
            f"TargetTracking-{policy.resource_id}-{kind}-{guid}"
            for kind, guid in zip(("AlarmHigh", "AlarmLow"), policy.alarm_ids, strict=True)
        )
        names = [high] if policy.configuration.get("DisableScaleIn") else [high, low]
        return [{"AlarmName": n, "AlarmARN": self._arn("cloudwatch", f"alarm:{n}")} for n in names]

    def _service_linked_role(self) -> str:
        return (
            f"arn:aws:iam::{self._account}:role/aws-service-role/"
            "sagemaker.application-autoscaling.amazonaws.com/"
            "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"
        )

    def _arn(self, service: str, resource: str) -> str:
        return f"arn:aws:{service}:{self._region}:{self._account}:{resource}"


# ---- pure helpers --------------------------------------------------------------------------


def _identify(request: Request) -> Key:
    """(ResourceId, ScalableDimension), refused as AWS does when they do not fit together."""
    rid, dim = request["ResourceId"], request["ScalableDimension"]
    if not _RESOURCE_IDS[dim].fullmatch(rid):
        raise _invalid(_UNSUPPORTED)
    return rid, dim


def _resource_filter(operation: str, request: Request) -> list[str]:
    ids = request.get(_DESCRIBES[operation][0])
    return [ids] if isinstance(ids, str) else list(ids or [])


def _matches(rid: str, dim: str, request: Request) -> bool:
    return request.get("ResourceId") in (None, rid) and request.get("ScalableDimension") in (
        None,
        dim,
    )


def _check_capacities(low: int | None, high: int | None, where: str) -> None:
    for name, value in (("MinCapacity", low), ("MaxCapacity", high)):
        if value is not None and value < 0:
            raise _invalid(f"{where}{name} must be 0 or more, not {value}.")
    if low is not None and high is not None and low > high:
        raise _invalid(
            f"{where}MinCapacity ({low}) cannot be greater than {where}MaxCapacity ({high})."
        )


def _check_target_tracking(dim: str, config: dict[str, Any]) -> None:
    predefined = config.get("PredefinedMetricSpecification")
    customized = config.get("CustomizedMetricSpecification")
    if (predefined is None) == (customized is None):
        raise _invalid(
            "A target tracking policy needs exactly one of PredefinedMetricSpecification and "
            "CustomizedMetricSpecification."
        )
    allowed = _PREDEFINED_METRICS[dim]
    if predefined is not None and predefined["PredefinedMetricType"] not in allowed:
        raise _invalid(_METRIC_NOT_SUPPORTED.format(dim=dim, metrics=", ".join(allowed)))


def _check_step_scaling(config: dict[str, Any]) -> None:
    if "AdjustmentType" not in config or not config.get("StepAdjustments"):
        raise _invalid(
            "A step scaling policy needs an AdjustmentType and at least one StepAdjustment."
        )


def _format(template: str, key: Key, name: str | None = None) -> str:
    return template.format(namespace=NAMESPACE, rid=key[0], dim=key[1], name=name)


def _page(operation: str, items_key: str, rows: Iterable[Any], request: Request) -> Result:
    """One page of rows, with AWS's default and maximum MaxResults for the operation."""
    limit = _DESCRIBES[operation][1]
    size = request.get("MaxResults", limit)
    if not 1 <= size <= limit:
        bound = "greater than or equal to 1" if size < 1 else f"less than or equal to {limit}"
        raise _invalid(
            f"1 validation error detected: Value '{size}' at 'maxResults' failed to satisfy "
            f"constraint: Member must have value {bound}"
        )
    rows = list(rows)
    start = _offset(request.get("NextToken"))
    result: Result = {items_key: rows[start : start + size]}
    if start + size < len(rows):
        result["NextToken"] = page_token(start + size)
    return result


def _offset(token: str | None) -> int:
    try:
        return page_offset(token)
    except ValueError as err:
        raise AutoScalingError(INVALID_TOKEN, f"Invalid NextToken: {token}") from err


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _uuid() -> str:
    return str(uuid.uuid4())


def _target_id() -> str:
    # Scalable target ids are 36 lower-case hex-like characters, not a dashed UUID.
    return (uuid.uuid4().hex + uuid.uuid4().hex)[:36]
