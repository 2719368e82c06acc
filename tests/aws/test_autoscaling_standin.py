"""The Application Auto Scaling stand-in serves what moto refuses and leaves the rest to moto."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ParamValidationError
from moto import mock_aws

from llmhost_local.standin import AutoScalingStandIn, SageMakerStandIn, manual_clock

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4"
COPIES = "sagemaker:inference-component:DesiredCopyCount"
INSTANCES = "sagemaker:variant:DesiredInstanceCount"
PROVISIONED = "sagemaker:variant:DesiredProvisionedConcurrency"
IC = "inference-component/ic1"


class Account:
    """moto behind real clients; SageMaker and the IC dimension served by the stand-ins."""

    def __init__(self, session: boto3.Session) -> None:
        now, self.advance = manual_clock()
        self.sagemaker = SageMakerStandIn(now)
        self.sm = self.sagemaker.attach(session.client("sagemaker"))
        self.standin = AutoScalingStandIn(self.sagemaker, clock=now)
        self.aas = self.standin.attach(session.client("application-autoscaling"))

    def component_in_service(self, name: str = "ic1") -> None:
        self.sm.create_model(
            ModelName="m1", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}
        )
        self.sm.create_endpoint_config(
            EndpointConfigName="shared-c1",
            ExecutionRoleArn=ROLE,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "InstanceType": "ml.g5.12xlarge",
                    "InitialInstanceCount": 1,
                    "ManagedInstanceScaling": {
                        "Status": "ENABLED",
                        "MinInstanceCount": 0,
                        "MaxInstanceCount": 2,
                    },
                }
            ],
        )
        self.sm.create_endpoint(EndpointName="shared", EndpointConfigName="shared-c1")
        self._settle(600)
        self.sm.create_inference_component(
            InferenceComponentName=name,
            EndpointName="shared",
            VariantName="AllTraffic",
            Specification={
                "ModelName": "m1",
                "ComputeResourceRequirements": {
                    "MinMemoryRequiredInMb": 8192,
                    "NumberOfAcceleratorDevicesRequired": 1,
                },
            },
            RuntimeConfig={"CopyCount": 1},
        )
        self._settle(240)

    def serverless_endpoint(self, name: str, provisioned: int | None) -> None:
        self.sm.create_model(
            ModelName=f"{name}-m", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}
        )
        serverless = {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
        if provisioned is not None:
            serverless["ProvisionedConcurrency"] = provisioned
        self.sm.create_endpoint_config(
            EndpointConfigName=f"{name}-c",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": f"{name}-m",
                    "ServerlessConfig": serverless,
                }
            ],
        )
        self.sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-c")
        self._settle(600)

    def register(self, resource_id: str = IC, dimension: str = COPIES, **capacity: Any) -> None:
        self.aas.register_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=resource_id,
            ScalableDimension=dimension,
            **({"MinCapacity": 0, "MaxCapacity": 4} | capacity),
        )

    def target_tracking(self, name: str = "invocations", metric: str = "") -> dict[str, Any]:
        return dict(
            self.aas.put_scaling_policy(
                PolicyName=name,
                ServiceNamespace="sagemaker",
                ResourceId=IC,
                ScalableDimension=COPIES,
                PolicyType="TargetTrackingScaling",
                TargetTrackingScalingPolicyConfiguration={
                    "TargetValue": 4.0,
                    "PredefinedMetricSpecification": {
                        "PredefinedMetricType": metric
                        or "SageMakerInferenceComponentInvocationsPerCopy"
                    },
                    "ScaleInCooldown": 300,
                    "ScaleOutCooldown": 60,
                },
            )
        )

    def step(self, name: str = "wake-from-zero") -> dict[str, Any]:
        return dict(
            self.aas.put_scaling_policy(
                PolicyName=name,
                ServiceNamespace="sagemaker",
                ResourceId=IC,
                ScalableDimension=COPIES,
                PolicyType="StepScaling",
                StepScalingPolicyConfiguration={
                    "AdjustmentType": "ChangeInCapacity",
                    "MetricAggregationType": "Maximum",
                    "Cooldown": 60,
                    "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}],
                },
            )
        )

    def targets(self, **filters: Any) -> list[tuple[str, str]]:
        page = self.aas.describe_scalable_targets(ServiceNamespace="sagemaker", **filters)
        return [(t["ResourceId"], t["ScalableDimension"]) for t in page["ScalableTargets"]]

    def _settle(self, seconds: float) -> None:
        self.advance(seconds)
        self.sagemaker.tick()


@pytest.fixture(scope="module")
def session() -> boto3.Session:
    # One session for the module: building its endpoint resolver dominates client creation.
    return boto3.Session(
        region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def _error(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    return error["Code"], error["Message"]


@pytest.fixture
def account(session: boto3.Session) -> Iterator[Account]:
    with mock_aws():
        yield Account(session)


# ---- why the stand-in exists ------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_id", "dimension"),
    [(IC, COPIES), ("endpoint/sl/variant/AllTraffic", PROVISIONED)],
)
def test_moto_alone_refuses_the_dimensions_the_stand_in_serves(
    session: boto3.Session, resource_id: str, dimension: str
):
    with mock_aws():
        # Given moto's Application Auto Scaling with no stand-in in front
        bare = session.client("application-autoscaling")
        # When a target is registered on a dimension llmhost needs
        code, _ = _error(
            lambda: bare.register_scalable_target(
                ServiceNamespace="sagemaker",
                ResourceId=resource_id,
                ScalableDimension=dimension,
                MinCapacity=0,
                MaxCapacity=4,
            )
        )
        # Then moto refuses it (if this starts passing, the stand-in may be retired)
        assert code == "ValidationException"


# ---- scale to zero for an inference component -----------------------------------------


def test_scale_to_zero_setup_is_stored_described_and_removed_with_its_target(account: Account):
    # Given an inference component in service
    account.component_in_service()
    # When its copy count is registered from 0 to 4 with a target tracking and a step policy
    account.register()
    tracking = account.target_tracking()
    step = account.step()
    # Then the target tracking policy reports the alarm pair AWS creates, the step policy none
    high, low = (a["AlarmName"] for a in tracking["Alarms"])
    assert high.startswith(f"TargetTracking-{IC}-AlarmHigh-")
    assert low.startswith(f"TargetTracking-{IC}-AlarmLow-")
    assert tracking["PolicyARN"].startswith("arn:aws:autoscaling:us-east-1:123456789012:")
    assert tracking["PolicyARN"].endswith(f":resource/sagemaker/{IC}:policyName/invocations")
    assert "Alarms" not in step
    # And both are described with their configuration, on the registered range
    target = account.aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[IC])
    assert [(t["MinCapacity"], t["MaxCapacity"]) for t in target["ScalableTargets"]] == [(0, 4)]
    policies = account.aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=IC)
    by_name = {p["PolicyName"]: p for p in policies["ScalingPolicies"]}
    assert by_name["invocations"]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 4.0
    assert by_name["wake-from-zero"]["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}
    ]
    assert account.standin.policies() == {(IC, "invocations"), (IC, "wake-from-zero")}
    # When the target is deregistered
    account.aas.deregister_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=IC, ScalableDimension=COPIES
    )
    # Then its policies went with it, as in AWS
    assert account.standin.targets() == set()
    assert account.standin.policies() == set()
    after = account.aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=IC)
    assert after["ScalingPolicies"] == []


def test_re_registering_changes_only_what_is_given(account: Account):
    # Given a registered component
    account.component_in_service()
    account.register()
    # When it is registered again with a new maximum and scale-in suspended
    account.aas.register_scalable_target(
        ServiceNamespace="sagemaker",
        ResourceId=IC,
        ScalableDimension=COPIES,
        MaxCapacity=8,
        SuspendedState={"DynamicScalingInSuspended": True},
    )
    # Then the minimum and the other suspension flags are kept
    (target,) = account.aas.describe_scalable_targets(
        ServiceNamespace="sagemaker", ResourceIds=[IC]
    )["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 8)
    assert target["SuspendedState"] == {
        "DynamicScalingInSuspended": True,
        "DynamicScalingOutSuspended": False,
        "ScheduledScalingSuspended": False,
    }
    # And a minimum above the maximum is refused
    code, message = _error(lambda: account.register(MinCapacity=9))
    assert code == "ValidationException"
    assert "MinCapacity (9)" in message


def test_registering_a_component_that_does_not_exist_is_refused(account: Account):
    # Given no inference component named ghost
    # When its copy count is registered
    code, message = _error(lambda: account.register("inference-component/ghost"))
    # Then Application Auto Scaling refuses it and nothing is registered
    assert code == "ValidationException"
    assert "'ghost' does not exist" in message
    assert account.standin.targets() == set()


def test_a_resource_id_of_the_wrong_type_is_refused_with_awss_message(account: Account):
    code, message = _error(lambda: account.register("endpoint/shared/variant/AllTraffic"))
    assert (code, message) == (
        "ValidationException",
        "Unsupported service namespace, resource type or scalable dimension",
    )


def test_policies_and_deregistration_need_a_registered_target(account: Account):
    # Given a component that was never registered
    account.component_in_service()
    # When a policy is put on it, or it is deregistered
    put = _error(account.target_tracking)
    gone = _error(
        lambda: account.aas.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=IC, ScalableDimension=COPIES
        )
    )
    # Then both fail with AWS's ObjectNotFoundException messages
    assert put == (
        "ObjectNotFoundException",
        f"No scalable target registered for service namespace: sagemaker, resource ID: {IC}, "
        f"scalable dimension: {COPIES}",
    )
    assert gone == (
        "ObjectNotFoundException",
        f"No scalable target found for service namespace: sagemaker, resource ID: {IC}, "
        f"scalable dimension: {COPIES}",
    )
    assert account.standin.policies() == set()


def test_a_metric_the_dimension_does_not_take_is_refused_with_awss_message(account: Account):
    # Given a registered component
    account.component_in_service()
    account.register()
    # When target tracking uses a variant metric
    code, message = _error(
        lambda: account.target_tracking(metric="SageMakerVariantInvocationsPerInstance")
    )
    # Then the dimension's own metrics are named
    assert code == "ValidationException"
    assert message == (
        f"Scalable dimension {COPIES} only supports the following predefined metric types: "
        "SageMakerInferenceComponentInvocationsPerCopy, "
        "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution"
    )
    assert account.standin.policies() == set()


def test_scheduled_actions_are_kept_until_deleted_or_deregistered(account: Account):
    # Given a registered component
    account.component_in_service()
    account.register()

    def schedule(name: str, expression: str) -> None:
        account.aas.put_scheduled_action(
            ServiceNamespace="sagemaker",
            ScheduledActionName=name,
            ResourceId=IC,
            ScalableDimension=COPIES,
            Schedule=expression,
            ScalableTargetAction={"MinCapacity": 1, "MaxCapacity": 4},
        )

    # When two scheduled actions are put and one deleted
    schedule("office-hours", "cron(0 8 ? * MON-FRI *)")
    schedule("night", "cron(0 20 ? * MON-FRI *)")
    account.aas.delete_scheduled_action(
        ServiceNamespace="sagemaker",
        ScheduledActionName="night",
        ResourceId=IC,
        ScalableDimension=COPIES,
    )
    # Then only the other is described
    actions = account.aas.describe_scheduled_actions(ServiceNamespace="sagemaker", ResourceId=IC)
    assert [(a["ScheduledActionName"], a["Schedule"]) for a in actions["ScheduledActions"]] == [
        ("office-hours", "cron(0 8 ? * MON-FRI *)")
    ]
    # And a malformed schedule is refused
    code, _ = _error(lambda: schedule("broken", "every morning"))
    assert code == "ValidationException"
    # And deregistering the target removes what is left
    account.aas.deregister_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=IC, ScalableDimension=COPIES
    )
    assert account.standin.scheduled_actions() == set()


# ---- serverless provisioned concurrency ---------------------------------------------------


def test_provisioned_concurrency_needs_a_serverless_variant_that_has_it(account: Account):
    # Given one serverless endpoint with provisioned concurrency and one without
    account.serverless_endpoint("warm", provisioned=2)
    account.serverless_endpoint("cold", provisioned=None)
    # When both variants are registered on DesiredProvisionedConcurrency
    account.register("endpoint/warm/variant/AllTraffic", PROVISIONED, MinCapacity=1, MaxCapacity=5)
    code, _ = _error(lambda: account.register("endpoint/cold/variant/AllTraffic", PROVISIONED))
    # Then only the one with provisioned concurrency is held, by the stand-in
    assert code == "ValidationException"
    assert account.standin.targets() == {("endpoint/warm/variant/AllTraffic", PROVISIONED)}


# ---- what stays with moto ----------------------------------------------------------------


def test_a_variant_instance_count_target_goes_to_moto(account: Account):
    # Given an IC target (stand-in) and a classic variant target
    account.component_in_service()
    account.register()
    account.register("endpoint/x/variant/AllTraffic", INSTANCES, MinCapacity=1)
    # Then the stand-in does not hold the variant target
    assert account.standin.targets() == {(IC, COPIES)}
    # But moto does: filtered by its dimension, it alone answers
    assert account.targets(ScalableDimension=INSTANCES) == [
        ("endpoint/x/variant/AllTraffic", INSTANCES)
    ]
    # And a describe without a dimension merges both, moto's first, paged across them
    first = account.aas.describe_scalable_targets(ServiceNamespace="sagemaker", MaxResults=1)
    second = account.aas.describe_scalable_targets(
        ServiceNamespace="sagemaker", MaxResults=1, NextToken=first["NextToken"]
    )
    paged = [t["ResourceId"] for page in (first, second) for t in page["ScalableTargets"]]
    assert paged == ["endpoint/x/variant/AllTraffic", IC]
    assert "NextToken" not in second


# ---- requests AWS would reject ------------------------------------------------------------


def test_an_unknown_enum_value_fails_with_the_services_validation_message(account: Account):
    # Given a registered component (botocore itself never checks enums, the service does)
    account.component_in_service()
    account.register()
    # When a policy type that does not exist is used
    code, message = _error(
        lambda: account.aas.put_scaling_policy(
            PolicyName="p",
            ServiceNamespace="sagemaker",
            ResourceId=IC,
            ScalableDimension=COPIES,
            PolicyType="Bogus",
        )
    )
    # Then the service's validation error, from botocore's service model, comes back
    assert code == "ValidationException"
    assert message.startswith(
        "1 validation error detected: Value 'Bogus' at 'policyType' failed to satisfy "
        "constraint: Member must satisfy enum value set: ["
    )
    assert account.standin.policies() == set()


def test_an_unknown_dimension_is_refused_before_reaching_moto(account: Account):
    code, message = _error(lambda: account.register(dimension="sagemaker:variant:Bogus"))
    assert code == "ValidationException"
    assert "Value 'sagemaker:variant:Bogus' at 'scalableDimension'" in message


def test_a_wrong_type_fails_in_botocore(account: Account):
    with pytest.raises(ParamValidationError, match="MinCapacity"):
        account.register(MinCapacity="0")
    assert account.standin.targets() == set()


def test_attaching_to_another_service_is_refused(session: boto3.Session):
    with pytest.raises(ValueError, match="application-autoscaling"):
        AutoScalingStandIn().attach(session.client("sagemaker"))
