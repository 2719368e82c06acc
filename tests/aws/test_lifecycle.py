"""The whole lifecycle against moto (DynamoDB) and the SageMaker stand-in.

The convergence tests crash the reconciler between any two steps (before and after each
AWS call, as a Lambda timeout or a throttled retry would) and check that retries still
reach the desired state with exactly the resources the spec needs: no leaks, no dupes.
"""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest

from conftest import attach_standins
from llmhost import runtime
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.specs import DeploymentPatch, parse_spec

SPECS: dict[str, dict[str, Any]] = {
    "dedicated": {
        "name": "llama",
        "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
        "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    },
    "shared": {
        "name": "zephyr",
        "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
        "hosting": {"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"},
    },
    "serverless": {
        "name": "flan",
        "model": {"kind": "hub", "model_id": "google/flan-t5-small"},
        "engine": {"name": "hf-inference"},
        "hosting": {"kind": "serverless", "memory_mb": 4096},
    },
    "async": {
        "name": "mistral-jobs",
        "model": {"kind": "hub", "model_id": "mistralai/Mistral-7B-Instruct-v0.2"},
        "hosting": {"kind": "async", "instance_type": "ml.g5.2xlarge"},
        "scaling": {"min_capacity": 0, "max_capacity": 2},
    },
}
PATCHES: dict[str, dict[str, Any]] = {
    "dedicated": {"hosting": {"kind": "dedicated", "instance_type": "ml.g5.4xlarge"}},
    "shared": {
        "hosting": {
            "kind": "shared",
            "pool": "gpu-pool",
            "instance_type": "ml.g5.12xlarge",
            "memory_mb": 16384,
        }
    },
    "serverless": {"hosting": {"kind": "serverless", "memory_mb": 6144}},
    "async": {"hosting": {"kind": "async", "instance_type": "ml.g5.4xlarge"}},
}


class Crash(Exception):
    """Stands for the Lambda dying mid-invocation."""


class Harness:
    def __init__(self, standin: Any, clock: Any) -> None:
        self.standin = standin
        self.clock = clock
        self.registry = runtime.registry()
        self.reconciler = runtime.reconciler()
        self._apply = self.reconciler._applier.apply
        self.calls = 0
        self.crash_at: int | None = None
        self.crash_after = True
        self.reconciler._applier.apply = self._maybe_crash  # type: ignore[method-assign]

    def _maybe_crash(self, *args: Any) -> None:
        self.calls += 1
        if self.calls == self.crash_at and not self.crash_after:
            raise Crash("before the AWS call")
        self._apply(*args)
        if self.calls == self.crash_at:
            raise Crash("after the AWS call, before the record was saved")

    def create(self, spec: dict[str, Any]) -> None:
        self.registry.create(DeploymentRecord(name=spec["name"], spec=parse_spec(spec)))

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        record = self.registry.get(name)
        spec = DeploymentPatch.model_validate(patch).apply_to(record.spec)
        self.registry.save(
            record.model_copy(update={"spec": spec, "generation": record.generation + 1})
        )

    def set_desired(self, name: str, state: str) -> None:
        record = self.registry.get(name)
        self.registry.save(record.model_copy(update={"desired_state": state}))

    def _reconcile(self, name: str) -> None:
        # A crash is what the platform retries: the next event reconciles again.
        with contextlib.suppress(Crash):
            self.reconciler.reconcile(name)

    def settle(self, name: str, rounds: int = 40) -> DeploymentRecord:
        """Reconcile and let SageMaker time pass until nothing changes any more."""
        for _ in range(rounds):
            self._reconcile(name)
            before = self.registry.find(name)
            self.clock.advance(900)
            events = self.standin.tick()
            self._reconcile(name)
            after = self.registry.find(name)
            if (
                not events
                and before == after
                and after is not None
                and after.status in {"IN_SERVICE", "SLEEPING", "DELETED", "FAILED"}
            ):
                return after
        raise AssertionError(f"{name} did not settle: {self.registry.find(name)}")


@pytest.fixture
def harness(standin: Any, clock: Any) -> Harness:
    return Harness(standin, clock)


def expected_resources(h: Harness, name: str) -> dict[str, set[str]]:
    record = h.registry.get(name)
    desired = h.reconciler._resolve(record.spec)
    out = {
        "models": {desired.model_name},
        "endpoint_configs": {desired.config_name},
        "endpoints": {desired.endpoint_name},
        "inference_components": {desired.component_name} if desired.component_name else set(),
    }
    return out


def existing(h: Harness) -> dict[str, set[str]]:
    return {k: set(v) for k, v in h.standin.resources().items()}


EMPTY = {
    "models": set(),
    "endpoint_configs": set(),
    "endpoints": set(),
    "inference_components": set(),
}


@pytest.mark.parametrize("kind", ["dedicated", "shared", "serverless", "async"])
def test_create_update_delete(harness: Harness, kind: str) -> None:
    spec = SPECS[kind]
    # Given a new deployment, when the reconciler runs, it reaches IN_SERVICE
    harness.create(spec)
    record = harness.settle(spec["name"])
    assert record.status == "IN_SERVICE"
    assert existing(harness) == expected_resources(harness, spec["name"])
    first = expected_resources(harness, spec["name"])
    # When the spec changes, the new resources replace the old ones
    harness.patch(spec["name"], PATCHES[kind])
    record = harness.settle(spec["name"])
    assert record.status == "IN_SERVICE" and record.generation == 2
    now = expected_resources(harness, spec["name"])
    assert existing(harness) == now
    if kind == "shared":
        # more memory per copy is an in-place component update
        ic = harness.standin.describe("inference-component", spec["name"])
        assert ic["Specification"]["ComputeResourceRequirements"]["MinMemoryRequiredInMb"] == 16384
    else:
        assert now != first
    # When deleted, nothing is left behind
    harness.set_desired(spec["name"], "deleted")
    record = harness.settle(spec["name"])
    assert record.status == "DELETED"
    assert existing(harness) == EMPTY
    assert [h.event for h in record.history][-1] == "StatusChanged"


def _converge_with_crash(
    harness: Harness, kind: str, phase: str, crash_at: int, after: bool
) -> bool:
    """Run one scenario with a crash at AWS call number ``crash_at``; True if it triggered."""
    spec = copy.deepcopy(SPECS[kind])
    name = spec["name"]
    harness.create(spec)
    if phase != "create":
        harness.settle(name)
        if phase == "update":
            harness.patch(name, PATCHES[kind])
        else:
            harness.set_desired(name, "deleted")
    harness.calls = 0
    harness.crash_at, harness.crash_after = crash_at, after
    record = harness.settle(name)
    triggered = harness.calls >= crash_at
    if phase == "delete":
        assert record.status == "DELETED", record
        assert existing(harness) == EMPTY
    else:
        assert record.status == "IN_SERVICE", record
        assert existing(harness) == expected_resources(harness, name)
    return triggered


@pytest.mark.parametrize("after", [True, False], ids=["crash-after-call", "crash-before-call"])
@pytest.mark.parametrize("phase", ["create", "update", "delete"])
@pytest.mark.parametrize("kind", ["dedicated", "shared", "serverless", "async"])
def test_converges_despite_a_crash_between_any_two_steps(
    moto_aws: None, clock: Any, kind: str, phase: str, after: bool
) -> None:
    from llmhost import aws
    from llmhost_local.standin import SageMakerStandIn

    crash_at = 1
    while True:
        # Given a fresh account for each crash point
        aws.reset()
        runtime.reset()
        for client_name in ("dynamodb",):
            table = aws.client(client_name)
            for name in table.list_tables()["TableNames"]:
                for item in table.scan(TableName=name)["Items"]:
                    table.delete_item(TableName=name, Key={"name": item["name"]})
        fake = SageMakerStandIn(clock=clock, region="us-east-1")
        attach_standins(fake, clock)
        harness = Harness(fake, clock)
        # When the reconciler dies at step `crash_at`, Then retries still converge
        if not _converge_with_crash(harness, kind, phase, crash_at, after):
            break
        crash_at += 1
    assert crash_at >= 2, "at least one crash point must have been exercised"


def test_failed_endpoint_records_reason_and_stops_until_spec_changes(harness: Harness) -> None:
    spec = SPECS["dedicated"]
    # Given SageMaker will fail the endpoint
    harness.standin.fail_next("endpoint", "llama", "CUDA out of memory while loading weights")
    harness.create(spec)
    record = harness.settle("llama")
    # Then the deployment is FAILED with SageMaker's reason, and retries stop
    assert record.status == "FAILED"
    assert "CUDA out of memory" in record.status_reason
    calls = harness.calls
    harness.reconciler.reconcile("llama")
    assert harness.calls == calls
    # When the spec changes, the failed endpoint is replaced and the new one comes up
    harness.patch("llama", PATCHES["dedicated"])
    record = harness.settle("llama")
    assert record.status == "IN_SERVICE"
    assert existing(harness) == expected_resources(harness, "llama")


def test_failed_update_rolls_back_and_keeps_serving(harness: Harness) -> None:
    harness.create(SPECS["dedicated"])
    harness.settle("llama")
    old_config = harness.standin.describe("endpoint", "llama")["EndpointConfigName"]
    # Given the next update of the endpoint fails
    harness.standin.fail_next("endpoint", "llama", "health check did not pass")
    harness.patch("llama", PATCHES["dedicated"])
    record = harness.settle("llama")
    # Then SageMaker rolled back, the old config still serves, and the record says why
    assert record.status == "FAILED"
    assert "health check did not pass" in record.status_reason
    endpoint = harness.standin.describe("endpoint", "llama")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == old_config
    assert old_config in existing(harness)["endpoint_configs"]


@pytest.mark.parametrize("kind", ["dedicated", "shared", "async"])
def test_sleep_and_wake(harness: Harness, kind: str) -> None:
    spec = SPECS[kind]
    name = spec["name"]
    harness.create(spec)
    harness.settle(name)
    # When put to sleep
    harness.set_desired(name, "sleeping")
    record = harness.settle(name)
    assert record.status == "SLEEPING"
    if kind in {"dedicated", "async"}:
        # the endpoint is gone but its config and model stay for a fast wake
        assert existing(harness)["endpoints"] == set()
        assert (
            existing(harness)["endpoint_configs"]
            == expected_resources(harness, name)["endpoint_configs"]
        )
    else:
        assert (
            harness.standin.describe("inference-component", name)["RuntimeConfig"][
                "DesiredCopyCount"
            ]
            == 0
        )
    # When woken
    harness.set_desired(name, "in_service")
    record = harness.settle(name)
    assert record.status == "IN_SERVICE"
    assert existing(harness) == expected_resources(harness, name)
    if kind == "async":
        # (the woken endpoint announces results again, on the same config)
        described = harness.standin.describe("endpoint", name)
        assert described["AsyncInferenceConfig"]["OutputConfig"]["NotificationConfig"]


def test_pool_survives_while_another_model_uses_it(harness: Harness) -> None:
    second = copy.deepcopy(SPECS["shared"])
    second["name"] = "mistral"
    second["model"]["model_id"] = "mistralai/Mistral-7B-Instruct-v0.2"
    harness.create(SPECS["shared"])
    harness.settle("zephyr")
    harness.create(second)
    harness.settle("mistral")
    assert existing(harness)["inference_components"] == {"zephyr", "mistral"}
    # When one model of the pool is deleted
    harness.set_desired("zephyr", "deleted")
    assert harness.settle("zephyr").status == "DELETED"
    # Then the pool endpoint stays for the other
    assert existing(harness)["endpoints"] == {"gpu-pool"}
    assert existing(harness)["inference_components"] == {"mistral"}
    # And the last one takes the pool with it
    harness.set_desired("mistral", "deleted")
    assert harness.settle("mistral").status == "DELETED"
    assert existing(harness) == EMPTY


def test_history_is_bounded(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    harness.registry.history_limit = 5
    harness.create(SPECS["dedicated"])
    record = harness.settle("llama")
    assert len(record.history) == 5
    assert record.history[-1].status == "IN_SERVICE"


@pytest.mark.parametrize("kind", ["dedicated", "shared"])
def test_delete_removes_scaling_registrations_and_alarms(harness: Harness, kind: str) -> None:
    from llmhost import aws

    spec = SPECS[kind]
    name = spec["name"]
    harness.create(spec)
    harness.settle(name)
    # Given autoscaling and an llmhost alarm registered for the deployment
    resource, dimension = (
        ("inference-component/zephyr", "sagemaker:inference-component:DesiredCopyCount")
        if kind == "shared"
        else ("endpoint/llama/variant/AllTraffic", "sagemaker:variant:DesiredInstanceCount")
    )
    scaling = aws.client("application-autoscaling")
    scaling.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=resource,
        ScalableDimension=dimension,
        MinCapacity=0 if kind == "shared" else 1,
        MaxCapacity=4,
    )
    scaling.put_scaling_policy(
        PolicyName=f"{name}-target",
        ServiceNamespace="sagemaker",
        ResourceId=resource,
        ScalableDimension=dimension,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 4.0,
            "PredefinedMetricSpecification": {
                "PredefinedMetricType": "SageMakerInferenceComponentInvocationsPerCopy"
                if kind == "shared"
                else "SageMakerVariantInvocationsPerInstance"
            },
        },
    )
    aws.client("cloudwatch").put_metric_alarm(
        AlarmName=f"llmhost-{name}-idle",
        MetricName="Invocations",
        Namespace="AWS/SageMaker",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=0,
        ComparisonOperator="LessThanOrEqualToThreshold",
    )
    # When the deployment is deleted
    harness.set_desired(name, "deleted")
    record = harness.settle(name)
    # Then the scaling target, its policy and the alarm went first, and nothing is left
    assert record.status == "DELETED"
    events = [h.event for h in record.history]
    assert events.index(f"DeregisterScalableTarget {resource}") < events.index(
        f"DeleteAlarm llmhost-{name}-idle"
    )
    left = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert left == []
    assert scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"] == []
    assert aws.client("cloudwatch").describe_alarms()["MetricAlarms"] == []
    assert existing(harness) == EMPTY


def test_delete_leaves_the_alarms_of_a_deployment_whose_name_extends_it(
    harness: Harness,
) -> None:
    from llmhost import aws

    # Given "llama" in service, and the idle alarm of another deployment named "llama-2"
    # (its name starts with "llama-", so it shares the alarm name prefix "llmhost-llama-")
    harness.create(SPECS["dedicated"])
    harness.settle("llama")
    cloudwatch = aws.client("cloudwatch")
    cloudwatch.put_metric_alarm(
        AlarmName="llmhost-llama-2-idle",
        MetricName="Invocations",
        Namespace="AWS/SageMaker",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=0,
        ComparisonOperator="LessThanOrEqualToThreshold",
    )
    # When "llama" is deleted
    harness.set_desired("llama", "deleted")
    record = harness.settle("llama")
    # Then the other deployment's alarm is still there, and was never touched
    assert record.status == "DELETED"
    assert [a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]] == [
        "llmhost-llama-2-idle"
    ]
    # (by name: "llama-2e4738f1", a generation of llama's own config, is llama's)
    assert not any("llmhost-llama-2" in h.event for h in record.history)


def _scaling_view(name: str) -> tuple[list[dict], list[dict], dict[str, dict]]:
    from llmhost import aws

    scaling = aws.client("application-autoscaling")
    targets = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    alarms = aws.client("cloudwatch").describe_alarms(AlarmNamePrefix=f"llmhost-{name}-")
    return targets, policies, {a["AlarmName"]: a for a in alarms["MetricAlarms"]}


def test_shared_scale_to_zero_registers_all_four_pieces_and_delete_removes_them(
    harness: Harness,
) -> None:
    spec = copy.deepcopy(SPECS["shared"])
    spec["scaling"] = {"min_capacity": 0, "max_capacity": 4, "scale_to_zero": True}
    harness.create(spec)
    # When the component is in service
    record = harness.settle("zephyr")
    assert record.status == "IN_SERVICE" and record.scaling_applied
    targets, policies, alarms = _scaling_view("zephyr")
    # Then: a copy-count target with min 0, target tracking, a step policy, and an alarm on
    # NoCapacityInvocationFailures whose action is that step policy
    assert [
        (t["ResourceId"], t["ScalableDimension"], t["MinCapacity"], t["MaxCapacity"])
        for t in targets
    ] == [("inference-component/zephyr", "sagemaker:inference-component:DesiredCopyCount", 0, 4)]
    kinds = {p["PolicyName"]: p for p in policies}
    assert kinds["llmhost-zephyr-target"]["PolicyType"] == "TargetTrackingScaling"
    assert kinds["llmhost-zephyr-wake"]["PolicyType"] == "StepScaling"
    wake_alarm = alarms["llmhost-zephyr-no-capacity"]
    assert wake_alarm["MetricName"] == "NoCapacityInvocationFailures"
    assert wake_alarm["AlarmActions"] == [kinds["llmhost-zephyr-wake"]["PolicyARN"]]
    assert wake_alarm["Dimensions"] == [{"Name": "InferenceComponentName", "Value": "zephyr"}]
    assert alarms["llmhost-zephyr-idle"]["MetricName"] == "Invocations"
    # When deleted, nothing of it is left
    harness.set_desired("zephyr", "deleted")
    assert harness.settle("zephyr").status == "DELETED"
    targets, policies, alarms = _scaling_view("zephyr")
    assert (targets, policies, alarms) == ([], [], {})
    assert existing(harness) == EMPTY


def test_dedicated_scaling_follows_the_spec(harness: Harness) -> None:
    spec = copy.deepcopy(SPECS["dedicated"])
    spec["scaling"] = {
        "min_capacity": 1,
        "max_capacity": 3,
        "target_metric": "invocations-per-instance",
        "target_value": 100,
    }
    harness.create(spec)
    assert harness.settle("llama").status == "IN_SERVICE"
    targets, policies, _ = _scaling_view("llama")
    assert [(t["ResourceId"], t["MaxCapacity"]) for t in targets] == [
        ("endpoint/llama/variant/AllTraffic", 3)
    ]
    assert [p["PolicyName"] for p in policies] == ["llmhost-llama-target"]
    # When the spec raises the maximum, the target follows
    harness.patch("llama", {"scaling": {**spec["scaling"], "max_capacity": 5}})
    assert harness.settle("llama").status == "IN_SERVICE"
    targets, _, _ = _scaling_view("llama")
    assert [t["MaxCapacity"] for t in targets] == [5]
    # When the spec fixes the capacity again, autoscaling is removed
    harness.patch("llama", {"scaling": {"min_capacity": 1, "max_capacity": 1}})
    record = harness.settle("llama")
    assert record.status == "IN_SERVICE"
    assert _scaling_view("llama")[:2] == ([], [])
    assert record.scaling_applied is None


def test_scaling_view_shows_capacity_policies_alarms_and_activity(harness: Harness) -> None:
    from llmhost_local.cloud import load_handler
    from llmhost_local.events import LambdaContext, api_gateway_event

    spec = copy.deepcopy(SPECS["shared"])
    spec["scaling"] = {"min_capacity": 0, "max_capacity": 4, "scale_to_zero": True}
    harness.create(spec)
    harness.settle("zephyr")
    api = load_handler("api", "llmhost-api")
    event = api_gateway_event("GET", "/v1/deployments/zephyr/scaling", {}, b"", "tester")
    response = api.handler(event, LambdaContext("api"))
    view = json.loads(response["body"])
    assert response["statusCode"] == 200
    assert view["capacity"] == {"current": 1, "desired": 1}
    assert view["bounds"] == {"min": 0, "max": 4}
    assert {p["name"] for p in view["policies"]} == {"llmhost-zephyr-target", "llmhost-zephyr-wake"}
    assert {a["name"] for a in view["alarms"]} == {
        "llmhost-zephyr-idle",
        "llmhost-zephyr-no-capacity",
        "llmhost-zephyr-overload",
        "llmhost-zephyr-underload",
    }
    # Each alarm names what it watches, the metric-math one included
    watched = {a["name"]: a["metric"] for a in view["alarms"]}
    assert watched["llmhost-zephyr-overload"] == "DemandRatio"
    assert watched["llmhost-zephyr-underload"] == "ConcurrentRequestsPerCopy"
    assert any(
        a["what"] == "ApplyScaling inference-component/zephyr" for a in view["recent_activity"]
    )


def test_scale_schedules_become_scheduled_actions(harness: Harness) -> None:
    from llmhost import aws

    spec = copy.deepcopy(SPECS["shared"])
    spec["scaling"] = {
        "min_capacity": 0,
        "max_capacity": 4,
        "scale_to_zero": True,
        "schedules": [
            {"cron": "0 8 ? * MON-FRI *", "timezone": "Europe/Berlin", "min_capacity": 2},
            {"cron": "0 19 ? * MON-FRI *", "timezone": "Europe/Berlin", "min_capacity": 0},
        ],
    }
    harness.create(spec)
    assert harness.settle("zephyr").status == "IN_SERVICE"
    scaling = aws.client("application-autoscaling")

    def actions() -> list[tuple[str, str, str, dict]]:
        found = scaling.describe_scheduled_actions(
            ServiceNamespace="sagemaker",
            ResourceId="inference-component/zephyr",
            ScalableDimension="sagemaker:inference-component:DesiredCopyCount",
        )["ScheduledActions"]
        return sorted(
            (a["ScheduledActionName"], a["Schedule"], a["Timezone"], a["ScalableTargetAction"])
            for a in found
        )

    assert actions() == [
        (
            "llmhost-zephyr-schedule-0",
            "cron(0 8 ? * MON-FRI *)",
            "Europe/Berlin",
            {"MinCapacity": 2},
        ),
        (
            "llmhost-zephyr-schedule-1",
            "cron(0 19 ? * MON-FRI *)",
            "Europe/Berlin",
            {"MinCapacity": 0},
        ),
    ]
    # When the spec drops the evening schedule, its action goes
    spec["scaling"]["schedules"] = spec["scaling"]["schedules"][:1]
    harness.patch("zephyr", {"scaling": spec["scaling"]})
    assert harness.settle("zephyr").status == "IN_SERVICE"
    assert [a[0] for a in actions()] == ["llmhost-zephyr-schedule-0"]
    # And delete takes the last one with the target
    harness.set_desired("zephyr", "deleted")
    assert harness.settle("zephyr").status == "DELETED"
    assert actions() == []


def test_serverless_provisioned_concurrency_is_autoscaled_and_removed(harness: Harness) -> None:
    spec = copy.deepcopy(SPECS["serverless"])
    spec["hosting"] = {**spec["hosting"], "max_concurrency": 10, "provisioned_concurrency": 2}
    spec["scaling"] = {"min_capacity": 1, "max_capacity": 6}
    harness.create(spec)
    # When the serverless endpoint with provisioned concurrency is in service
    assert harness.settle("flan").status == "IN_SERVICE"
    targets, policies, alarms = _scaling_view("flan")
    # Then its provisioned concurrency is the scalable target, tracked on utilization
    assert [
        (t["ResourceId"], t["ScalableDimension"], t["MinCapacity"], t["MaxCapacity"])
        for t in targets
    ] == [
        (
            "endpoint/flan/variant/AllTraffic",
            "sagemaker:variant:DesiredProvisionedConcurrency",
            1,
            6,
        )
    ]
    (policy,) = policies
    assert policy["PolicyName"] == "llmhost-flan-target"
    config = policy["TargetTrackingScalingPolicyConfiguration"]
    assert config["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantProvisionedConcurrencyUtilization"
    }
    assert config["TargetValue"] == 0.5
    assert alarms == {}
    # When deleted, nothing of it is left
    harness.set_desired("flan", "deleted")
    assert harness.settle("flan").status == "DELETED"
    assert _scaling_view("flan") == ([], [], {})
    assert existing(harness) == EMPTY


def test_async_endpoint_gets_its_queue_config_and_scale_from_zero_and_delete_removes_them(
    harness: Harness,
) -> None:
    from llmhost import aws

    spec = SPECS["async"]
    name = spec["name"]
    # Given an async deployment with min 0, when it is in service
    harness.create(spec)
    record = harness.settle(name)
    assert record.status == "IN_SERVICE" and record.scaling_applied
    # Then its endpoint writes results to the jobs bucket and announces them on the topics
    described = harness.standin.describe("endpoint", name)
    output = described["AsyncInferenceConfig"]["OutputConfig"]
    assert output["S3OutputPath"] == "s3://llmhost-jobs/async/output/"
    assert output["S3FailurePath"] == "s3://llmhost-jobs/async/failure/"
    assert output["NotificationConfig"]["SuccessTopic"].endswith(":llmhost-async-success")
    assert output["NotificationConfig"]["ErrorTopic"].endswith(":llmhost-async-error")
    client = described["AsyncInferenceConfig"]["ClientConfig"]
    assert client["MaxConcurrentInvocationsPerInstance"] >= 1
    # And AWS's scale-to-zero for async endpoints is in place: instances 0-2, target
    # tracking on the backlog, a step policy whose alarm watches HasBacklogWithoutCapacity
    targets, policies, alarms = _scaling_view(name)
    variant = f"endpoint/{name}/variant/AllTraffic"
    assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [
        (variant, 0, 2)
    ]
    by_name = {p["PolicyName"]: p for p in policies}
    tracking = by_name[f"llmhost-{name}-target"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == (
        "ApproximateBacklogSizePerInstance"
    )
    assert tracking["TargetValue"] == client["MaxConcurrentInvocationsPerInstance"]
    wake = alarms[f"llmhost-{name}-no-capacity"]
    assert wake["MetricName"] == "HasBacklogWithoutCapacity"
    assert wake["Dimensions"] == [{"Name": "EndpointName", "Value": name}]
    assert wake["AlarmActions"] == [by_name[f"llmhost-{name}-wake"]["PolicyARN"]]
    assert set(alarms) == {f"llmhost-{name}-no-capacity"}
    # And the alarm carries the ownership tags the reconciler's role is scoped by
    tags = aws.client("cloudwatch").list_tags_for_resource(ResourceARN=wake["AlarmArn"])["Tags"]
    assert {"Key": "llmhost:deployment", "Value": name} in tags
    # When deleted, nothing of it is left
    harness.set_desired(name, "deleted")
    assert harness.settle(name).status == "DELETED"
    assert _scaling_view(name) == ([], [], {})
    assert existing(harness) == EMPTY
