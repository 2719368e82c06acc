"""One deployment's scaling policy, exactly as Application Auto Scaling and CloudWatch hold it.

``policy_from_spec`` turns the spec's ``Scaling`` block into a ``ScalingPolicy``: the scalable
target's bounds, one target tracking policy (whose two alarms Application Auto Scaling creates
and manages itself), and for scale to zero a step scaling policy with its
``NoCapacityInvocationFailures`` alarm plus an idle alarm for llmhost's scaling hook. The
``*_request`` methods give the bodies of the AWS calls that deploy it (the caller adds resource
ids, names and ARNs).

The last part is the state of a scalable target (``ScalingState``) and the decisions llmhost's
scaling hook takes on its overload and underload alarms. The trace replay
(``llmhost_local.replay``, with what Application Auto Scaling itself does with the policy when an
alarm fires) calls these same functions and policies, so the policy that is benchmarked is the
policy that is deployed. Everything here is pure: values in, values out.

Sources for AWS's behaviour:
- target tracking: https://docs.aws.amazon.com/autoscaling/application/userguide/target-tracking-scaling-policy-overview.html
  (scale out in proportion to the metric; scale in only when the metric is well below the
  target, "usually more than 10% lower"; cooldowns);
- scale to zero: https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-zero-instances.html
  (MinCapacity 0, target tracking, a step scaling policy and a NoCapacityInvocationFailures
  alarm);
- the 10 s metrics: https://aws.amazon.com/blogs/machine-learning/amazon-sagemaker-inference-launches-faster-auto-scaling-for-generative-ai-models/
  (scale-out detection "up to 6x faster" than with one-minute metrics, i.e. 3 x 10 s);
- asynchronous endpoints: https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-autoscale.html
  (MinCapacity 0; target tracking on the customized metric ApproximateBacklogSizePerInstance,
  dimension EndpointName, statistic Average; a ChangeInCapacity +1 step policy whose alarm
  watches HasBacklogWithoutCapacity >= 1 for two one-minute datapoints, so the first queued
  request brings an instance up: target tracking alone never leaves zero).
What AWS does not document is modelled and marked as such below: the scale-in window of the
10 s metrics and which datapoint value target tracking acts on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from llmhost.specs import Scaling, TargetMetric

NAMESPACE = "sagemaker"
COPY_DIMENSION = "sagemaker:inference-component:DesiredCopyCount"
INSTANCE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
PROVISIONED_CONCURRENCY_DIMENSION = "sagemaker:variant:DesiredProvisionedConcurrency"
METRIC_NAMESPACE = "AWS/SageMaker"

STANDARD_PERIOD_S = 60
HIGH_RESOLUTION_PERIOD_S = 10
# Application Auto Scaling's own alarms for a target tracking policy: scale out after three
# datapoints above the target, scale in after fifteen minutes below it. The scale-in threshold
# sits below the target ("usually more than 10% lower") so capacity is removed only when demand
# has clearly fallen. For the 10 s metrics AWS documents only that scale-out is up to six times
# faster (3 x 10 s instead of 3 x 60 s); the scale-in window is assumed to stay 15 minutes.
SCALE_OUT_DATAPOINTS = 3
SCALE_IN_WINDOW_S = 900
SCALE_IN_THRESHOLD_FACTOR = 0.9
# A copy started from zero needs several minutes (an instance, then the model). The wake step
# policy's cooldown outlasts that, so failures that keep arriving while the first copy starts
# do not add one more copy every minute.
WAKE_COOLDOWN_S = 600
# Which value of the evaluated datapoints a policy acts on. Step policies say so
# (MetricAggregationType); target tracking does not expose it, and its scale-in would
# otherwise hinge on the single newest 10 s datapoint (one quiet 10 s could empty a model), so
# it is taken as the mean of the datapoints that put the alarm in ALARM.
TARGET_TRACKING_AGGREGATION: Literal["Average", "Minimum", "Maximum"] = "Average"

Comparison = Literal[
    "GreaterThanThreshold",
    "GreaterThanOrEqualToThreshold",
    "LessThanThreshold",
    "LessThanOrEqualToThreshold",
]
Statistic = Literal["Average", "Sum", "Maximum", "Minimum", "SampleCount"]
MissingData = Literal["missing", "notBreaching", "breaching", "ignore"]
MetricKind = Literal[
    "concurrency",
    "invocations",
    "no_capacity_failures",
    "invocation_count",
    "utilization",
    "demand_ratio",
    "concurrency_peak",
    "backlog",
    "backlog_without_capacity",
]


@dataclass(frozen=True)
class MetricInfo:
    """What a spec's ``target_metric`` names in AWS, and how it is measured."""

    predefined_type: str  # PredefinedMetricType for the target tracking policy ("": customized)
    cloudwatch_name: str  # the metric behind it, in AWS/SageMaker
    dimension: str  # the scalable dimension it scales
    period_s: int  # 10 for the high-resolution metrics, 60 otherwise
    statistic: Statistic
    # concurrency: in-flight (and queued) requests per unit, averaged over the period;
    # invocations: requests per unit summed over the period (a minute);
    # utilization: the fraction of provisioned serverless concurrency in use (not replayed
    # by the simulator, which models GPU copies and instances).
    kind: MetricKind


METRICS: dict[TargetMetric, MetricInfo] = {
    "invocations-per-copy": MetricInfo(
        "SageMakerInferenceComponentInvocationsPerCopy",
        "InvocationsPerCopy",
        COPY_DIMENSION,
        STANDARD_PERIOD_S,
        "Sum",
        "invocations",
    ),
    "concurrent-requests-per-copy": MetricInfo(
        "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution",
        "ConcurrentRequestsPerCopy",
        COPY_DIMENSION,
        HIGH_RESOLUTION_PERIOD_S,
        "Average",
        "concurrency",
    ),
    "invocations-per-instance": MetricInfo(
        "SageMakerVariantInvocationsPerInstance",
        "InvocationsPerInstance",
        INSTANCE_DIMENSION,
        STANDARD_PERIOD_S,
        "Sum",
        "invocations",
    ),
    "concurrent-requests-per-instance": MetricInfo(
        "SageMakerVariantConcurrentRequestsPerModelHighResolution",
        "ConcurrentRequestsPerModel",
        INSTANCE_DIMENSION,
        HIGH_RESOLUTION_PERIOD_S,
        "Average",
        "concurrency",
    ),
    "provisioned-concurrency-utilization": MetricInfo(
        "SageMakerVariantProvisionedConcurrencyUtilization",
        "ServerlessProvisionedConcurrencyUtilization",
        PROVISIONED_CONCURRENCY_DIMENSION,
        STANDARD_PERIOD_S,
        "Average",
        "utilization",
    ),
}


# ----------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class AlarmSpec:
    """A CloudWatch metric alarm: ALARM when ``datapoints_to_alarm`` of the last
    ``evaluation_periods`` datapoints (each ``period_s`` long) breach the threshold.

    ``managed`` alarms belong to a target tracking policy: Application Auto Scaling creates,
    updates and deletes them, so llmhost never calls PutMetricAlarm for them. ``kind`` says
    what the replay measures for the metric.
    """

    metric_name: str
    statistic: Statistic
    period_s: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison: Comparison
    kind: MetricKind
    treat_missing_data: MissingData = "missing"
    managed: bool = False
    # Metric math: the alarm watches ``expression`` over these metrics, (id, metric name,
    # statistic) each, instead of ``metric_name`` alone.
    expression: str | None = None
    inputs: tuple[tuple[str, str, Statistic], ...] = ()

    def breaching(self, value: float | None) -> bool:
        """Whether one datapoint breaches. A missing one breaches only if treated so."""
        if value is None:
            return self.treat_missing_data == "breaching"
        if self.comparison == "GreaterThanThreshold":
            return value > self.threshold
        if self.comparison == "GreaterThanOrEqualToThreshold":
            return value >= self.threshold
        if self.comparison == "LessThanThreshold":
            return value < self.threshold
        return value <= self.threshold

    def in_alarm(self, datapoints: list[float | None]) -> bool:
        """ALARM state given the datapoints so far, oldest first (the last N are evaluated)."""
        window = datapoints[-self.evaluation_periods :]
        if len(window) < self.evaluation_periods:
            return False
        return sum(self.breaching(v) for v in window) >= self.datapoints_to_alarm

    def aggregate(
        self, datapoints: list[float | None], how: Literal["Average", "Minimum", "Maximum"]
    ) -> float:
        """The metric value a policy sees: ``how`` over the last N datapoints (0 if none)."""
        values = [v for v in datapoints[-self.evaluation_periods :] if v is not None]
        if not values:
            return 0.0
        if how == "Maximum":
            return max(values)
        if how == "Minimum":
            return min(values)
        return sum(values) / len(values)

    def put_metric_alarm_request(
        self, name: str, dimensions: dict[str, str], actions: list[str]
    ) -> dict[str, Any]:
        """The CloudWatch PutMetricAlarm body. Refuses managed alarms (AWS owns those)."""
        if self.managed:
            raise ValueError(
                f"alarm on {self.metric_name} is managed by its target tracking policy; "
                "Application Auto Scaling creates it, do not put it"
            )
        dims = [{"Name": k, "Value": v} for k, v in dimensions.items()]
        watched: dict[str, Any] = {
            "Namespace": METRIC_NAMESPACE,
            "MetricName": self.metric_name,
            "Dimensions": dims,
            "Statistic": self.statistic,
            "Period": self.period_s,
        }
        if self.expression is not None:
            queries: list[dict[str, Any]] = [
                {
                    "Id": query_id,
                    "MetricStat": {
                        "Metric": {
                            "Namespace": METRIC_NAMESPACE,
                            "MetricName": metric,
                            "Dimensions": dims,
                        },
                        "Period": self.period_s,
                        "Stat": stat,
                    },
                    "ReturnData": False,
                }
                for query_id, metric, stat in self.inputs
            ]
            queries.append(
                {
                    "Id": "demand",
                    "Expression": self.expression,
                    "Label": self.metric_name,
                    "ReturnData": True,
                }
            )
            watched = {"Metrics": queries}
        return {
            "AlarmName": name,
            **watched,
            "EvaluationPeriods": self.evaluation_periods,
            "DatapointsToAlarm": self.datapoints_to_alarm,
            "Threshold": self.threshold,
            "ComparisonOperator": self.comparison,
            "TreatMissingData": self.treat_missing_data,
            "AlarmActions": actions,
        }


@dataclass(frozen=True)
class StepAdjustment:
    """Applies when ``lower <= metric - threshold < upper`` (a missing bound is unbounded)."""

    lower: float | None
    upper: float | None
    adjustment: int

    def matches(self, excess: float) -> bool:
        return (self.lower is None or excess >= self.lower) and (
            self.upper is None or excess < self.upper
        )


@dataclass(frozen=True)
class StepScalingPolicy:
    """A step scaling policy and the alarm whose action it is."""

    adjustment_type: Literal["ChangeInCapacity", "ExactCapacity"]
    steps: tuple[StepAdjustment, ...]
    cooldown_s: int
    metric_aggregation: Literal["Average", "Minimum", "Maximum"]
    alarm: AlarmSpec

    def adjustment_for(self, metric: float) -> int | None:
        """The step that applies to a breaching metric value, or None if none does."""
        excess = metric - self.alarm.threshold
        for step in self.steps:
            if step.matches(excess):
                return step.adjustment
        return None

    def configuration(self) -> dict[str, Any]:
        """PutScalingPolicy's StepScalingPolicyConfiguration."""
        steps: list[dict[str, Any]] = []
        for step in self.steps:
            item: dict[str, Any] = {"ScalingAdjustment": step.adjustment}
            if step.lower is not None:
                item["MetricIntervalLowerBound"] = step.lower
            if step.upper is not None:
                item["MetricIntervalUpperBound"] = step.upper
            steps.append(item)
        return {
            "AdjustmentType": self.adjustment_type,
            "StepAdjustments": steps,
            "Cooldown": self.cooldown_s,
            "MetricAggregationType": self.metric_aggregation,
        }


@dataclass(frozen=True)
class TargetTrackingPolicy:
    """Keep ``metric`` near ``target_value``; AWS derives and owns the two alarms."""

    metric: MetricInfo
    target_value: float
    scale_in_cooldown_s: int
    scale_out_cooldown_s: int
    high_alarm: AlarmSpec
    low_alarm: AlarmSpec
    disable_scale_in: bool = False

    def configuration(self, endpoint: str | None = None) -> dict[str, Any]:
        """PutScalingPolicy's TargetTrackingScalingPolicyConfiguration. A customized metric
        (no predefined type: the async backlog) is the ``endpoint``'s own."""
        if self.metric.predefined_type:
            metric: dict[str, Any] = {
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": self.metric.predefined_type
                }
            }
        else:
            if endpoint is None:
                raise ValueError(f"{self.metric.cloudwatch_name} is per endpoint: name it")
            metric = {
                "CustomizedMetricSpecification": {
                    "MetricName": self.metric.cloudwatch_name,
                    "Namespace": METRIC_NAMESPACE,
                    "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
                    "Statistic": self.metric.statistic,
                }
            }
        return {
            "TargetValue": self.target_value,
            **metric,
            "ScaleInCooldown": self.scale_in_cooldown_s,
            "ScaleOutCooldown": self.scale_out_cooldown_s,
            "DisableScaleIn": self.disable_scale_in,
        }


@dataclass(frozen=True)
class ScalingPolicy:
    """Everything AWS needs to scale one deployment (plus llmhost's idle alarm).

    Capacity is in copies for inference components and in instances for variants.
    ``scale_from_zero`` is set only when the target may reach zero copies; ``idle_alarm``
    fires after the spec's idle minutes without invocations and is acted on by llmhost's
    scaling hook (zero copies for a component, sleep for a dedicated endpoint).
    """

    dimension: str
    min_capacity: int
    max_capacity: int
    target_tracking: TargetTrackingPolicy
    scale_from_zero: StepScalingPolicy | None = None
    idle_alarm: AlarmSpec | None = None
    overload: OverloadAlarm | None = None
    underload: UnderloadAlarm | None = None

    @property
    def scale_to_zero(self) -> bool:
        return self.idle_alarm is not None or self.min_capacity == 0

    def clamp(self, capacity: int) -> int:
        """Capacity within [min_capacity, max_capacity], as Application Auto Scaling applies it."""
        return max(self.min_capacity, min(self.max_capacity, capacity))

    def register_scalable_target_request(self, resource_id: str) -> dict[str, Any]:
        """Application Auto Scaling RegisterScalableTarget body."""
        return {
            "ServiceNamespace": NAMESPACE,
            "ResourceId": resource_id,
            "ScalableDimension": self.dimension,
            "MinCapacity": self.min_capacity,
            "MaxCapacity": self.max_capacity,
        }

    def target_tracking_request(self, resource_id: str, policy_name: str) -> dict[str, Any]:
        """PutScalingPolicy body for the target tracking policy."""
        return {
            "PolicyName": policy_name,
            "ServiceNamespace": NAMESPACE,
            "ResourceId": resource_id,
            "ScalableDimension": self.dimension,
            "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": self.target_tracking.configuration(
                _endpoint_of(resource_id)
            ),
        }

    def step_scaling_request(self, resource_id: str, policy_name: str) -> dict[str, Any]:
        """PutScalingPolicy body for the scale-from-zero step policy (only with scale to zero)."""
        if self.scale_from_zero is None:
            raise ValueError("this policy has no step scaling policy: scale_to_zero is off")
        return self._step_request(self.scale_from_zero, resource_id, policy_name)

    def _step_request(
        self, policy: StepScalingPolicy, resource_id: str, policy_name: str
    ) -> dict[str, Any]:
        return {
            "PolicyName": policy_name,
            "ServiceNamespace": NAMESPACE,
            "ResourceId": resource_id,
            "ScalableDimension": self.dimension,
            "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": policy.configuration(),
        }


def _endpoint_of(resource_id: str) -> str | None:
    """The endpoint of a variant's resource id (``endpoint/<name>/variant/<variant>``)."""
    parts = resource_id.split("/")
    return parts[1] if len(parts) == 4 and parts[0] == "endpoint" else None


@dataclass(frozen=True)
class CopyCapacity:
    """What one copy of a model holds at once, which the default policy is derived from.

    ``concurrency``: the requests its engine runs together (TGI's continuous batch, bounded
    by ``max_batch_total_tokens``); ``queue_limit``: running plus queued before the engine
    refuses one with 429 (TGI's ``max_concurrent_requests``), or None when the engine
    queues without bound (vLLM, LMI): then there are no refusals to measure overload by.
    """

    concurrency: int
    queue_limit: int | None

    @property
    def default_target(self) -> float:
        return round(TARGET_UTILIZATION * self.concurrency, 2)


# Targets of the metrics whose default is not derived from the copy (invocations per minute
# per copy or instance; the fraction of provisioned concurrency in use).
DEFAULT_TARGETS: dict[MetricKind, float] = {"invocations": 8.0, "utilization": 0.5}

# The default target keeps a copy this busy: the rest absorbs a burst for the ~2 minutes a
# new copy takes to start. Chosen over every trace and scenario of bench/scaling.py, both
# starts, with the queue below (medians of GPU time over the oracle's, of requests delayed, and
# replays holding more than the oracle's peak + 2 copies for longer than a startup): 0.65 gives
# 1.19, 0.52 % and 2; 0.7 gives 1.09, 0.57 % and 2; 0.75 gives 1.00, 0.69 % and none. Lower
# costs GPU time on every load and, on a smooth one, holds more copies than the oracle's peak
# + 2 sooner (1 / 0.75 = 1.33 copies per copy of demand); higher delays more requests.
TARGET_UTILIZATION = 0.75
# A copy holds at most this many batches (one running, the rest queued) before its engine
# refuses: a request never waits behind more than half a batch, the refusals measure overload,
# and target tracking multiplies capacity by at most QUEUE_BATCHES / TARGET_UTILIZATION (2)
# per scale-out, since its metric (requests per copy, queued included) cannot exceed it.
# 1.25, 1.5 and 2 compared: 2 let target tracking overshoot a step 1 -> 3 -> 9 for 5 needed.
QUEUE_BATCHES = 1.5
# TGI's own default for max_concurrent_requests: the most a copy is ever given.
ENGINE_QUEUE_MAX = 128
# A typical request is taken to use this fraction of the model's context window (prompt plus
# answer) when estimating how many a copy runs at once from its token budget.
TYPICAL_REQUEST_FRACTION = 0.25


def copy_capacity(
    max_batch_total_tokens: int | None, max_total_tokens: int | None, *, refuses: bool = True
) -> CopyCapacity:
    """A copy's capacity from its engine's token budget (the sizing plan's tokens)."""
    if not max_batch_total_tokens or not max_total_tokens:
        return BENCHMARK_COPY if refuses else replace(BENCHMARK_COPY, queue_limit=None)
    typical = max(1, round(max_total_tokens * TYPICAL_REQUEST_FRACTION))
    concurrency = max(1, min(ENGINE_QUEUE_MAX, max_batch_total_tokens // typical))
    queue = min(ENGINE_QUEUE_MAX, math.ceil(QUEUE_BATCHES * concurrency)) if refuses else None
    return CopyCapacity(concurrency, queue)


# The benchmark's fixed world (llmhost_local.replay.simulator.CapacityModel): 16 requests at once.
BENCHMARK_COPY = CopyCapacity(concurrency=16, queue_limit=math.ceil(16 * QUEUE_BATCHES))

# Overload: when engines refuse requests (their queues are full), the demand ratio r (a
# minute's requests over the requests the copies in service accepted) measures demand in units
# of the capacity in service. llmhost's scaling hook then asks for the copies that demand needs
# at the target utilization, ceil(in service x r / utilization), counting the copies already
# starting: it asks only for what is missing, so a queue that grew while copies start is never
# read as demand for yet more copies.
OVERLOAD_THRESHOLD = 1.05


@dataclass(frozen=True)
class OverloadAlarm:
    """llmhost's overload alarm (no action: its state change reaches the scaling hook)."""

    alarm: AlarmSpec
    utilization: float

    def wanted(self, in_service: int, ratio: float) -> int:
        """Copies (or instances) that serve a demand ``ratio`` times what ``in_service``
        accepted, at the target utilization."""
        if in_service <= 0 or ratio <= 0:
            return 0
        return math.ceil(in_service * ratio / self.utilization - 1e-9)


def overload_alarm(utilization: float = TARGET_UTILIZATION) -> OverloadAlarm:
    """The demand ratio over a minute: ``Invocation4XXErrors`` counts the 429s of a full
    engine queue (llmhost checks every other client error before invoking)."""
    return OverloadAlarm(
        alarm=AlarmSpec(
            metric_name="DemandRatio",
            statistic="Maximum",
            period_s=STANDARD_PERIOD_S,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            threshold=OVERLOAD_THRESHOLD,
            comparison="GreaterThanOrEqualToThreshold",
            kind="demand_ratio",
            treat_missing_data="notBreaching",
            # Requests over requests accepted; all refused counts as the requests themselves.
            expression="IF(refused >= requests, requests, requests / (requests - refused))",
            inputs=(
                ("requests", "Invocations", "Sum"),
                ("refused", "Invocation4XXErrors", "Sum"),
            ),
        ),
        utilization=utilization,
    )


# Scale-in: llmhost's hook releases copies only down to what the busiest minute of the last
# window needed at the target, so periodic bursts shorter than the window keep their copies
# (target tracking's own scale-in acts on the window's average and empties them between bursts).
UNDERLOAD_WINDOW_MINUTES = 15


@dataclass(frozen=True)
class UnderloadAlarm:
    """llmhost's scale-in alarm (no action: its state change reaches the scaling hook):
    every minute of the window below the scale-in threshold, per minute the peak of the
    concurrency metric."""

    alarm: AlarmSpec
    target: float

    def wanted(self, in_service: int, peak: float) -> int:
        """Copies that hold the window's peak per copy, measured on ``in_service``, at the
        target (at least one: zero is the idle alarm's decision)."""
        if in_service <= 0:
            return 0
        return max(1, math.ceil(in_service * peak / self.target - 1e-9))


def underload_alarm(metric: MetricInfo, target: float) -> UnderloadAlarm:
    minutes = UNDERLOAD_WINDOW_MINUTES
    return UnderloadAlarm(
        alarm=AlarmSpec(
            metric_name=metric.cloudwatch_name,
            statistic="Maximum",
            period_s=STANDARD_PERIOD_S,
            evaluation_periods=minutes,
            datapoints_to_alarm=minutes,
            threshold=round(target * SCALE_IN_THRESHOLD_FACTOR, 4),
            comparison="LessThanThreshold",
            kind="concurrency_peak",
            # SageMaker may publish nothing for a minute without a request in flight: that
            # minute needed no copy, so a deployment whose traffic stopped still scales in.
            treat_missing_data="breaching",
        ),
        target=target,
    )


def policy_from_spec(scaling: Scaling, copy: CopyCapacity = BENCHMARK_COPY) -> ScalingPolicy:
    """The ScalingPolicy a deployment's ``Scaling`` block deploys as.

    The metric decides the scalable dimension: ``*-per-copy`` scales an inference component's
    copies, ``*-per-instance`` a variant's instances, ``provisioned-concurrency-utilization`` a
    serverless variant's provisioned concurrency. Variants cannot go below one instance (nor
    provisioned concurrency below one), so for them ``scale_to_zero`` means sleeping (the
    idle alarm) rather than MinCapacity 0.
    The spec is already validated (min <= max, min 0 only with scale_to_zero).
    """
    metric = METRICS[scaling.target_metric]
    target = scaling.target_value
    if target is None:
        target = (
            copy.default_target if metric.kind == "concurrency" else DEFAULT_TARGETS[metric.kind]
        )
    high, low = tracking_alarms(metric, target)
    # On the concurrency metrics llmhost's hook scales in on the window's peak instead.
    underload = underload_alarm(metric, target) if metric.kind == "concurrency" else None
    tracking = TargetTrackingPolicy(
        metric=metric,
        target_value=target,
        scale_in_cooldown_s=scaling.scale_in_cooldown_s,
        scale_out_cooldown_s=scaling.scale_out_cooldown_s,
        high_alarm=high,
        low_alarm=low,
        disable_scale_in=underload is not None,
    )
    per_copy = metric.dimension == COPY_DIMENSION
    min_capacity = scaling.min_capacity if per_copy else max(1, scaling.min_capacity)
    wake: StepScalingPolicy | None = None
    idle: AlarmSpec | None = None
    if scaling.scale_to_zero:
        idle = AlarmSpec(
            metric_name="Invocations",
            statistic="Sum",
            period_s=STANDARD_PERIOD_S,
            evaluation_periods=scaling.idle_minutes,
            datapoints_to_alarm=scaling.idle_minutes,
            threshold=0,
            comparison="LessThanOrEqualToThreshold",
            kind="invocation_count",
            # No traffic publishes no datapoints; that silence is exactly what "idle" means.
            treat_missing_data="breaching",
        )
        if per_copy:
            min_capacity = 0
            wake = StepScalingPolicy(
                adjustment_type="ChangeInCapacity",
                steps=(StepAdjustment(lower=0, upper=None, adjustment=1),),
                cooldown_s=WAKE_COOLDOWN_S,
                metric_aggregation="Maximum",
                alarm=AlarmSpec(
                    metric_name="NoCapacityInvocationFailures",
                    statistic="Sum",
                    period_s=STANDARD_PERIOD_S,
                    evaluation_periods=1,
                    datapoints_to_alarm=1,
                    # One refused request is enough to start waking.
                    threshold=0,
                    comparison="GreaterThanThreshold",
                    kind="no_capacity_failures",
                    treat_missing_data="notBreaching",
                ),
            )
    overload = None
    if metric.kind == "concurrency" and copy.queue_limit is not None:
        overload = overload_alarm(min(1.0, target / copy.concurrency))
    return ScalingPolicy(
        dimension=metric.dimension,
        min_capacity=min_capacity,
        max_capacity=max(min_capacity, scaling.max_capacity),
        target_tracking=tracking,
        scale_from_zero=wake,
        idle_alarm=idle,
        overload=overload,
        underload=underload,
    )


# --------------------------------------- the state of a scalable target, and the hook's decisions


@dataclass(frozen=True)
class ScalingState:
    """What Application Auto Scaling remembers between alarm invocations (times in seconds).

    ``desired`` includes copies still starting. During a scale-out cooldown, further scale-out
    is computed from the capacity before the activity that started it (``scale_out_base``), so
    copies that are still starting are not counted twice.
    """

    desired: int
    scale_out_until: float = -math.inf
    scale_out_base: int = 0
    scale_in_until: float = -math.inf
    step_until: float = -math.inf
    step_base: int = 0
    woken_at: float = -math.inf  # last time a wake (hook or step policy) left zero
    activities: tuple[Activity, ...] = field(default=(), repr=False)

    def changed(self, now: float, desired: int, cause: Any, **changes: Any) -> ScalingState:
        """This state after an activity at ``now`` set desired capacity to ``desired``:
        the activity (``cause``: the policy or hook behind it) is recorded, ``changes`` set."""
        activity = Activity(now, self.desired, desired, cause)
        return replace(self, desired=desired, activities=(*self.activities, activity), **changes)


@dataclass(frozen=True)
class Activity:
    """One scaling activity: when, from what to what, and which policy or hook caused it."""

    at_s: float
    before: int
    after: int
    cause: Literal[
        "target-tracking-out",
        "target-tracking-in",
        "step",
        "overload",
        "scale-in",
        "scheduled",
        "idle",
        "wake",
    ]


# After the overload hook raised capacity it holds MaxCapacity until those copies serve and
# this long has passed since capacity last changed: a minute of the concurrency metric measured
# on the new copies (target tracking's datapoints from before they served would ask again).
HOLD_SETTLE_S = 60.0


def overload(
    policy: ScalingPolicy, state: ScalingState, now: float, ratio: float, in_service: int
) -> ScalingState:
    """The overload alarm is in ALARM with demand ``ratio`` measured on ``in_service`` copies:
    llmhost's hook raises desired capacity to what that demand needs, if it is more than the
    capacity already asked for (copies starting included), and never lowers it."""
    if policy.overload is None:
        return state
    wanted = policy.clamp(policy.overload.wanted(in_service, ratio))
    if wanted <= state.desired:
        return state
    return state.changed(now, wanted, "overload")


def underload(
    policy: ScalingPolicy, state: ScalingState, now: float, peak: float, in_service: int
) -> ScalingState:
    """The underload alarm is in ALARM: every minute of the window the concurrency per copy
    stayed below the threshold, at most ``peak``, measured on ``in_service`` copies. llmhost's
    hook lowers desired capacity to what that peak needs, never below min_capacity, not while
    copies are starting, and not inside the scale-out cooldown (a scale-out still settling)."""
    if policy.underload is None or state.desired != in_service or in_service == 0:
        return state
    if now < state.scale_out_until or now < state.scale_in_until:
        return state
    wanted = policy.clamp(policy.underload.wanted(in_service, peak))
    if wanted >= state.desired:
        return state
    cooldown = policy.target_tracking.scale_in_cooldown_s
    return state.changed(now, wanted, "scale-in", scale_in_until=now + cooldown)


# ------------------------------------------------------------------ asynchronous endpoints

# Queued requests (those being processed included) per instance, from SageMaker's async
# metrics, which carry the EndpointName dimension only.
ASYNC_BACKLOG = MetricInfo(
    "",
    "ApproximateBacklogSizePerInstance",
    INSTANCE_DIMENSION,
    STANDARD_PERIOD_S,
    "Average",
    "backlog",
)
# AWS's example: the step policy's cooldown and alarm (2 of 2 one-minute datapoints >= 1).
ASYNC_WAKE_COOLDOWN_S = 300
ASYNC_WAKE_DATAPOINTS = 2
ASYNC_MAX_CONCURRENT_INVOCATIONS = 1000  # ClientConfig.MaxConcurrentInvocationsPerInstance


def tracking_alarms(metric: MetricInfo, target: float) -> tuple[AlarmSpec, AlarmSpec]:
    """The high and low alarms Application Auto Scaling manages for target tracking on
    ``metric`` at ``target``: out after SCALE_OUT_DATAPOINTS periods above it, in after
    SCALE_IN_WINDOW_S below SCALE_IN_THRESHOLD_FACTOR of it."""
    high = AlarmSpec(
        metric_name=metric.cloudwatch_name,
        statistic=metric.statistic,
        period_s=metric.period_s,
        evaluation_periods=SCALE_OUT_DATAPOINTS,
        datapoints_to_alarm=SCALE_OUT_DATAPOINTS,
        threshold=target,
        comparison="GreaterThanThreshold",
        kind=metric.kind,
        managed=True,
    )
    low_datapoints = SCALE_IN_WINDOW_S // metric.period_s
    low = replace(
        high,
        evaluation_periods=low_datapoints,
        datapoints_to_alarm=low_datapoints,
        threshold=target * SCALE_IN_THRESHOLD_FACTOR,
        comparison="LessThanThreshold",
    )
    return high, low


def async_policy(scaling: Scaling, concurrency: int) -> ScalingPolicy:
    """The ScalingPolicy of an asynchronous endpoint's variant (instances).

    ``concurrency``: the requests SageMaker hands one instance at once
    (MaxConcurrentInvocationsPerInstance). The default target keeps that many queued per
    instance: a backlog above what the instances run together asks for more of them. With
    ``min_capacity`` 0 target tracking may scale in to zero on an empty queue, and the step
    policy on ``HasBacklogWithoutCapacity`` brings the first instance back.
    The spec is already validated (min <= max; no other metric for async).
    """
    target = scaling.target_value
    if target is None:
        target = float(max(1, min(ASYNC_MAX_CONCURRENT_INVOCATIONS, concurrency)))
    high, low = tracking_alarms(ASYNC_BACKLOG, target)
    tracking = TargetTrackingPolicy(
        metric=ASYNC_BACKLOG,
        target_value=target,
        scale_in_cooldown_s=scaling.scale_in_cooldown_s,
        scale_out_cooldown_s=scaling.scale_out_cooldown_s,
        high_alarm=high,
        low_alarm=low,
    )
    wake = None
    if scaling.min_capacity == 0:
        wake = StepScalingPolicy(
            adjustment_type="ChangeInCapacity",
            steps=(StepAdjustment(lower=0, upper=None, adjustment=1),),
            cooldown_s=ASYNC_WAKE_COOLDOWN_S,
            metric_aggregation="Average",
            alarm=AlarmSpec(
                metric_name="HasBacklogWithoutCapacity",
                statistic="Average",
                period_s=STANDARD_PERIOD_S,
                evaluation_periods=ASYNC_WAKE_DATAPOINTS,
                datapoints_to_alarm=ASYNC_WAKE_DATAPOINTS,
                threshold=1,
                comparison="GreaterThanOrEqualToThreshold",
                kind="backlog_without_capacity",
                # SageMaker publishes the metric while the endpoint exists; a gap is unknown.
                treat_missing_data="missing",
            ),
        )
    return ScalingPolicy(
        dimension=INSTANCE_DIMENSION,
        min_capacity=scaling.min_capacity,
        max_capacity=max(scaling.min_capacity, scaling.max_capacity),
        target_tracking=tracking,
        scale_from_zero=wake,
    )
