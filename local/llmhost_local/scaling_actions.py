"""What Application Auto Scaling does with an alarm's step scaling policy on an endpoint
variant: moto stores the policy and never runs it.

``StepScalingActions.run(alarm)`` is the local CloudWatch's ``act`` (``llmhost_local.alarms``):
for each of the alarm's actions that is a step scaling policy on a
``sagemaker:variant:DesiredInstanceCount`` target, it picks the step adjustment for the
breach (Application Auto Scaling: "If the breach exceeds the first threshold, ... apply the
first step adjustment"; docs.aws.amazon.com/autoscaling/application/userguide/
application-auto-scaling-step-scaling-policies.html), keeps the new capacity within the
target's MinCapacity and MaxCapacity, honours the policy's Cooldown (compressed like every
other duration), and sets the variant's instance count with
``UpdateEndpointWeightsAndCapacities``, as Application Auto Scaling does for SageMaker. An
endpoint still updating is left for the next invocation (the alarm invokes its actions
again every period while in ALARM).

This is how a request queued on an async endpoint at zero instances brings one up in
``make run``: HasBacklogWithoutCapacity goes to ALARM, its step policy adds an instance.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

INSTANCES = "sagemaker:variant:DesiredInstanceCount"


class StepScalingActions:
    """``autoscaling()``/``sagemaker()``: clients (moto's, the stand-in's); ``speed``: how much
    faster than real time cooldowns pass; ``log``: one line per scaling activity."""

    def __init__(
        self,
        autoscaling: Callable[[], Any],
        sagemaker: Callable[[], Any],
        *,
        speed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self._autoscaling = autoscaling
        self._sagemaker = sagemaker
        self._speed = speed
        self._clock = clock
        self._log = log
        self._last: dict[str, float] = {}  # policy ARN -> when it last scaled
        self._lock = threading.Lock()

    def run(self, alarm: Mapping[str, Any]) -> list[str]:
        """Run the alarm's step policies; returns the activities started ("<endpoint> a -> b")."""
        started: list[str] = []
        actions = set(alarm.get("AlarmActions", []))
        if not actions:
            return started
        client = self._autoscaling()
        policies = client.describe_scaling_policies(ServiceNamespace="sagemaker")
        for policy in policies.get("ScalingPolicies", []):
            if policy.get("PolicyARN") not in actions or policy["PolicyType"] != "StepScaling":
                continue
            if policy["ScalableDimension"] != INSTANCES:
                continue
            activity = self._step(client, policy, alarm)
            if activity:
                started.append(activity)
        return started

    def _step(self, client: Any, policy: Mapping[str, Any], alarm: Mapping[str, Any]) -> str:
        config = policy["StepScalingPolicyConfiguration"]
        now = self._clock()
        with self._lock:
            last = self._last.get(policy["PolicyARN"])
            if last is not None and now - last < config.get("Cooldown", 0) / self._speed:
                return ""
        adjustment = adjustment_for(config, breach=0.0)
        if adjustment is None:
            return ""
        targets = client.describe_scalable_targets(
            ServiceNamespace="sagemaker",
            ResourceIds=[policy["ResourceId"]],
            ScalableDimension=INSTANCES,
        )["ScalableTargets"]
        if not targets:
            return ""
        target = targets[0]
        _, endpoint, _, variant = policy["ResourceId"].split("/")
        sagemaker = self._sagemaker()
        described = sagemaker.describe_endpoint(EndpointName=endpoint)
        if described["EndpointStatus"] != "InService":
            return ""  # the alarm invokes the policy again next period
        (current,) = [
            v.get("DesiredInstanceCount", 0)
            for v in described["ProductionVariants"]
            if v["VariantName"] == variant
        ]
        exact = config["AdjustmentType"] == "ExactCapacity"
        wanted = adjustment if exact else current + adjustment
        wanted = max(target["MinCapacity"], min(target["MaxCapacity"], wanted))
        if wanted == current:
            return ""
        sagemaker.update_endpoint_weights_and_capacities(
            EndpointName=endpoint,
            DesiredWeightsAndCapacities=[{"VariantName": variant, "DesiredInstanceCount": wanted}],
        )
        with self._lock:
            self._last[policy["PolicyARN"]] = now
        activity = f"{endpoint} {current} -> {wanted}"
        self._log(f"  {endpoint}: {alarm['AlarmName']} ran {policy['PolicyName']}: {activity}")
        return activity


def adjustment_for(config: Mapping[str, Any], breach: float) -> int | None:
    """The step adjustment for a metric ``breach`` above the alarm's threshold (None: no
    step covers it). A missing bound is unbounded."""
    for step in config.get("StepAdjustments", []):
        lower = step.get("MetricIntervalLowerBound")
        upper = step.get("MetricIntervalUpperBound")
        if (lower is None or breach >= lower) and (upper is None or breach < upper):
            return int(step["ScalingAdjustment"])
    return None


BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
# Application Auto Scaling's target tracking alarms (llmhost.scaling.policy): scale out after
# three periods above the target, scale in after fifteen minutes below 90 % of it.
SCALE_OUT_PERIODS = 3
SCALE_IN_PERIODS = 15
SCALE_IN_FACTOR = 0.9
PERIOD_S = 60.0


class BacklogTargetTracking:
    """Target tracking on an async endpoint's ``ApproximateBacklogSizePerInstance``: moto
    stores the policy (a customized metric) and never runs it.

    As Application Auto Scaling does (docs.aws.amazon.com/autoscaling/application/userguide/
    target-tracking-scaling-policy-overview.html; for async endpoints
    docs.aws.amazon.com/sagemaker/latest/dg/async-inference-autoscale.html): after three
    one-minute periods above the target it scales out to the instances that bring the
    backlog per instance to the target; after fifteen minutes below 90 % of it, scales in to
    them (zero on an empty queue, when MinCapacity is 0), each outside its cooldown. From
    zero instances the step policy on HasBacklogWithoutCapacity acts first
    (``StepScalingActions``). ``gauge`` is ``AsyncInference.gauge``, ``sample`` its
    ``sample``; periods and cooldowns pass ``speed`` times faster.
    """

    def __init__(
        self,
        autoscaling: Callable[[], Any],
        sagemaker: Callable[[], Any],
        gauge: Callable[[Mapping[str, str], str, float, float], float | None],
        sample: Callable[[str], None],
        *,
        speed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = lambda line: None,
    ) -> None:
        self._autoscaling = autoscaling
        self._sagemaker = sagemaker
        self._gauge = gauge
        self._sample = sample
        self._speed = speed
        self._clock = clock
        self._log = log
        self._changed: dict[str, tuple[float, str]] = {}  # policy ARN -> (when, "out"|"in")
        self._watched: dict[str, float] = {}  # policy ARN -> when first evaluated
        self._last_tick = float("-inf")

    def tick(self) -> list[str]:
        """Evaluate every backlog target tracking policy once a period; the activities."""
        now = self._clock()
        period = PERIOD_S / self._speed
        if now - self._last_tick < period:
            return []
        self._last_tick = now
        client = self._autoscaling()
        started: list[str] = []
        for policy in client.describe_scaling_policies(ServiceNamespace="sagemaker").get(
            "ScalingPolicies", []
        ):
            config = policy.get("TargetTrackingScalingPolicyConfiguration") or {}
            metric = config.get("CustomizedMetricSpecification") or {}
            if metric.get("MetricName") != BACKLOG_METRIC:
                continue
            activity = self._track(client, policy, config, now, period)
            if activity:
                started.append(activity)
        return started

    def _track(
        self,
        client: Any,
        policy: Mapping[str, Any],
        config: Mapping[str, Any],
        now: float,
        period: float,
    ) -> str:
        _, endpoint, _, variant = policy["ResourceId"].split("/")
        self._sample(endpoint)
        dims = {"EndpointName": endpoint}
        values = [
            self._gauge(dims, BACKLOG_METRIC, now - i * period, now - (i - 1) * period)
            for i in range(SCALE_IN_PERIODS, 0, -1)
        ]
        # Like its alarms, the policy has no verdict before it has watched its window.
        watched = now - self._watched.setdefault(policy["PolicyARN"], now)
        target = float(config["TargetValue"])
        recent = values[-SCALE_OUT_PERIODS:]
        out = watched >= SCALE_OUT_PERIODS * period and all(
            v is not None and v > target for v in recent
        )
        scale_in = watched >= SCALE_IN_PERIODS * period and all(
            v is not None and v < target * SCALE_IN_FACTOR for v in values
        )
        if not (out or scale_in):
            return ""
        direction = "out" if out else "in"
        cooldown = float(config.get(f"Scale{direction.title()}Cooldown", 0)) / self._speed
        last = self._changed.get(policy["PolicyARN"])
        if last is not None and last[1] == direction and now - last[0] < cooldown:
            return ""
        sagemaker = self._sagemaker()
        described = sagemaker.describe_endpoint(EndpointName=endpoint)
        if described["EndpointStatus"] != "InService":
            return ""
        (current,) = [
            v.get("DesiredInstanceCount", 0)
            for v in described["ProductionVariants"]
            if v["VariantName"] == variant
        ]
        backlog = self._gauge(dims, "ApproximateBacklogSize", now - period, now) or 0.0
        wanted = math.ceil(backlog / target) if target > 0 else current
        targets = client.describe_scalable_targets(
            ServiceNamespace="sagemaker",
            ResourceIds=[policy["ResourceId"]],
            ScalableDimension=INSTANCES,
        )["ScalableTargets"]
        if not targets:
            return ""
        low, high = targets[0]["MinCapacity"], targets[0]["MaxCapacity"]
        wanted = max(low, min(high, wanted))
        if (out and wanted <= current) or (scale_in and wanted >= current):
            return ""
        sagemaker.update_endpoint_weights_and_capacities(
            EndpointName=endpoint,
            DesiredWeightsAndCapacities=[{"VariantName": variant, "DesiredInstanceCount": wanted}],
        )
        self._changed[policy["PolicyARN"]] = (now, direction)
        activity = f"{endpoint} {current} -> {wanted}"
        self._log(f"  {endpoint}: backlog target tracking scaled {direction}: {activity}")
        return activity
