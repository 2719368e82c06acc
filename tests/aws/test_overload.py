"""The overload design, deployed: a copy's capacity from the sizing plan sets the default
target and TGI's queue limit, the overload alarm is put (TGI) or removed (engines that queue
without bound) and deleted with the deployment (stand-in SageMaker and Application Auto
Scaling, moto CloudWatch)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_lifecycle import Harness

from llmhost import aws
from llmhost.scaling.policy import TARGET_UTILIZATION

# zephyr on ml.g6.xlarge: 43,008 batch tokens / 2,048 per typical request = 21 at once
ZEPHYR_TARGET = round(TARGET_UTILIZATION * 21, 2)

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


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(ZEPHYR)
    for key, value in changes.items():
        spec[key] = {**spec.get(key, {}), **value}
    return spec


def target_value(name: str) -> float:
    policies = aws.client("application-autoscaling").describe_scaling_policies(
        ServiceNamespace="sagemaker", ResourceId=f"inference-component/{name}"
    )["ScalingPolicies"]
    (policy,) = [p for p in policies if p["PolicyName"] == f"llmhost-{name}-target"]
    return float(policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"])


def alarms(name: str) -> dict[str, dict[str, Any]]:
    found = aws.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"llmhost-{name}-")
    return {a["AlarmName"]: a for a in found["MetricAlarms"]}


def test_the_deployed_target_follows_the_plans_copy(harness: Harness) -> None:
    # Given zephyr on ml.g6.xlarge: 43,008 batch tokens / 2,048 per typical request = 21
    harness.create(ZEPHYR)
    assert harness.settle("zephyr").status == "IN_SERVICE"
    # Then target tracking keeps the target utilization of 21 requests per copy (0.75: 15.75),
    # not of the benchmark's 16
    assert target_value("zephyr") == ZEPHYR_TARGET
    # And the component's TGI refuses past two batches, the queue the policy assumes
    record = harness.registry.get("zephyr")
    model = harness.standin.describe("model", record.resources.model)
    assert model["PrimaryContainer"]["Environment"]["MAX_CONCURRENT_REQUESTS"] == "32"


def test_an_explicit_target_value_wins(harness: Harness) -> None:
    harness.create(spec_with(scaling={"target_value": 5}))
    assert harness.settle("zephyr").status == "IN_SERVICE"
    assert target_value("zephyr") == 5.0


def test_tgi_gets_the_overload_alarm_with_its_tags_and_no_action(harness: Harness) -> None:
    harness.create(ZEPHYR)
    assert harness.settle("zephyr").status == "IN_SERVICE"
    alarm = alarms("zephyr")["llmhost-zephyr-overload"]
    # A metric-math alarm on the demand ratio: requests over requests the engines accepted
    queries = {m["Id"]: m for m in alarm["Metrics"]}
    assert queries["requests"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
    assert queries["refused"]["MetricStat"]["Metric"]["MetricName"] == "Invocation4XXErrors"
    assert queries["refused"]["MetricStat"]["Metric"]["Dimensions"] == [
        {"Name": "InferenceComponentName", "Value": "zephyr"}
    ]
    assert queries["demand"]["ReturnData"] is True
    assert (alarm["Threshold"], alarm["EvaluationPeriods"], alarm["AlarmActions"]) == (1.05, 1, [])
    tags = aws.client("cloudwatch").list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
    assert {"Key": "llmhost:deployment", "Value": "zephyr"} in tags


def test_an_engine_that_queues_without_bound_gets_none_and_a_switch_removes_it(
    harness: Harness,
) -> None:
    # Given a TGI deployment with its overload alarm
    harness.create(ZEPHYR)
    assert harness.settle("zephyr").status == "IN_SERVICE"
    assert "llmhost-zephyr-overload" in alarms("zephyr")
    # When it moves to vLLM, which never refuses (so no refusal ever measures overload)
    harness.patch("zephyr", {"engine": {"name": "vllm"}})
    record = harness.settle("zephyr")
    # Then the alarm is gone, and the target is still the copy's
    assert record.status == "IN_SERVICE"
    assert "llmhost-zephyr-overload" not in alarms("zephyr")
    assert target_value("zephyr") == ZEPHYR_TARGET


def test_a_vllm_deployment_never_gets_the_overload_alarm(harness: Harness) -> None:
    harness.create(spec_with(engine={"name": "vllm"}))
    assert harness.settle("zephyr").status == "IN_SERVICE"
    # (the underload alarm needs no refusals: every engine gets it)
    assert set(alarms("zephyr")) == {"llmhost-zephyr-underload"}


@pytest.mark.parametrize("kind", ["shared", "dedicated"])
def test_delete_leaves_no_llmhost_alarm_behind(harness: Harness, kind: str) -> None:
    spec = copy.deepcopy(ZEPHYR)
    if kind == "dedicated":
        spec["hosting"] = {"kind": "dedicated", "instance_type": "ml.g6.xlarge"}
        spec["scaling"]["target_metric"] = "concurrent-requests-per-instance"
    harness.create(spec)
    assert harness.settle("zephyr").status == "IN_SERVICE"
    assert "llmhost-zephyr-overload" in alarms("zephyr")
    harness.set_desired("zephyr", "deleted")
    assert harness.settle("zephyr").status == "DELETED"
    assert (
        aws.client("cloudwatch").describe_alarms(AlarmNamePrefix="llmhost-")["MetricAlarms"] == []
    )
