"""Performs one planned action against AWS, idempotently.

"Already exists" on a create and "not found" on a delete count as success, so an action
repeated after a crash is harmless. SageMaker refusing because a resource is busy becomes
``SageMakerBusy`` (the reconciler waits for the next event); a request SageMaker rejects for
good becomes ``SageMakerRejected`` (recorded as a failure with SageMaker's message).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from llmhost.errors import SageMakerBusy, SageMakerRejected
from llmhost.lifecycle import planner as p
from llmhost.lifecycle.desired import VARIANT, DesiredResources
from llmhost.lifecycle.ownership import (
    LOCAL_STACK,
    alarm_prefix,
    as_tag_list,
    deployment_tags,
    pool_tags,
)
from llmhost.lifecycle.record import DeploymentRecord

if TYPE_CHECKING:
    from llmhost.scaling.capacity_guard import CapacityGuard

# How SageMaker words "not now, the resource is in a transitional state".
_BUSY = re.compile(
    r"in-progress|IN_PROGRESS|while it is|while inference components"
    r"|in status (Creating|Updating|Deleting|SystemUpdating|RollingBack)"
)
_MISSING_HINTS = (
    "Could not find",
    "does not exist",
    "not found",
    "No scaling policy found",
    "No scalable target",
)
_EXISTS_HINTS = ("already existing", "already exists")
SCHEDULE_EVENT_MAX_AGE_S = 900
SCHEDULE_MAX_RETRIES = 10


class SageMakerApplier:
    """Turns planner actions into SageMaker / Application Auto Scaling / CloudWatch /
    EventBridge Scheduler calls.

    Everything it creates that AWS lets it tag is tagged for ``stack`` and the deployment
    (``llmhost.lifecycle.ownership``): the observer and the reconciler's IAM role recognise
    llmhost's resources by those tags.
    """

    def __init__(
        self,
        sagemaker: Any,
        autoscaling: Callable[[], Any],
        cloudwatch: Callable[[], Any],
        role_arn: str,
        read_secret: Callable[[str], str],
        scheduler: Callable[[], Any] | None = None,
        guardrail: CapacityGuard | Callable[[], CapacityGuard] | None = None,
        stack: str = LOCAL_STACK,
    ) -> None:
        self._sm = sagemaker
        self._stack = stack
        self._autoscaling = autoscaling
        self._cloudwatch = cloudwatch
        self._role_arn = role_arn
        self._read_secret = read_secret
        self._scheduler = scheduler
        # The GPU cap: registered MaxCapacity is a lease within it (None: no cap, no budget).
        self._guardrail = guardrail

    def apply(self, action: p.Action, record: DeploymentRecord, desired: DesiredResources) -> None:
        """Perform ``action``. Raises SageMakerBusy or SageMakerRejected."""
        handler = getattr(self, f"_{action.kind}", None)
        if handler is None:
            raise TypeError(f"no applier for {action.kind}")
        try:
            handler(action, record, desired)
        except ClientError as error:
            _raise_domain(error, action)

    # ---------------------------------------------------------------------------- creates

    def _CreateModel(self, action: p.Action, record: DeploymentRecord, d: DesiredResources) -> None:
        container = dict(d.container)
        if d.token_secret_arn and "Environment" in container:
            # The token goes to SageMaker only; it is never logged, hashed or stored by llmhost.
            container["Environment"] = {
                **container["Environment"],
                "HF_TOKEN": self._read_secret(d.token_secret_arn),
            }
        request: dict[str, Any] = {
            "ModelName": action.target,
            "ExecutionRoleArn": self._role_arn,
            "Tags": self._tags(record),
        }
        if "ModelPackageName" in container:
            request["Containers"] = [container]
            request["EnableNetworkIsolation"] = True  # Marketplace packages require it
        else:
            request["PrimaryContainer"] = container
        self._create(self._sm.create_model, **request)

    def _CreateEndpointConfig(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        tags = self._pool_tags(d) if d.is_shared else self._tags(record)
        self._create(self._sm.create_endpoint_config, **d.config_body, Tags=tags)

    def _CreateEndpoint(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        assert isinstance(action, p.CreateEndpoint)
        tags = self._pool_tags(d) if d.is_shared else self._tags(record)
        self._create(
            self._sm.create_endpoint,
            EndpointName=action.target,
            EndpointConfigName=action.config,
            Tags=tags,
        )

    def _UpdateEndpoint(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        assert isinstance(action, p.UpdateEndpoint)
        self._sm.update_endpoint(EndpointName=action.target, EndpointConfigName=action.config)

    def _CreateComponent(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        assert isinstance(action, p.CreateComponent)
        self._create(
            self._sm.create_inference_component,
            InferenceComponentName=action.target,
            EndpointName=d.endpoint_name,
            VariantName=VARIANT,
            Specification=d.component_spec,
            RuntimeConfig={"CopyCount": action.copies},
            Tags=self._tags(record),
        )

    def _UpdateComponent(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        # Copy count is left alone: autoscaling owns it once the component is in service.
        self._sm.update_inference_component(
            InferenceComponentName=action.target, Specification=d.component_spec
        )

    def _SetComponentCopies(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        assert isinstance(action, p.SetComponentCopies)
        self._sm.update_inference_component_runtime_config(
            InferenceComponentName=action.target,
            DesiredRuntimeConfig={"CopyCount": action.copies},
        )

    # ---------------------------------------------------------------------------- deletes

    def _DeleteEndpoint(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        self._delete(self._sm.delete_endpoint, EndpointName=action.target)

    def _DeleteEndpointConfig(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        self._delete(self._sm.delete_endpoint_config, EndpointConfigName=action.target)

    def _DeleteModel(self, action: p.Action, record: DeploymentRecord, d: DesiredResources) -> None:
        self._delete(self._sm.delete_model, ModelName=action.target)

    def _DeleteComponent(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        self._delete(self._sm.delete_inference_component, InferenceComponentName=action.target)

    def _ApplyScaling(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        policy = d.scaling
        if policy is None:
            raise TypeError("ApplyScaling without a scaling policy")
        aas, cloudwatch = self._autoscaling(), self._cloudwatch()
        rid, prefix = action.target, alarm_prefix(record.name)
        target = policy.register_scalable_target_request(rid)
        # Application Auto Scaling applies tags when it creates the target (not on updates).
        own = self._ownership(record)
        target["Tags"] = dict(own)
        guard = self._guardrail() if callable(self._guardrail) else self._guardrail
        if guard is None:
            aas.register_scalable_target(**target)
        else:
            # MaxCapacity is this deployment's lease under the GPU cap: what the others'
            # leases leave (never below MinCapacity), so AWS cannot scale past the cap alone.
            with guard.locked():
                target["MaxCapacity"] = guard.lease_for(
                    record.name, target["MinCapacity"], target["MaxCapacity"]
                )
                aas.register_scalable_target(**target)
            # Scale schedules set bounds too: none may lift MaxCapacity above the lease.
            d = replace(
                d,
                schedules=tuple(
                    (
                        name,
                        cron,
                        tz,
                        low if low is None else min(low, target["MaxCapacity"]),
                        high if high is None else min(high, target["MaxCapacity"]),
                    )
                    for name, cron, tz, low, high in d.schedules
                ),
            )
        aas.put_scaling_policy(**policy.target_tracking_request(rid, f"{prefix}target"))
        if policy.scale_from_zero is not None:
            # Target tracking never leaves zero: a refused request (NoCapacityInvocation-
            # Failures) trips this alarm, whose action is the step policy adding a copy.
            arn = aas.put_scaling_policy(**policy.step_scaling_request(rid, f"{prefix}wake"))[
                "PolicyARN"
            ]
            alarm = policy.scale_from_zero.alarm.put_metric_alarm_request(
                f"{prefix}no-capacity", d.metric_dimensions, [arn]
            )
            cloudwatch.put_metric_alarm(**alarm, Tags=as_tag_list(own))
        else:
            self._delete(
                aas.delete_scaling_policy,
                PolicyName=f"{prefix}wake",
                ServiceNamespace="sagemaker",
                ResourceId=rid,
                ScalableDimension=d.scaling_dimension,
            )
            self._delete(cloudwatch.delete_alarms, AlarmNames=[f"{prefix}no-capacity"])
        self._apply_schedules(aas, rid, d)
        for kind, spec in p.hook_alarms(policy):
            if spec is not None:
                request = spec.put_metric_alarm_request(f"{prefix}{kind}", d.metric_dimensions, [])
                cloudwatch.put_metric_alarm(**request, Tags=as_tag_list(own))
            else:
                self._delete(cloudwatch.delete_alarms, AlarmNames=[f"{prefix}{kind}"])

    def _apply_schedules(self, aas: Any, rid: str, d: DesiredResources) -> None:
        """Put the spec's scheduled actions and remove llmhost's others on this target."""
        wanted = {name for name, *_ in d.schedules}
        for name, cron, timezone, low, high in d.schedules:
            bounds = {"MinCapacity": low, "MaxCapacity": high}
            aas.put_scheduled_action(
                ServiceNamespace="sagemaker",
                ScheduledActionName=name,
                ResourceId=rid,
                ScalableDimension=d.scaling_dimension,
                Schedule=cron,
                Timezone=timezone,
                ScalableTargetAction={k: v for k, v in bounds.items() if v is not None},
            )
        current = aas.describe_scheduled_actions(
            ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=d.scaling_dimension
        ).get("ScheduledActions", [])
        for action in current:
            name = action["ScheduledActionName"]
            if name.startswith(f"llmhost-{d.deployment}-schedule-") and name not in wanted:
                self._delete(
                    aas.delete_scheduled_action,
                    ServiceNamespace="sagemaker",
                    ScheduledActionName=name,
                    ResourceId=rid,
                    ScalableDimension=d.scaling_dimension,
                )

    def _DeleteScalingPolicy(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        assert isinstance(action, p.DeleteScalingPolicy)
        self._delete(
            self._autoscaling().delete_scaling_policy,
            PolicyName=action.target,
            ServiceNamespace="sagemaker",
            ResourceId=action.resource,
            ScalableDimension=d.scaling_dimension,
        )

    def _DeregisterScalableTarget(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        self._delete(
            self._autoscaling().deregister_scalable_target,
            ServiceNamespace="sagemaker",
            ResourceId=action.target,
            ScalableDimension=d.scaling_dimension,
        )

    def _DeleteAlarm(self, action: p.Action, record: DeploymentRecord, d: DesiredResources) -> None:
        self._delete(self._cloudwatch().delete_alarms, AlarmNames=[action.target])

    # ------------------------------------------------------------------ sleep/wake schedules

    def _CreateSchedule(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        (schedule,) = [s for s in d.sleep_wake if s.name == action.target]
        target = d.schedule_target
        self._create(
            self._scheduler_client().create_schedule,
            Name=schedule.name,
            GroupName=target.group,
            ScheduleExpression=schedule.expression,
            ScheduleExpressionTimezone=schedule.timezone,
            # A sleep or wake should happen when the spec says, not within a window.
            FlexibleTimeWindow={"Mode": "OFF"},
            Target={
                "Arn": target.function_arn,
                "RoleArn": target.role_arn,
                "Input": schedule.target_input(),
                # Scheduler retries for 24 h by default: a sleep delivered hours late could
                # undo the next wake, so a window's event is dropped after 15 minutes.
                "RetryPolicy": {
                    "MaximumEventAgeInSeconds": SCHEDULE_EVENT_MAX_AGE_S,
                    "MaximumRetryAttempts": SCHEDULE_MAX_RETRIES,
                },
                # A run that could not be delivered is kept, not dropped.
                **(
                    {"DeadLetterConfig": {"Arn": target.dead_letter_arn}}
                    if target.dead_letter_arn
                    else {}
                ),
            },
            Description=f"llmhost: {schedule.action} deployment {schedule.deployment}",
        )

    def _DeleteSchedule(
        self, action: p.Action, record: DeploymentRecord, d: DesiredResources
    ) -> None:
        self._delete(
            self._scheduler_client().delete_schedule,
            Name=action.target,
            GroupName=d.schedule_target.group,
        )

    def _scheduler_client(self) -> Any:
        if self._scheduler is None:
            raise TypeError("schedule actions need a scheduler client")
        return self._scheduler()

    # ---------------------------------------------------------------------------- helpers

    def _ownership(self, record: DeploymentRecord) -> dict[str, str]:
        return deployment_tags(self._stack, record.name)

    def _tags(self, record: DeploymentRecord) -> list[dict[str, str]]:
        """The spec's own tags, then llmhost's (which a spec cannot set or override)."""
        return as_tag_list({**record.spec.tags, **self._ownership(record)})

    def _pool_tags(self, d: DesiredResources) -> list[dict[str, str]]:
        """A shared pool's endpoint and config serve several deployments: no one's tags."""
        return as_tag_list(pool_tags(self._stack, d.endpoint_name))

    @staticmethod
    def _create(call: Callable[..., Any], **kwargs: Any) -> None:
        try:
            call(**kwargs)
        except ClientError as error:
            if any(h in _message(error) for h in _EXISTS_HINTS):
                return
            raise

    @staticmethod
    def _delete(call: Callable[..., Any], **kwargs: Any) -> None:
        try:
            call(**kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in {
                "ObjectNotFoundException",
                "ResourceNotFound",
                "ResourceNotFoundException",
            } or any(h in _message(error) for h in _MISSING_HINTS):
                return
            raise


def _message(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Message", ""))


def _raise_domain(error: ClientError, action: p.Action) -> None:
    err = error.response.get("Error", {})
    code, message = err.get("Code", ""), err.get("Message", "")
    if code in {"ThrottlingException", "ResourceInUse", "ConcurrentUpdateException"} or (
        code == "ValidationException" and _BUSY.search(message)
    ):
        raise SageMakerBusy(f"{action.kind} {action.target}: {message}") from None
    raise SageMakerRejected(
        f"{action.kind} {action.target} was rejected: {code}: {message}"
    ) from None
