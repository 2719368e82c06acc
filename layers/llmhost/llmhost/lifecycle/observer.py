"""Reads what SageMaker, Application Auto Scaling, CloudWatch and EventBridge Scheduler hold
for one deployment."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from llmhost.lifecycle.desired import DesiredResources, generation_pattern
from llmhost.lifecycle.observed import Observed, ObservedComponent, ObservedEndpoint
from llmhost.lifecycle.ownership import (
    DEPLOYMENT_TAG,
    LOCAL_STACK,
    POOL_TAG,
    alarm_prefix,
    is_missing,
    is_own_alarm,
    not_ours,
    tags_of,
)
from llmhost.lifecycle.record import DeploymentRecord


class SageMakerObserver:
    """Builds an ``Observed`` snapshot; only describe/list calls, never a change.

    Only SageMaker resources tagged for ``stack`` (``llmhost.lifecycle.ownership``) are
    reported: anything else with a name llmhost would use is never adopted; it is listed in
    ``Observed.conflicts`` when the deployment needs that name.
    """

    def __init__(
        self,
        sagemaker: Any,
        autoscaling: Callable[[], Any],
        cloudwatch: Callable[[], Any],
        scheduler: Callable[[], Any] | None = None,
        stack: str = LOCAL_STACK,
    ) -> None:
        self._sm = sagemaker
        self._stack = stack
        # Lazily created: only deletes need them, and most reconciles are not deletes.
        self._autoscaling = autoscaling
        self._cloudwatch = cloudwatch
        self._scheduler = scheduler

    def observe(
        self,
        record: DeploymentRecord,
        desired: DesiredResources,
        others_in_pool: bool = False,
    ) -> Observed:
        name = record.name
        conflicts: list[str] = []
        mine = (DEPLOYMENT_TAG, name)
        # A shared pool's endpoint and config belong to the pool, not to one deployment.
        pool = (POOL_TAG, desired.endpoint_name) if desired.is_shared else mine
        models = frozenset(self._owned_names("model", name, mine, desired.model_name, conflicts))
        config_base = desired.endpoint_name if desired.is_shared else name
        configs = frozenset(
            self._owned_names("endpoint-config", config_base, pool, desired.config_name, conflicts)
        )
        endpoint = self._endpoint(desired.endpoint_name, pool, conflicts)
        component = None
        pool_components: frozenset[str] = frozenset()
        if desired.is_shared:
            component = self._component(desired.component_name or name, mine, conflicts)
            if endpoint is not None:
                pool_components = frozenset(
                    c for c in self._components_on(endpoint.name) if c != desired.component_name
                )
        deleting = record.desired_state == "deleted"
        scaled = deleting or record.scaling_applied is not None or record.status == "IN_SERVICE"
        return Observed(
            models=models,
            configs=configs,
            endpoint=endpoint,
            component=component,
            pool_components=pool_components,
            pool_wanted_by_others=others_in_pool,
            # Autoscaling is only looked at once there is something to scale (or to delete).
            scalable_targets=self._scalable_targets(desired) if scaled else frozenset(),
            scaling_policies=self._scaling_policies(desired) if scaled else frozenset(),
            alarms=self._alarms(name) if scaled else frozenset(),
            scheduled_actions=self._scheduled_actions(desired) if scaled else frozenset(),
            schedules=self._schedules(name, desired.schedule_target.group),
            conflicts=tuple(conflicts),
        )

    # ------------------------------------------------------------------------------ readers

    def _owned_names(
        self, kind: str, base: str, owner: tuple[str, str], wanted: str, conflicts: list[str]
    ) -> Iterator[str]:
        """This stack's models or endpoint configs named ``<base>-<8 hex>``.

        One of someone else's with the ``wanted`` name is a conflict; others are ignored.
        """
        operation, key, field, arn = _LISTINGS[kind]
        pattern = generation_pattern(base)
        kwargs: dict[str, Any] = {"NameContains": base, "MaxResults": 100}
        while True:
            page = getattr(self._sm, operation)(**kwargs)
            for item in page.get(key, []):
                if not pattern.match(item[field]):
                    continue
                problem = self._not_ours(kind, item[field], item[arn], owner)
                if problem is None:
                    yield item[field]
                elif item[field] == wanted:
                    conflicts.append(problem)
            token = page.get("NextToken")
            if not token:
                return
            kwargs["NextToken"] = token

    def _not_ours(self, kind: str, name: str, arn: str, owner: tuple[str, str]) -> str | None:
        return not_ours(kind, name, tags_of(self._sm, arn), self._stack, owner)

    def _endpoint(
        self, name: str, owner: tuple[str, str], conflicts: list[str]
    ) -> ObservedEndpoint | None:
        try:
            ep = self._sm.describe_endpoint(EndpointName=name)
        except ClientError as error:
            if is_missing(error):
                return None
            raise
        problem = self._not_ours("endpoint", name, ep["EndpointArn"], owner)
        if problem is not None:
            conflicts.append(problem)
            return None
        config_models: frozenset[str] = frozenset()
        try:
            config = self._sm.describe_endpoint_config(EndpointConfigName=ep["EndpointConfigName"])
            config_models = frozenset(
                v["ModelName"] for v in config.get("ProductionVariants", []) if v.get("ModelName")
            )
        except ClientError as error:
            if not is_missing(error):
                raise
        return ObservedEndpoint(
            name=name,
            status=ep["EndpointStatus"],
            config_name=ep["EndpointConfigName"],
            failure_reason=ep.get("FailureReason", ""),
            config_models=config_models,
        )

    def _component(
        self, name: str, owner: tuple[str, str], conflicts: list[str]
    ) -> ObservedComponent | None:
        try:
            ic = self._sm.describe_inference_component(InferenceComponentName=name)
        except ClientError as error:
            if is_missing(error):
                return None
            raise
        problem = self._not_ours("inference component", name, ic["InferenceComponentArn"], owner)
        if problem is not None:
            conflicts.append(problem)
            return None
        spec = ic.get("Specification", {})
        runtime = ic.get("RuntimeConfig", {})
        return ObservedComponent(
            name=name,
            status=ic["InferenceComponentStatus"],
            endpoint_name=ic["EndpointName"],
            model_name=spec.get("ModelName", ""),
            compute={k: float(v) for k, v in spec.get("ComputeResourceRequirements", {}).items()},
            desired_copies=int(runtime.get("DesiredCopyCount", 0)),
            current_copies=int(runtime.get("CurrentCopyCount", 0)),
            failure_reason=ic.get("FailureReason", ""),
        )

    def _components_on(self, endpoint: str) -> Iterator[str]:
        kwargs: dict[str, Any] = {"EndpointNameEquals": endpoint, "MaxResults": 100}
        while True:
            page = self._sm.list_inference_components(**kwargs)
            for item in page.get("InferenceComponents", []):
                yield item["InferenceComponentName"]
            token = page.get("NextToken")
            if not token:
                return
            kwargs["NextToken"] = token

    def _scalable_targets(self, desired: DesiredResources) -> frozenset[str]:
        page = self._autoscaling().describe_scalable_targets(
            ServiceNamespace="sagemaker", ResourceIds=[desired.scaling_resource_id]
        )
        return frozenset(t["ResourceId"] for t in page.get("ScalableTargets", []))

    def _scaling_policies(self, desired: DesiredResources) -> frozenset[tuple[str, str]]:
        policies: set[tuple[str, str]] = set()
        kwargs: dict[str, Any] = {
            "ServiceNamespace": "sagemaker",
            "ResourceId": desired.scaling_resource_id,
            "ScalableDimension": desired.scaling_dimension,
        }
        while True:
            page = self._autoscaling().describe_scaling_policies(**kwargs)
            policies.update((p["ResourceId"], p["PolicyName"]) for p in page["ScalingPolicies"])
            if not page.get("NextToken"):
                return frozenset(policies)
            kwargs["NextToken"] = page["NextToken"]

    def _scheduled_actions(self, desired: DesiredResources) -> frozenset[str]:
        prefix = f"llmhost-{desired.deployment}-schedule-"
        names: set[str] = set()
        kwargs: dict[str, Any] = {
            "ServiceNamespace": "sagemaker",
            "ResourceId": desired.scaling_resource_id,
            "ScalableDimension": desired.scaling_dimension,
        }
        while True:
            page = self._autoscaling().describe_scheduled_actions(**kwargs)
            names.update(
                a["ScheduledActionName"]
                for a in page.get("ScheduledActions", [])
                if a["ScheduledActionName"].startswith(prefix)
            )
            if not page.get("NextToken"):
                return frozenset(names)
            kwargs["NextToken"] = page["NextToken"]

    def _alarms(self, deployment: str) -> frozenset[str]:
        names: set[str] = set()
        kwargs: dict[str, Any] = {"AlarmNamePrefix": alarm_prefix(deployment)}
        while True:
            page = self._cloudwatch().describe_alarms(**kwargs)
            names.update(
                a["AlarmName"]
                for a in page.get("MetricAlarms", [])
                if is_own_alarm(deployment, a["AlarmName"])
            )
            if not page.get("NextToken"):
                return frozenset(names)
            kwargs["NextToken"] = page["NextToken"]

    def _schedules(self, deployment: str, group: str) -> frozenset[str]:
        """llmhost's sleep/wake schedules for ``deployment`` (none without a group).

        Looked at on every reconcile, not only when the spec has sleep/wake rules: removing
        the last rule must still find and delete its schedule.
        """
        if not group or self._scheduler is None:
            return frozenset()
        pattern = generation_pattern(deployment)
        names: set[str] = set()
        # NamePrefix narrows the listing where the backend honours it; the pattern decides
        # (a prefix also matches other deployments' names that start with this one).
        kwargs: dict[str, Any] = {
            "GroupName": group,
            "NamePrefix": f"{deployment}-",
            "MaxResults": 100,
        }
        while True:
            try:
                page = self._scheduler().list_schedules(**kwargs)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                    return frozenset()  # no group yet, so no schedules in it
                raise
            names.update(s["Name"] for s in page.get("Schedules", []) if pattern.match(s["Name"]))
            if not page.get("NextToken"):
                return frozenset(names)
            kwargs["NextToken"] = page["NextToken"]


# kind -> (list operation, result key, name field, ARN field)
_LISTINGS = {
    "model": ("list_models", "Models", "ModelName", "ModelArn"),
    "endpoint-config": (
        "list_endpoint_configs",
        "EndpointConfigs",
        "EndpointConfigName",
        "EndpointConfigArn",
    ),
}
