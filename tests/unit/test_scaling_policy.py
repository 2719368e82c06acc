"""Scaling policy: what a spec's Scaling block deploys as, and what Application Auto Scaling
decides with it (target tracking formula, cooldowns, bounds, step policy, alarms: the replay's
``llmhost_local.replay.autoscaling``)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ParamValidationError
from botocore.validate import validate_parameters

from llmhost.scaling import policy as aas
from llmhost.scaling.policy import ScalingState, policy_from_spec
from llmhost.specs import Scaling
from llmhost_local.replay import autoscaling

COMPONENT = "inference-component/llama3-8b-ic"
HIGH_RES_PER_COPY = "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"


def assert_valid(service: str, operation: str, params: dict[str, Any]) -> None:
    """Fail as AWS would: validate a request body against botocore's service model."""
    model = botocore.session.get_session().get_service_model(service)
    try:
        validate_parameters(params, model.operation_model(operation).input_shape)
    except ParamValidationError as error:  # pragma: no cover - the assertion message
        pytest.fail(f"{operation} would be rejected: {error}")


# ------------------------------------------------------------------------- policy_from_spec


def test_default_spec_tracks_high_resolution_concurrency_per_copy() -> None:
    # Given the spec's default Scaling block, whatever its tuned values are
    scaling = Scaling()
    # When it becomes a policy
    policy = policy_from_spec(scaling)
    # Then it scales an inference component's copies on the 10 s concurrency metric,
    # with the spec's bounds, target and cooldowns, and no scale-to-zero pieces
    tracking = policy.target_tracking
    assert policy.dimension == "sagemaker:inference-component:DesiredCopyCount"
    assert (policy.min_capacity, policy.max_capacity) == (
        scaling.min_capacity,
        scaling.max_capacity,
    )
    assert scaling.target_value is None  # derived from the copy's capacity
    assert tracking.configuration() == {
        # 75 % of the 16 requests a copy of the benchmark's world runs at once
        "TargetValue": 12.0,
        "PredefinedMetricSpecification": {"PredefinedMetricType": HIGH_RES_PER_COPY},
        "ScaleInCooldown": scaling.scale_in_cooldown_s,
        "ScaleOutCooldown": scaling.scale_out_cooldown_s,
        # llmhost's hook scales in on the window's peak (the underload alarm)
        "DisableScaleIn": True,
    }
    assert policy.scale_from_zero is None and policy.idle_alarm is None
    assert policy.underload is not None and policy.overload is not None


@pytest.mark.parametrize(
    ("batch_tokens", "total_tokens", "concurrency", "queue"),
    [
        (43_008, 8_192, 21, 32),  # zephyr-7b on one L4: 43,008 / (8,192 / 4); 1.5 x 21
        (16_000, 4_096, 15, 23),
        (4_096, 4_096, 4, 6),
        (2_000_000, 8_192, 128, 128),  # never more than TGI's own default of 128
        (100, 4_096, 1, 2),  # a budget smaller than one typical request still runs one
    ],
)
def test_a_copys_capacity_comes_from_its_token_budget(
    batch_tokens: int, total_tokens: int, concurrency: int, queue: int
) -> None:
    copy = aas.copy_capacity(batch_tokens, total_tokens)
    assert (copy.concurrency, copy.queue_limit) == (concurrency, queue)
    # And the default target follows the copy, not a constant
    policy = policy_from_spec(Scaling(max_capacity=4), copy)
    assert policy.target_tracking.target_value == pytest.approx(0.75 * concurrency, abs=0.01)
    # An explicit target wins
    assert policy_from_spec(Scaling(target_value=5), copy).target_tracking.target_value == 5


def test_an_engine_that_queues_without_bound_gets_no_overload_alarm() -> None:
    unbounded = aas.copy_capacity(43_008, 8_192, refuses=False)
    assert unbounded.queue_limit is None
    assert policy_from_spec(Scaling(max_capacity=4), unbounded).overload is None
    # The invocation metrics have no copy-derived default and no overload alarm either
    per_minute = policy_from_spec(Scaling(target_metric="invocations-per-copy"))
    assert per_minute.target_tracking.target_value == 8.0 and per_minute.overload is None


def test_overload_alarm_is_metric_math_cloudwatch_accepts() -> None:
    policy = policy_from_spec(Scaling(max_capacity=8))
    assert policy.overload is not None
    body = policy.overload.alarm.put_metric_alarm_request(
        "llmhost-chat-overload", {"InferenceComponentName": "chat"}, []
    )
    assert_valid("cloudwatch", "PutMetricAlarm", body)
    assert "MetricName" not in body and "Statistic" not in body
    ids = {q["Id"]: q for q in body["Metrics"]}
    assert ids["requests"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
    assert ids["refused"]["MetricStat"]["Metric"]["MetricName"] == "Invocation4XXErrors"
    assert [q["Id"] for q in body["Metrics"] if q["ReturnData"]] == ["demand"]
    assert body["Threshold"] == aas.OVERLOAD_THRESHOLD


@pytest.mark.parametrize(
    ("in_service", "ratio", "desired", "after"),
    [
        (1, 4.0, 1, 6),  # 4x what one copy accepts, at 75 %: ceil(1 x 4 / 0.75)
        (1, 4.0, 6, 6),  # already asked for (copies starting): nothing more
        (1, 4.0, 9, 9),  # never lowers
        (3, 1.1, 3, 5),  # ceil(3 x 1.1 / 0.75)
        (2, 40.0, 2, 8),  # clamped at max_capacity
    ],
)
def test_overload_asks_for_what_demand_needs_counting_copies_starting(
    in_service: int, ratio: float, desired: int, after: int
) -> None:
    policy = policy_from_spec(Scaling(max_capacity=8))
    state = aas.overload(policy, ScalingState(desired=desired), 60.0, ratio, in_service)
    assert state.desired == after
    # Asked again with the same measurement, it asks for nothing more (no compounding)
    again = aas.overload(policy, state, 70.0, ratio, in_service)
    assert again.desired == after


def test_target_tracking_alarms_scale_out_after_three_datapoints_in_after_fifteen_minutes() -> None:
    # Given a high-resolution and a one-minute metric
    fast = policy_from_spec(Scaling(target_metric="concurrent-requests-per-copy", target_value=8))
    slow = policy_from_spec(Scaling(target_metric="invocations-per-copy", target_value=300))
    # Then AWS's managed alarms: 3 datapoints above the target to scale out, 15 minutes
    # below 90% of it to scale in, at the metric's own period
    high, low = fast.target_tracking.high_alarm, fast.target_tracking.low_alarm
    assert (high.period_s, high.evaluation_periods, high.threshold) == (10, 3, 8)
    assert high.comparison == "GreaterThanThreshold" and high.managed
    assert (low.period_s, low.evaluation_periods, low.comparison) == (10, 90, "LessThanThreshold")
    assert low.threshold == pytest.approx(7.2)
    high, low = slow.target_tracking.high_alarm, slow.target_tracking.low_alarm
    assert (high.period_s, high.evaluation_periods) == (60, 3)
    assert (low.period_s, low.evaluation_periods, low.threshold) == (60, 15, 270)


def test_per_instance_metrics_scale_variant_instances_and_never_below_one() -> None:
    # Given a dedicated endpoint that should sleep when idle
    scaling = Scaling(
        target_metric="invocations-per-instance",
        min_capacity=0,
        max_capacity=3,
        scale_to_zero=True,
        idle_minutes=20,
    )
    # When it becomes a policy
    policy = policy_from_spec(scaling)
    # Then the variant keeps one instance (variants cannot go to zero); sleeping is the idle
    # alarm's job, and there is no NoCapacityInvocationFailures step policy
    assert policy.dimension == "sagemaker:variant:DesiredInstanceCount"
    assert policy.target_tracking.metric.predefined_type == "SageMakerVariantInvocationsPerInstance"
    assert policy.min_capacity == 1
    assert policy.scale_from_zero is None
    assert policy.idle_alarm is not None and policy.idle_alarm.evaluation_periods == 20


def test_scale_to_zero_component_gets_all_four_pieces() -> None:
    # Given a shared deployment that may scale to zero
    scaling = Scaling(min_capacity=0, max_capacity=4, scale_to_zero=True, idle_minutes=10)
    # When it becomes a policy
    policy = policy_from_spec(scaling)
    # Then: MinCapacity 0, target tracking, a +1 step policy whose cooldown outlasts a wake,
    # and its alarm firing on a single refused request
    assert policy.min_capacity == 0 and policy.scale_to_zero
    wake = policy.scale_from_zero
    assert wake is not None
    assert wake.configuration() == {
        "AdjustmentType": "ChangeInCapacity",
        "StepAdjustments": [{"ScalingAdjustment": 1, "MetricIntervalLowerBound": 0}],
        "Cooldown": aas.WAKE_COOLDOWN_S,
        "MetricAggregationType": "Maximum",
    }
    assert aas.WAKE_COOLDOWN_S > 480
    assert wake.alarm.metric_name == "NoCapacityInvocationFailures"
    assert wake.alarm.in_alarm([1.0]) and not wake.alarm.in_alarm([None])
    # And the idle alarm treats minutes without a datapoint as idle
    idle = policy.idle_alarm
    assert idle is not None and idle.metric_name == "Invocations"
    assert idle.in_alarm([None] * 10) and not idle.in_alarm([None] * 9 + [3.0])


def test_deploy_requests_are_what_aws_accepts() -> None:
    # Given a scale-to-zero policy
    policy = policy_from_spec(Scaling(min_capacity=0, max_capacity=2, scale_to_zero=True))
    assert policy.scale_from_zero is not None and policy.idle_alarm is not None
    # When its AWS request bodies are built
    target = policy.register_scalable_target_request(COMPONENT)
    tracking = policy.target_tracking_request(COMPONENT, "llmhost-tt")
    step = policy.step_scaling_request(COMPONENT, "llmhost-wake")
    dims = {"InferenceComponentName": "llama3-8b-ic"}
    wake_alarm = policy.scale_from_zero.alarm.put_metric_alarm_request("wake", dims, ["arn:x"])
    idle_alarm = policy.idle_alarm.put_metric_alarm_request("idle", dims, ["arn:y"])
    # Then botocore's service models accept every one of them
    assert_valid("application-autoscaling", "RegisterScalableTarget", target)
    assert_valid("application-autoscaling", "PutScalingPolicy", tracking)
    assert_valid("application-autoscaling", "PutScalingPolicy", step)
    assert_valid("cloudwatch", "PutMetricAlarm", wake_alarm)
    assert_valid("cloudwatch", "PutMetricAlarm", idle_alarm)
    assert target["MinCapacity"] == 0


def test_managed_alarms_are_never_put_and_step_needs_scale_to_zero() -> None:
    # Given a policy without scale to zero
    policy = policy_from_spec(Scaling())
    # Then its target-tracking alarms belong to AWS, and it has no step policy to put
    with pytest.raises(ValueError, match="managed by its target tracking policy"):
        policy.target_tracking.high_alarm.put_metric_alarm_request("x", {}, [])
    with pytest.raises(ValueError, match="scale_to_zero is off"):
        policy.step_scaling_request(COMPONENT, "wake")


# -------------------------------------------------------------------------------- alarms


def test_alarm_needs_m_of_n_breaching_datapoints() -> None:
    # Given an alarm that needs 2 of the last 3 datapoints above 5
    alarm = aas.AlarmSpec("M", "Average", 10, 3, 2, 5.0, "GreaterThanThreshold", "concurrency")
    # Then fewer than N datapoints never alarm, and missing ones do not breach
    assert not alarm.in_alarm([9.0, 9.0])
    assert alarm.in_alarm([1.0, 9.0, 6.0])
    assert not alarm.in_alarm([9.0, 1.0, None])
    assert not alarm.in_alarm([9.0, 9.0, 1.0, 1.0])  # only the last three count


def test_awss_example_wake_alarm_ignores_a_single_refused_request() -> None:
    # Given AWS's documented alarm: Sum of NoCapacityInvocationFailures GreaterThanThreshold 1
    alarm = aas.AlarmSpec(
        "NoCapacityInvocationFailures", "Sum", 60, 1, 1, 1, "GreaterThanThreshold", "concurrency"
    )
    # Then one refused request in a minute does not wake the model; two do
    assert not alarm.in_alarm([1.0])
    assert alarm.in_alarm([2.0])


def test_aggregation_over_the_evaluated_datapoints() -> None:
    alarm = aas.AlarmSpec("M", "Average", 10, 3, 3, 5.0, "GreaterThanThreshold", "concurrency")
    points: list[float | None] = [100.0, 6.0, None, 12.0]
    assert alarm.aggregate(points, "Average") == 9.0
    assert alarm.aggregate(points, "Maximum") == 12.0
    assert alarm.aggregate([None, None, None], "Average") == 0.0


# ------------------------------------------------------------------------ AAS decisions


def policy_for(**fields: Any) -> aas.ScalingPolicy:
    base: dict[str, Any] = {
        "min_capacity": 1,
        "max_capacity": 10,
        "target_value": 10,
        "scale_out_cooldown_s": 180,
        "scale_in_cooldown_s": 300,
    }
    return policy_from_spec(Scaling(**{**base, **fields}))


def test_target_tracking_formula_rounds_up_but_ignores_float_noise() -> None:
    assert autoscaling.target_tracking_capacity(2, 15, 10) == 3
    assert autoscaling.target_tracking_capacity(3, 4.0000000001, 4) == 3
    assert autoscaling.target_tracking_capacity(3, 0, 4) == 0
    assert autoscaling.target_tracking_capacity(0, 50, 4) == 0


def test_scale_out_is_proportional_and_cooldown_prevents_double_counting() -> None:
    # Given 2 copies at 20 concurrent requests each, target 10
    policy = policy_for()
    state = ScalingState(desired=2)
    # When the high alarm fires
    state = autoscaling.scale_out(policy, state, now=0, metric=20)
    # Then capacity doubles at once and a cooldown starts
    assert state.desired == 4 and state.scale_out_until == 180
    # When it fires again before the new copies serve (metric unchanged)
    again = autoscaling.scale_out(policy, state, now=60, metric=20)
    # Then nothing is added: the copies still starting are counted
    assert again.desired == 4
    # But a rising load within the cooldown still scales out, from the pre-activity base
    assert autoscaling.scale_out(policy, state, now=60, metric=30).desired == 6


def test_scale_out_after_a_cooldown_shorter_than_startup_overshoots() -> None:
    # Given a cooldown that ends before the added copies serve (the metric still reads high)
    policy = policy_for(scale_out_cooldown_s=60)
    state = autoscaling.scale_out(policy, ScalingState(desired=2), now=0, metric=20)
    # When the alarm fires again after the cooldown but before the copies are ready
    state = autoscaling.scale_out(policy, state, now=90, metric=20)
    # Then AWS compounds: 4 x 20 / 10 = 8 copies for a load that needs 4. This is why the
    # scale-out cooldown must outlast the 120 s it takes to add a copy.
    assert state.desired == 8


def test_scale_out_is_clamped_to_max_capacity() -> None:
    policy = policy_for(max_capacity=3)
    state = autoscaling.scale_out(policy, ScalingState(desired=2), now=0, metric=100)
    assert state.desired == 3
    assert state.activities[-1] == aas.Activity(0, 2, 3, "target-tracking-out")


def test_scale_in_keeps_the_metric_under_target_respects_min_and_cooldowns() -> None:
    # Given 6 copies at 3 requests each, target 10, and target tracking's own scale-in (on
    # the concurrency metrics llmhost disables it for the underload alarm; the mechanics stay
    # AWS's for the invocation metrics)
    base = policy_for(min_capacity=1)
    policy = replace(base, target_tracking=replace(base.target_tracking, disable_scale_in=False))
    state = ScalingState(desired=6)
    # When the low alarm fires
    state = autoscaling.scale_in(policy, state, now=1000, metric=3)
    # Then capacity falls to what keeps the metric at or under target: ceil(6*3/10) = 2
    assert state.desired == 2 and state.scale_in_until == 1300
    # And a second scale-in waits for the scale-in cooldown
    assert autoscaling.scale_in(policy, state, now=1100, metric=0.5).desired == 2
    # After it, it may reach the minimum but never go below
    assert autoscaling.scale_in(policy, state, now=1400, metric=0).desired == 1


def test_no_scale_in_while_a_scale_out_settles_or_when_disabled() -> None:
    policy = policy_for()
    state = autoscaling.scale_out(policy, ScalingState(desired=2), now=0, metric=20)
    assert autoscaling.scale_in(policy, state, now=100, metric=1).desired == 4
    base = policy_for()
    frozen = replace(base, target_tracking=replace(base.target_tracking, disable_scale_in=True))
    assert autoscaling.scale_in(frozen, ScalingState(desired=5), now=0, metric=1).desired == 5


def test_step_policy_wakes_one_copy_and_cooldown_holds_it_while_it_starts() -> None:
    # Given a scale-to-zero component at zero copies
    policy = policy_for(min_capacity=0, scale_to_zero=True)
    state = ScalingState(desired=0)
    # When the NoCapacityInvocationFailures alarm fires
    state = autoscaling.step(policy, state, now=60, metric=3)
    # Then one copy is asked for
    assert state.desired == 1
    # And failures that keep arriving while it starts do not add more
    assert autoscaling.step(policy, state, now=120, metric=5).desired == 1
    assert autoscaling.step(policy, state, now=60 + aas.WAKE_COOLDOWN_S, metric=5).desired == 2


def test_idle_and_wake_hooks() -> None:
    policy = policy_for(min_capacity=0, scale_to_zero=True)
    asleep = autoscaling.idle(policy, ScalingState(desired=3), now=10)
    assert asleep.desired == 0 and asleep.activities[-1].cause == "idle"
    awake = autoscaling.wake(policy, asleep, now=20)
    assert awake.desired == 1 and awake.activities[-1] == aas.Activity(20, 0, 1, "wake")
    assert autoscaling.wake(policy, awake, now=30) is awake  # already waking: one wake, not two
    # A policy without scale to zero never idles
    assert autoscaling.idle(policy_for(), ScalingState(desired=2), now=0).desired == 2


def test_scaling_state_starts_without_cooldowns() -> None:
    state = ScalingState(desired=1)
    assert state.scale_out_until == -math.inf and state.activities == ()


def test_default_scale_out_cooldown_outlasts_adding_a_copy() -> None:
    # Desired capacity counts copies still starting (120 s) plus detection (~30 s): a shorter
    # cooldown compounds scale-outs, as the trace replays showed (4 -> 8 -> 42 copies).
    assert Scaling().scale_out_cooldown_s > 150


# ------------------------------------------------ serverless provisioned concurrency


def _serverless_spec(**scaling: Any) -> Any:
    from llmhost.specs import parse_spec

    return parse_spec(
        {
            "name": "flan",
            "model": {"kind": "hub", "model_id": "google/flan-t5-small"},
            "engine": {"name": "hf-inference"},
            "hosting": {"kind": "serverless", "max_concurrency": 10, "provisioned_concurrency": 2},
            "scaling": scaling,
        }
    )


def test_serverless_provisioned_concurrency_requests_are_exact() -> None:
    from llmhost.lifecycle.desired import wanted_scaling

    # Given a serverless spec that keeps the default metric and autoscales 1-8
    policy = wanted_scaling(_serverless_spec(min_capacity=1, max_capacity=8))
    assert policy is not None
    resource = "endpoint/flan/variant/AllTraffic"
    register = policy.register_scalable_target_request(resource)
    tracking = policy.target_tracking_request(resource, "llmhost-flan-target")
    # Then the target is the variant's provisioned concurrency, tracked on its utilization
    # at the documented-example 0.5 (the per-copy default has no meaning there)
    assert register == {
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource,
        "ScalableDimension": "sagemaker:variant:DesiredProvisionedConcurrency",
        "MinCapacity": 1,
        "MaxCapacity": 8,
    }
    assert tracking == {
        "PolicyName": "llmhost-flan-target",
        "ServiceNamespace": "sagemaker",
        "ResourceId": resource,
        "ScalableDimension": "sagemaker:variant:DesiredProvisionedConcurrency",
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 0.5,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerVariantProvisionedConcurrencyUtilization"
            },
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 180,
            "DisableScaleIn": False,
        },
    }
    assert_valid("application-autoscaling", "RegisterScalableTarget", register)
    assert_valid("application-autoscaling", "PutScalingPolicy", tracking)
    # And the predefined metric is one Application Auto Scaling knows
    model = botocore.session.get_session().get_service_model("application-autoscaling")
    assert "SageMakerVariantProvisionedConcurrencyUtilization" in model.shape_for("MetricType").enum


def test_serverless_explicit_utilization_target_is_kept() -> None:
    from llmhost.lifecycle.desired import wanted_scaling

    spec = _serverless_spec(
        min_capacity=2,
        max_capacity=6,
        target_metric="provisioned-concurrency-utilization",
        target_value=0.8,
    )
    policy = wanted_scaling(spec)
    assert policy is not None
    assert policy.target_tracking.configuration()["TargetValue"] == 0.8
    assert (policy.min_capacity, policy.max_capacity) == (2, 6)


def test_serverless_without_provisioned_concurrency_or_range_has_no_target() -> None:
    from llmhost.lifecycle.desired import wanted_scaling
    from llmhost.specs import parse_spec

    # Given on-demand serverless (SageMaker scales it) and fixed provisioned concurrency
    on_demand = parse_spec(
        {
            "name": "flan",
            "model": {"kind": "hub", "model_id": "google/flan-t5-small"},
            "engine": {"name": "hf-inference"},
            "hosting": {"kind": "serverless"},
            "scaling": {"min_capacity": 1, "max_capacity": 4},
        }
    )
    fixed = _serverless_spec(min_capacity=2, max_capacity=2)
    # Then neither gets a scalable target
    assert wanted_scaling(on_demand) is None
    assert wanted_scaling(fixed) is None


def test_underload_alarm_watches_each_minutes_peak_over_fifteen_minutes() -> None:
    policy = policy_from_spec(Scaling(max_capacity=8))
    assert policy.underload is not None
    body = policy.underload.alarm.put_metric_alarm_request(
        "llmhost-chat-underload", {"InferenceComponentName": "chat"}, []
    )
    assert_valid("cloudwatch", "PutMetricAlarm", body)
    assert body["MetricName"] == "ConcurrentRequestsPerCopy"
    assert (body["Statistic"], body["Period"]) == ("Maximum", 60)
    assert body["EvaluationPeriods"] == body["DatapointsToAlarm"] == 15
    assert body["Threshold"] == pytest.approx(0.9 * 12)


@pytest.mark.parametrize(
    ("in_service", "desired", "peak", "after"),
    [
        (5, 5, 2.0, 1),  # ceil(5 x 2 / 12): one copy holds the window's peak
        (5, 5, 6.0, 3),  # ceil(30 / 12)
        (5, 5, 10.0, 5),  # the peak needs them all
        (5, 6, 2.0, 6),  # a copy is starting: not now
        (1, 1, 0.5, 1),  # never below one (zero is the idle alarm's business)
    ],
)
def test_underload_scales_in_to_the_windows_peak(
    in_service: int, desired: int, peak: float, after: int
) -> None:
    policy = policy_from_spec(Scaling(max_capacity=8))
    state = aas.underload(policy, ScalingState(desired=desired), 3600.0, peak, in_service)
    assert state.desired == after


def test_underload_waits_out_a_scale_out_and_its_own_cooldown() -> None:
    policy = policy_from_spec(Scaling(max_capacity=8))
    settling = ScalingState(desired=5, scale_out_until=4000.0)
    assert aas.underload(policy, settling, 3600.0, 2.0, 5).desired == 5
    once = aas.underload(policy, ScalingState(desired=5), 3600.0, 6.0, 5)
    assert once.desired == 3
    # 300 s (the scale-in cooldown) later, not before
    assert aas.underload(policy, once, 3700.0, 2.0, 3).desired == 3
    assert aas.underload(policy, once, 3900.0, 2.0, 3).desired == 1


# ------------------------------------------------------------------ asynchronous endpoints


ASYNC_VARIANT = "endpoint/llama-jobs/variant/AllTraffic"


def test_async_endpoint_scales_on_its_backlog_down_to_zero_as_aws_documents() -> None:
    # Given an async deployment that may scale to zero, 4 requests per instance at once
    policy = aas.async_policy(Scaling(min_capacity=0, max_capacity=3), concurrency=4)
    # Then the variant's instances scale between 0 and 3
    target = policy.register_scalable_target_request(ASYNC_VARIANT)
    assert (target["ScalableDimension"], target["MinCapacity"], target["MaxCapacity"]) == (
        "sagemaker:variant:DesiredInstanceCount",
        0,
        3,
    )
    # And target tracking keeps the endpoint's backlog per instance at what an instance runs
    tracking = policy.target_tracking_request(ASYNC_VARIANT, "llmhost-llama-jobs-target")
    config = tracking["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 4.0
    assert config["CustomizedMetricSpecification"] == {
        "MetricName": "ApproximateBacklogSizePerInstance",
        "Namespace": "AWS/SageMaker",
        "Dimensions": [{"Name": "EndpointName", "Value": "llama-jobs"}],
        "Statistic": "Average",
    }
    assert "PredefinedMetricSpecification" not in config
    # And a +1 step policy acts on HasBacklogWithoutCapacity, so a request queued at zero
    # instances brings one up (target tracking alone never leaves zero)
    wake = policy.scale_from_zero
    assert wake is not None
    assert wake.configuration()["StepAdjustments"] == [
        {"ScalingAdjustment": 1, "MetricIntervalLowerBound": 0}
    ]
    alarm = wake.alarm.put_metric_alarm_request(
        "llmhost-llama-jobs-no-capacity", {"EndpointName": "llama-jobs"}, ["arn:policy"]
    )
    assert (alarm["MetricName"], alarm["Threshold"], alarm["ComparisonOperator"]) == (
        "HasBacklogWithoutCapacity",
        1,
        "GreaterThanOrEqualToThreshold",
    )
    assert alarm["AlarmActions"] == ["arn:policy"]
    assert wake.alarm.in_alarm([1.0, 1.0]) and not wake.alarm.in_alarm([0.0, 1.0])
    # And no llmhost hook alarm: AWS's policies do all of it
    assert (policy.idle_alarm, policy.overload, policy.underload) == (None, None, None)
    # And botocore's models accept every body
    assert_valid("application-autoscaling", "RegisterScalableTarget", target)
    assert_valid("application-autoscaling", "PutScalingPolicy", tracking)
    step = policy.step_scaling_request(ASYNC_VARIANT, "llmhost-llama-jobs-wake")
    assert_valid("application-autoscaling", "PutScalingPolicy", step)
    assert_valid("cloudwatch", "PutMetricAlarm", alarm)


def test_async_endpoint_above_zero_has_no_step_policy_and_takes_the_specs_target() -> None:
    policy = aas.async_policy(
        Scaling(min_capacity=1, max_capacity=4, target_value=2.5), concurrency=16
    )
    assert policy.scale_from_zero is None and policy.min_capacity == 1
    assert policy.target_tracking.target_value == 2.5
    with pytest.raises(ValueError, match="scale_to_zero is off"):
        policy.step_scaling_request(ASYNC_VARIANT, "wake")
    # The customized metric is per endpoint: a resource id without one cannot carry it
    with pytest.raises(ValueError, match="per endpoint"):
        policy.target_tracking_request("inference-component/x", "t")
