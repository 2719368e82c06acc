"""The underload alarm, deployed: every deployment scaled on a concurrency metric (TGI or vLLM:
it needs no refusals) gets ``llmhost-<name>-underload`` (each minute's peak of concurrency
per copy or instance, 15 minutes below 0.9 x the target, no action), put and removed with
the scaling and deleted with the deployment (stand-in SageMaker and Application Auto
Scaling, moto CloudWatch: every request checked against botocore's service model)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_lifecycle import Harness

from llmhost import aws
from llmhost.scaling.policy import SCALE_IN_THRESHOLD_FACTOR, TARGET_UTILIZATION

# zephyr on ml.g6.xlarge: 43,008 batch tokens / 2,048 per typical request = 21 at once
ZEPHYR_TARGET = round(TARGET_UTILIZATION * 21, 2)
ALARM = "llmhost-zephyr-underload"

ZEPHYR: dict[str, Any] = {
    "name": "zephyr",
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {
        "kind": "shared",
        "pool": "gpu-pool",
        "instance_type": "ml.g6.xlarge",
        "pool_max_instances": 4,
    },
    "scaling": {"min_capacity": 1, "max_capacity": 4},
}


@pytest.fixture
def harness(standin: Any, clock: Any) -> Harness:
    return Harness(standin, clock)


def dedicated(spec: dict[str, Any] = ZEPHYR) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    spec["hosting"] = {"kind": "dedicated", "instance_type": "ml.g6.xlarge"}
    spec["scaling"]["target_metric"] = "concurrent-requests-per-instance"
    return spec


def alarms(name: str = "zephyr") -> dict[str, dict[str, Any]]:
    found = aws.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"llmhost-{name}-")
    return {a["AlarmName"]: a for a in found["MetricAlarms"]}


def deploy(harness: Harness, spec: dict[str, Any]) -> None:
    harness.create(spec)
    assert harness.settle(spec["name"]).status == "IN_SERVICE"


@pytest.mark.parametrize("engine", ["tgi", "vllm"])
def test_every_engine_gets_the_underload_alarm_with_its_tags_and_no_action(
    harness: Harness, engine: str
) -> None:
    # Given zephyr scaled on concurrent requests per copy, with an engine that refuses past
    # its queue (TGI) or one that queues without bound (vLLM)
    spec = copy.deepcopy(ZEPHYR)
    spec["engine"] = {"name": engine}
    deploy(harness, spec)
    # Then its underload alarm watches each minute's peak of concurrency per copy
    alarm = alarms()[ALARM]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"], alarm["Period"]) == (
        "AWS/SageMaker",
        "ConcurrentRequestsPerCopy",
        "Maximum",
        60,
    )
    assert alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": "zephyr"}]
    # And fires after 15 of 15 minutes below 0.9 x the target
    assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (15, 15)
    assert alarm["ComparisonOperator"] == "LessThanThreshold"
    assert alarm["Threshold"] == pytest.approx(SCALE_IN_THRESHOLD_FACTOR * ZEPHYR_TARGET)
    # a minute without a datapoint had no request in flight: it counts toward scale-in
    assert alarm["TreatMissingData"] == "breaching"
    # And has no action: its state change reaches the scaling hook through EventBridge
    assert alarm["AlarmActions"] == []
    tags = aws.client("cloudwatch").list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
    assert {"Key": "llmhost:deployment", "Value": "zephyr"} in tags
    assert any(t["Key"] == "llmhost:stack" for t in tags)
    # And target tracking no longer scales in: the hook does, on this alarm
    policies = aws.client("application-autoscaling").describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId="inference-component/zephyr"
    )["ScalingPolicies"]
    (tracking,) = [p for p in policies if p["PolicyName"] == "llmhost-zephyr-target"]
    assert tracking["TargetTrackingScalingPolicyConfiguration"]["DisableScaleIn"] is True


def test_a_dedicated_endpoint_watches_concurrency_per_instance(harness: Harness) -> None:
    deploy(harness, dedicated())
    alarm = alarms()[ALARM]
    assert (alarm["MetricName"], alarm["Statistic"]) == ("ConcurrentRequestsPerModel", "Maximum")
    assert sorted(alarm["Dimensions"], key=lambda d: d["Name"]) == [
        {"Name": "EndpointName", "Value": "zephyr"},
        {"Name": "VariantName", "Value": "AllTraffic"},
    ]


def test_an_invocation_metric_gets_none_and_a_switch_to_one_removes_it(harness: Harness) -> None:
    # Given zephyr with its underload alarm
    deploy(harness, ZEPHYR)
    assert ALARM in alarms()
    # When it moves to invocations per copy (target tracking scales in on those itself)
    # (a patch replaces the whole scaling block)
    switched = {**ZEPHYR["scaling"], "target_metric": "invocations-per-copy"}
    harness.patch("zephyr", {"scaling": switched})
    assert harness.settle("zephyr").status == "IN_SERVICE"
    # Then the alarm is gone
    assert ALARM not in alarms()
    # And switching back puts it again
    harness.patch("zephyr", {"scaling": ZEPHYR["scaling"]})
    assert harness.settle("zephyr").status == "IN_SERVICE"
    assert ALARM in alarms()


@pytest.mark.parametrize("kind", ["shared", "dedicated"])
def test_delete_leaves_no_llmhost_alarm_behind(harness: Harness, kind: str) -> None:
    deploy(harness, ZEPHYR if kind == "shared" else dedicated())
    assert ALARM in alarms()
    harness.set_desired("zephyr", "deleted")
    assert harness.settle("zephyr").status == "DELETED"
    cloudwatch = aws.client("cloudwatch")
    assert cloudwatch.describe_alarms(AlarmNamePrefix="llmhost-")["MetricAlarms"] == []


def test_fixed_capacity_removes_the_alarm(harness: Harness) -> None:
    # Given zephyr autoscaled, with its underload alarm
    deploy(harness, ZEPHYR)
    assert ALARM in alarms()
    # When its capacity becomes fixed (min == max: no scaling at all)
    harness.patch("zephyr", {"scaling": {"min_capacity": 2, "max_capacity": 2}})
    assert harness.settle("zephyr").status == "IN_SERVICE"
    # Then no llmhost alarm is left for it
    assert alarms() == {}
