"""The SageMaker stand-in behaves like SageMaker behind a real boto3 client, offline."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError

from llmhost_local.standin import SageMakerStandIn, StandInResponseInvalid, manual_clock

ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-tgi-inference:2.4"
ARN = "arn:aws:sagemaker:us-east-1:123456789012"


class Harness:
    """A real boto3 client wired to a stand-in whose clock only moves when told."""

    def __init__(self, **options: Any) -> None:
        self.now, self._advance = manual_clock()
        self.events: list[dict[str, Any]] = []
        self.standin = SageMakerStandIn(self.now, on_event=self.events.append, **options)
        self.client = self.standin.attach(_client())

    def advance(self, seconds: float) -> list[dict[str, Any]]:
        self._advance(seconds)
        return self.standin.tick()

    def model(self, name: str = "m1") -> None:
        self.client.create_model(
            ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}
        )

    def classic_config(
        self, name: str = "c1", model: str = "m1", instance_type: str = "ml.g5.2xlarge"
    ) -> None:
        self.client.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": model,
                    "InstanceType": instance_type,
                    "InitialInstanceCount": 1,
                }
            ],
        )

    def shared_config(self, name: str = "shared-c1") -> None:
        self.client.create_endpoint_config(
            EndpointConfigName=name,
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
                    "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
                }
            ],
        )

    def endpoint_in_service(self, name: str = "e1", config: str = "c1") -> None:
        self.client.create_endpoint(EndpointName=name, EndpointConfigName=config)
        self.advance(600)

    def shared_endpoint(self, name: str = "shared") -> None:
        self.model()
        self.shared_config()
        self.endpoint_in_service(name, "shared-c1")

    def component(self, name: str = "ic1", endpoint: str = "shared", copies: int = 1) -> None:
        self.client.create_inference_component(
            InferenceComponentName=name,
            EndpointName=endpoint,
            VariantName="AllTraffic",
            Specification={
                "ModelName": "m1",
                "ComputeResourceRequirements": {
                    "MinMemoryRequiredInMb": 8192,
                    "NumberOfAcceleratorDevicesRequired": 1,
                },
            },
            RuntimeConfig={"CopyCount": copies},
        )

    def status(self, name: str = "e1") -> str:
        return str(self.client.describe_endpoint(EndpointName=name)["EndpointStatus"])

    def ic(self, name: str = "ic1") -> dict[str, Any]:
        return dict(self.client.describe_inference_component(InferenceComponentName=name))


def _client(**config: Any) -> Any:
    return boto3.client(
        "sagemaker",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(**config) if config else None,
    )


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Any HTTP attempt means the stand-in failed to short-circuit botocore.
    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("the SageMaker stand-in let a request reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.fixture
def sm() -> Harness:
    return Harness()


def _error(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    return error["Code"], error["Message"]


# ---- requests AWS would reject --------------------------------------------------------


def test_missing_required_parameter_fails_in_botocore_before_any_state_changes(sm: Harness):
    # Given an empty account
    before = sm.standin.resources()
    # When CreateEndpointConfig is called without ProductionVariants
    # Then botocore rejects it, exactly as it would against AWS, and nothing was created
    with pytest.raises(ParamValidationError, match="ProductionVariants"):
        sm.client.create_endpoint_config(EndpointConfigName="c1")
    assert sm.standin.resources() == before


def test_wrong_type_fails_in_botocore_before_any_state_changes(sm: Harness):
    # Given a model
    sm.model()
    # When a variant's instance count is a string
    with pytest.raises(ParamValidationError, match="InitialInstanceCount"):
        sm.client.create_endpoint_config(
            EndpointConfigName="c1",
            ProductionVariants=[
                {
                    "VariantName": "v",
                    "ModelName": "m1",
                    "InstanceType": "ml.g5.2xlarge",
                    "InitialInstanceCount": "1",
                }
            ],
        )
    # Then no endpoint config exists
    assert sm.standin.resources()["endpoint_configs"] == set()


def test_unknown_instance_type_is_rejected_with_sagemakers_enum_message(sm: Harness):
    # Given a model (botocore itself never checks enums, SageMaker does)
    sm.model()
    # When the variant asks for an instance type that does not exist
    code, message = _error(lambda: sm.classic_config(instance_type="ml.bogus"))
    # Then SageMaker's server-side validation error comes back and nothing was created
    assert code == "ValidationException"
    assert message.startswith(
        "1 validation error detected: Value 'ml.bogus' at "
        "'productionVariants.1.member.instanceType' failed to satisfy constraint: "
        "Member must satisfy enum value set: ["
    )
    assert sm.standin.resources()["endpoint_configs"] == set()


def test_invalid_resource_name_is_rejected_by_the_name_pattern(sm: Harness):
    # When a model name contains an underscore
    code, message = _error(lambda: sm.model("bad_name"))
    # Then the pattern from the service model is enforced
    assert code == "ValidationException"
    assert "at 'modelName' failed to satisfy constraint: Member must satisfy regular" in message
    assert sm.standin.resources()["models"] == set()


def test_a_client_without_parameter_validation_still_gets_aws_errors():
    # Given a client that skips botocore's validation
    sm = Harness()
    sm.client = sm.standin.attach(_client(parameter_validation=False))
    # When a required parameter is missing
    code, message = _error(lambda: sm.client.create_endpoint(EndpointName="e1"))
    # Then the stand-in answers as SageMaker's own validation would
    assert code == "ValidationException"
    assert "Value null at 'endpointConfigName'" in message
    assert sm.standin.resources()["endpoints"] == set()


@pytest.mark.parametrize(
    "instance_type", ["ml.g5.2xlarge", "ml.g6e.xlarge", "ml.p5.48xlarge", "ml.inf2.xlarge"]
)
def test_current_gpu_instance_types_are_accepted(sm: Harness, instance_type: str):
    # Given a model
    sm.model()
    # When an endpoint config uses a current GPU instance type (moto rejects ml.g5.*)
    sm.classic_config(instance_type=instance_type)
    # Then it is stored as given
    config = sm.client.describe_endpoint_config(EndpointConfigName="c1")
    assert config["ProductionVariants"][0]["InstanceType"] == instance_type


def test_operations_the_stand_in_does_not_model_fail_loudly(sm: Harness):
    with pytest.raises(NotImplementedError, match="ListTrainingJobs"):
        sm.client.list_training_jobs()


def test_the_stand_in_refuses_to_send_a_response_sagemaker_could_not(
    sm: Harness, monkeypatch: pytest.MonkeyPatch
):
    # Given a control plane that (by a bug) reports a status SageMaker does not have
    sm.model()
    sm.classic_config()
    sm.endpoint_in_service()
    plane = sm.standin._plane
    real = plane.describe_endpoint
    monkeypatch.setattr(
        plane, "describe_endpoint", lambda r: {**real(r), "EndpointStatus": "Sleeping"}
    )
    # When the endpoint is described
    # Then the output-shape check stops it instead of passing it to the caller
    with pytest.raises(StandInResponseInvalid, match="Sleeping"):
        sm.client.describe_endpoint(EndpointName="e1")


def test_attaching_to_a_client_of_another_region_is_refused():
    standin = SageMakerStandIn()
    other = boto3.client(
        "sagemaker",
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with pytest.raises(ValueError, match="eu-west-1"):
        standin.attach(other)


# ---- endpoints -----------------------------------------------------------------------


def test_endpoint_is_creating_then_in_service_with_an_event_for_each_state(sm: Harness):
    # Given a model and a config
    sm.model()
    sm.classic_config()
    # When the endpoint is created
    arn = sm.client.create_endpoint(
        EndpointName="Chat-Endpoint",
        EndpointConfigName="c1",
        Tags=[{"Key": "llmhost:deployment", "Value": "chat"}],
    )["EndpointArn"]
    # Then it is Creating (SageMaker lower-cases the name in ARNs) and stays so until its time
    assert arn == f"{ARN}:endpoint/chat-endpoint"
    assert sm.status("Chat-Endpoint") == "Creating"
    assert sm.advance(599) == []
    assert sm.status("Chat-Endpoint") == "Creating"
    # When the creation time has elapsed
    settled = sm.advance(1)
    # Then it is InService and an EventBridge event says so
    described = sm.client.describe_endpoint(EndpointName="Chat-Endpoint")
    assert described["EndpointStatus"] == "InService"
    assert isinstance(described["CreationTime"], datetime)
    assert described["ProductionVariants"][0]["CurrentInstanceCount"] == 1
    assert [e["detail"]["EndpointStatus"] for e in sm.events] == ["CREATING", "IN_SERVICE"]
    assert settled == sm.events[1:]
    event = sm.events[1]
    assert event["source"] == "aws.sagemaker"
    assert event["detail-type"] == "SageMaker Endpoint State Change"
    assert event["resources"] == [arn]
    assert event["account"] == "123456789012" and event["region"] == "us-east-1"
    assert event["time"] == "2023-11-14T22:23:20Z"
    assert event["detail"]["EndpointName"] == "Chat-Endpoint"
    assert event["detail"]["EndpointConfigName"] == "c1"
    assert event["detail"]["Tags"] == {"llmhost:deployment": "chat"}
    assert event["detail"]["ProductionVariants"] == [
        {"VariantName": "AllTraffic", "DesiredWeight": 1.0, "DesiredInstanceCount": 1.0}
    ]
    assert "FailureReason" not in event["detail"]


def test_missing_and_duplicate_endpoints_get_sagemakers_messages(sm: Harness):
    # Given an endpoint
    sm.model()
    sm.classic_config()
    sm.client.create_endpoint(EndpointName="e1", EndpointConfigName="c1")
    # When it is created again, or another one is described
    duplicate = _error(
        lambda: sm.client.create_endpoint(EndpointName="E1", EndpointConfigName="c1")
    )
    missing = _error(lambda: sm.client.describe_endpoint(EndpointName="nope"))
    # Then SageMaker's own codes and messages come back
    assert duplicate == (
        "ValidationException",
        f'Cannot create already existing endpoint "{ARN}:endpoint/e1".',
    )
    assert missing == ("ValidationException", f'Could not find endpoint "{ARN}:endpoint/nope".')


def test_an_endpoint_needs_an_existing_config_and_models(sm: Harness):
    # Given a config whose model has since been deleted
    sm.model()
    sm.classic_config()
    sm.client.delete_model(ModelName="m1")
    # When endpoints are created from it and from a config that never existed
    gone_model = _error(
        lambda: sm.client.create_endpoint(EndpointName="e1", EndpointConfigName="c1")
    )
    no_config = _error(
        lambda: sm.client.create_endpoint(EndpointName="e1", EndpointConfigName="c9")
    )
    # Then both are refused and no endpoint exists
    assert gone_model == ("ValidationException", f'Could not find model "{ARN}:model/m1".')
    assert no_config == (
        "ValidationException",
        f'Could not find endpoint configuration "{ARN}:endpoint-config/c9".',
    )
    assert sm.standin.resources()["endpoints"] == set()


def test_a_failed_create_ends_failed_with_its_reason(sm: Harness):
    # Given an injected failure for the next creation
    sm.model()
    sm.classic_config()
    sm.standin.fail_next("endpoint", "e1", "The primary container for production variant failed.")
    # When the endpoint is created and its time elapses
    sm.client.create_endpoint(EndpointName="e1", EndpointConfigName="c1")
    sm.advance(600)
    # Then it is Failed with the reason, in Describe and in the event
    described = sm.client.describe_endpoint(EndpointName="e1")
    assert described["EndpointStatus"] == "Failed"
    assert described["FailureReason"] == "The primary container for production variant failed."
    assert sm.events[-1]["detail"]["EndpointStatus"] == "FAILED"
    assert sm.events[-1]["detail"]["FailureReason"] == described["FailureReason"]


def test_update_switches_config_after_the_update_time(sm: Harness):
    # Given an InService endpoint and a second config
    sm.model()
    sm.classic_config()
    sm.endpoint_in_service()
    sm.classic_config("c2", instance_type="ml.g6e.xlarge")
    # When it is updated
    sm.client.update_endpoint(EndpointName="e1", EndpointConfigName="c2")
    # Then it is Updating, still serving c1, with c2 pending
    updating = sm.client.describe_endpoint(EndpointName="e1")
    assert updating["EndpointStatus"] == "Updating"
    assert updating["EndpointConfigName"] == "c1"
    assert updating["PendingDeploymentSummary"]["EndpointConfigName"] == "c2"
    # And after the update time it serves c2
    sm.advance(300)
    done = sm.client.describe_endpoint(EndpointName="e1")
    assert (done["EndpointStatus"], done["EndpointConfigName"]) == ("InService", "c2")
    assert "PendingDeploymentSummary" not in done
    assert [e["detail"]["EndpointStatus"] for e in sm.events][-2:] == ["UPDATING", "IN_SERVICE"]


def test_a_failed_update_rolls_back_to_the_old_config_with_a_failure_reason(sm: Harness):
    # Given an InService endpoint on c1 and an injected failure for its next update
    sm.model()
    sm.classic_config()
    sm.endpoint_in_service()
    sm.classic_config("c2")
    sm.standin.fail_next("endpoint", "e1", "Received client error (400) from primary.")
    # When it is updated to c2 and the update time elapses
    sm.client.update_endpoint(EndpointName="e1", EndpointConfigName="c2")
    sm.advance(300)
    # Then it is InService on c1 again, with the reason for the failed update
    described = sm.client.describe_endpoint(EndpointName="e1")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "c1"
    assert described["FailureReason"] == "Received client error (400) from primary."
    assert sm.events[-1]["detail"]["EndpointConfigName"] == "c1"
    assert sm.events[-1]["detail"]["FailureReason"] == described["FailureReason"]


def test_update_and_delete_are_refused_while_the_endpoint_is_creating(sm: Harness):
    # Given an endpoint that is still Creating
    sm.model()
    sm.classic_config()
    sm.client.create_endpoint(EndpointName="e1", EndpointConfigName="c1")
    # When it is updated or deleted
    update = _error(lambda: sm.client.update_endpoint(EndpointName="e1", EndpointConfigName="c1"))
    delete = _error(lambda: sm.client.delete_endpoint(EndpointName="e1"))
    # Then both get SageMaker's in-progress error and it keeps creating
    in_progress = (
        "ValidationException",
        f'Cannot update in-progress endpoint "{ARN}:endpoint/e1".',
    )
    assert update == in_progress
    assert delete == in_progress
    assert sm.status() == "Creating"


def test_deleting_endpoint_exists_until_its_delete_time_then_is_gone(sm: Harness):
    # Given an InService endpoint whose config is deleted while it runs (SageMaker allows it)
    sm.model()
    sm.classic_config()
    sm.endpoint_in_service()
    sm.client.delete_endpoint_config(EndpointConfigName="c1")
    assert sm.status() == "InService"
    # When the endpoint is deleted
    sm.client.delete_endpoint(EndpointName="e1")
    # Then it is Deleting and still listed until the delete time has passed
    assert sm.status() == "Deleting"
    assert sm.standin.resources()["endpoints"] == {"e1"}
    assert sm.events[-1]["detail"]["EndpointStatus"] == "DELETING"
    sm.advance(60)
    assert sm.standin.resources()["endpoints"] == set()
    code, _ = _error(lambda: sm.client.describe_endpoint(EndpointName="e1"))
    assert code == "ValidationException"


def test_instance_quota_is_enforced_with_resource_limit_exceeded():
    # Given an account allowed one ml.g5.2xlarge for endpoints, already in use
    sm = Harness(instance_quotas={"ml.g5.2xlarge": 1})
    sm.model()
    sm.classic_config()
    sm.endpoint_in_service()
    # When a second endpoint on that type is created
    with pytest.raises(sm.client.exceptions.ResourceLimitExceeded) as caught:
        sm.client.create_endpoint(EndpointName="e2", EndpointConfigName="c1")
    # Then SageMaker's quota message names the type, the limit and the usage
    assert (
        "'ml.g5.2xlarge for endpoint usage' is 1 Instances, with current utilization of 1"
        in (caught.value.response["Error"]["Message"])
    )


# ---- endpoint configs and models -----------------------------------------------------


def test_a_config_must_name_existing_models(sm: Harness):
    code, message = _error(lambda: sm.classic_config(model="ghost"))
    assert (code, message) == ("ValidationException", f'Could not find model "{ARN}:model/ghost".')


def test_an_inference_component_config_needs_an_execution_role(sm: Harness):
    # When a variant without ModelName (it will host inference components) has no role
    code, message = _error(
        lambda: sm.client.create_endpoint_config(
            EndpointConfigName="shared-c1",
            ProductionVariants=[
                {"VariantName": "v", "InstanceType": "ml.g5.12xlarge", "InitialInstanceCount": 1}
            ],
        )
    )
    # Then it is refused with a message naming the missing field
    assert code == "ValidationException"
    assert "ExecutionRoleArn" in message


def test_a_model_needs_a_container(sm: Harness):
    code, message = _error(lambda: sm.client.create_model(ModelName="m1", ExecutionRoleArn=ROLE))
    assert code == "ValidationException"
    assert "PrimaryContainer" in message


def test_list_models_pages_filters_and_sorts(sm: Harness):
    # Given twelve models created a second apart
    for i in range(12):
        sm.model(f"model-{i:02d}")
        sm.advance(1)
    # When they are listed five at a time, newest first (SageMaker's default order)
    first = sm.client.list_models(MaxResults=5)
    second = sm.client.list_models(MaxResults=5, NextToken=first["NextToken"])
    third = sm.client.list_models(MaxResults=5, NextToken=second["NextToken"])
    # Then the pages cover every model once, in order, and the last has no token
    names = [m["ModelName"] for page in (first, second, third) for m in page["Models"]]
    assert names == [f"model-{i:02d}" for i in range(11, -1, -1)]
    assert "NextToken" not in third
    # And botocore's paginator, NameContains and SortBy=Name work too
    paginator = sm.client.get_paginator("list_models")
    assert sum(len(p["Models"]) for p in paginator.paginate(PaginationConfig={"PageSize": 4})) == 12
    filtered = sm.client.list_models(NameContains="model-1", SortBy="Name", SortOrder="Ascending")
    assert [m["ModelName"] for m in filtered["Models"]] == ["model-10", "model-11"]
    assert len(sm.client.list_models()["Models"]) == 10  # the default page size
    cutoff = datetime.fromtimestamp(sm.now() - 3.5, tz=UTC)
    recent = sm.client.list_models(CreationTimeAfter=cutoff)["Models"]
    assert [m["ModelName"] for m in recent] == ["model-11", "model-10", "model-09"]


def test_tags_are_added_listed_deleted_and_reach_endpoint_events(sm: Harness):
    # Given a Creating endpoint
    sm.model()
    sm.classic_config()
    arn = sm.client.create_endpoint(EndpointName="e1", EndpointConfigName="c1")["EndpointArn"]
    # When tags are added and one is deleted
    sm.client.add_tags(
        ResourceArn=arn, Tags=[{"Key": "team", "Value": "ml"}, {"Key": "tmp", "Value": "x"}]
    )
    sm.client.delete_tags(ResourceArn=arn, TagKeys=["tmp"])
    # Then ListTags and the next event carry the remaining tag
    assert sm.client.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "ml"}]
    sm.advance(600)
    assert sm.events[-1]["detail"]["Tags"] == {"team": "ml"}


# ---- inference components ------------------------------------------------------------


def test_inference_component_lifecycle(sm: Harness):
    # Given an InService endpoint whose variant hosts inference components
    sm.shared_endpoint()
    # When a component is created
    arn = sm.client.create_inference_component(
        InferenceComponentName="ic1",
        EndpointName="shared",
        VariantName="AllTraffic",
        Specification={
            "ModelName": "m1",
            "ComputeResourceRequirements": {
                "MinMemoryRequiredInMb": 8192,
                "NumberOfAcceleratorDevicesRequired": 1,
            },
        },
        RuntimeConfig={"CopyCount": 2},
    )["InferenceComponentArn"]
    # Then it is Creating with no copies yet
    assert arn == f"{ARN}:inference-component/ic1"
    creating = sm.ic()
    assert creating["InferenceComponentStatus"] == "Creating"
    assert creating["RuntimeConfig"] == {"DesiredCopyCount": 2, "CurrentCopyCount": 0}
    assert creating["EndpointName"] == "shared" and creating["VariantName"] == "AllTraffic"
    requirements = creating["Specification"]["ComputeResourceRequirements"]
    assert requirements["MinMemoryRequiredInMb"] == 8192
    assert requirements["NumberOfAcceleratorDevicesRequired"] == 1
    # And after its creation time it serves both copies
    sm.advance(240)
    assert sm.ic()["InferenceComponentStatus"] == "InService"
    assert sm.ic()["RuntimeConfig"]["CurrentCopyCount"] == 2
    # When it is scaled to zero copies
    sm.client.update_inference_component_runtime_config(
        InferenceComponentName="ic1", DesiredRuntimeConfig={"CopyCount": 0}
    )
    # Then it is Updating, and deleting it or its endpoint is refused meanwhile
    assert sm.ic()["InferenceComponentStatus"] == "Updating"
    code, message = _error(
        lambda: sm.client.delete_inference_component(InferenceComponentName="ic1")
    )
    assert code == "ValidationException" and "Updating" in message
    code, message = _error(lambda: sm.client.delete_endpoint(EndpointName="shared"))
    assert code == "ValidationException" and "ic1" in message
    sm.advance(180)
    assert sm.ic()["RuntimeConfig"] == {"DesiredCopyCount": 0, "CurrentCopyCount": 0}
    # When the component is deleted
    sm.client.delete_inference_component(InferenceComponentName="ic1")
    # Then it is Deleting, still blocks the endpoint's deletion, and is gone after its time
    assert sm.ic()["InferenceComponentStatus"] == "Deleting"
    assert _error(lambda: sm.client.delete_endpoint(EndpointName="shared"))[0] == (
        "ValidationException"
    )
    sm.advance(60)
    assert sm.standin.resources()["inference_components"] == set()
    assert _error(lambda: sm.ic())[1] == (
        f'Could not find inference component "{ARN}:inference-component/ic1".'
    )
    sm.client.delete_endpoint(EndpointName="shared")
    assert sm.status("shared") == "Deleting"


def test_inference_component_delete_is_refused_while_creating(sm: Harness):
    # Given a component that is still Creating
    sm.shared_endpoint()
    sm.component()
    # When it is deleted
    code, message = _error(
        lambda: sm.client.delete_inference_component(InferenceComponentName="ic1")
    )
    # Then SageMaker refuses until it settles
    assert code == "ValidationException" and "Creating" in message
    assert sm.ic()["InferenceComponentStatus"] == "Creating"


def test_a_failed_component_update_rolls_back_the_specification(sm: Harness):
    # Given an InService component on model m1 and an injected failure for its next update
    sm.shared_endpoint()
    sm.component()
    sm.advance(240)
    sm.model("m2")
    sm.standin.fail_next("inference-component", "ic1", "Model container failed health check.")
    # When its specification is updated to model m2 and the update time elapses
    sm.client.update_inference_component(
        InferenceComponentName="ic1",
        Specification={
            "ModelName": "m2",
            "ComputeResourceRequirements": {"MinMemoryRequiredInMb": 4096},
        },
    )
    assert sm.ic()["InferenceComponentStatus"] == "Updating"
    sm.advance(180)
    # Then it is InService on m1 again with the failure reason
    component = sm.ic()
    assert component["InferenceComponentStatus"] == "InService"
    assert component["Specification"]["ModelName"] == "m1"
    assert component["FailureReason"] == "Model container failed health check."


def test_a_failed_component_create_ends_failed(sm: Harness):
    sm.shared_endpoint()
    sm.standin.fail_next("inference-component", "ic1", "Insufficient accelerators.")
    sm.component()
    sm.advance(240)
    component = sm.ic()
    assert component["InferenceComponentStatus"] == "Failed"
    assert component["FailureReason"] == "Insufficient accelerators."
    assert component["RuntimeConfig"]["CurrentCopyCount"] == 0


def test_components_need_an_in_service_endpoint_built_for_them(sm: Harness):
    # Given a classic endpoint (variant names a model) and a shared one still Creating
    sm.model()
    sm.classic_config()
    sm.endpoint_in_service("classic")
    sm.shared_config()
    sm.client.create_endpoint(EndpointName="shared", EndpointConfigName="shared-c1")
    # When components are created on each, and on an endpoint that does not exist
    on_classic = _error(lambda: sm.component(endpoint="classic"))
    on_creating = _error(lambda: sm.component(endpoint="shared"))
    on_missing = _error(lambda: sm.component(endpoint="ghost"))
    # Then all are refused and no component exists
    assert on_classic[0] == "ValidationException" and "ModelName" in on_classic[1]
    assert on_creating[0] == "ValidationException" and "Creating" in on_creating[1]
    assert on_missing == ("ValidationException", f'Could not find endpoint "{ARN}:endpoint/ghost".')
    assert sm.standin.resources()["inference_components"] == set()


def test_list_inference_components_filters_by_endpoint_and_status(sm: Harness):
    # Given one InService and one Creating component on the same endpoint
    sm.shared_endpoint()
    sm.component("ic-a")
    sm.advance(240)
    sm.component("ic-b")
    # When they are listed by endpoint and by status
    by_endpoint = sm.client.list_inference_components(EndpointNameEquals="shared")
    creating = sm.client.list_inference_components(StatusEquals="Creating")
    elsewhere = sm.client.list_inference_components(EndpointNameEquals="other")
    # Then each filter applies
    assert {c["InferenceComponentName"] for c in by_endpoint["InferenceComponents"]} == {
        "ic-a",
        "ic-b",
    }
    assert [c["InferenceComponentName"] for c in creating["InferenceComponents"]] == ["ic-b"]
    assert elsewhere["InferenceComponents"] == []


def test_concurrent_callers_share_one_consistent_account(sm: Harness):
    # Given eight threads, each with its own client on the same stand-in
    clients = [sm.standin.attach(_client()) for _ in range(8)]
    errors: list[BaseException] = []

    def create(i: int) -> None:
        try:
            clients[i].create_model(
                ModelName=f"t-{i}", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}
            )
        except BaseException as err:  # surfaced below, not swallowed
            errors.append(err)

    # When they create models at once
    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every model exists exactly once
    assert errors == []
    assert sm.standin.resources()["models"] == {f"t-{i}" for i in range(8)}


def test_instance_counts_change_through_update_endpoint_weights_and_capacities(sm: Harness):
    # Given an InService endpoint with one instance
    sm.model()
    sm.classic_config()
    sm.endpoint_in_service()
    # When three instances are asked for
    sm.client.update_endpoint_weights_and_capacities(
        EndpointName="e1",
        DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 3}],
    )
    # Then it is Updating: three desired, one still serving, and no second change meanwhile
    (variant,) = sm.client.describe_endpoint(EndpointName="e1")["ProductionVariants"]
    assert (sm.status(), variant["DesiredInstanceCount"], variant["CurrentInstanceCount"]) == (
        "Updating",
        3,
        1,
    )
    again = _error(
        lambda: sm.client.update_endpoint_weights_and_capacities(
            EndpointName="e1",
            DesiredWeightsAndCapacities=[{"VariantName": "AllTraffic", "DesiredInstanceCount": 4}],
        )
    )
    assert again == (
        "ValidationException",
        f'Cannot update in-progress endpoint "{ARN}:endpoint/e1".',
    )
    # And after the update time three serve, on the same config
    sm.advance(300)
    described = sm.client.describe_endpoint(EndpointName="e1")
    (variant,) = described["ProductionVariants"]
    assert (described["EndpointStatus"], described["EndpointConfigName"]) == ("InService", "c1")
    assert (variant["DesiredInstanceCount"], variant["CurrentInstanceCount"]) == (3, 3)
    # And a variant the endpoint does not have is refused, as is a request botocore's model
    # would not send (no variant list)
    unknown = _error(
        lambda: sm.client.update_endpoint_weights_and_capacities(
            EndpointName="e1",
            DesiredWeightsAndCapacities=[{"VariantName": "Other", "DesiredInstanceCount": 1}],
        )
    )
    assert unknown[0] == "ValidationException" and "Other" in unknown[1]
    with pytest.raises(ParamValidationError):
        sm.client.update_endpoint_weights_and_capacities(EndpointName="e1")


ASYNC_CONFIG = {
    "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
    "OutputConfig": {
        "S3OutputPath": "s3://llmhost-jobs/async/output/",
        "S3FailurePath": "s3://llmhost-jobs/async/failure/",
        "NotificationConfig": {
            "SuccessTopic": "arn:aws:sns:us-east-1:123456789012:llmhost-async-success",
            "ErrorTopic": "arn:aws:sns:us-east-1:123456789012:llmhost-async-error",
            "IncludeInferenceResponseIn": [
                "SUCCESS_NOTIFICATION_TOPIC",
                "ERROR_NOTIFICATION_TOPIC",
            ],
        },
    },
}


def _async_config(sm: Harness, name: str = "async-c1", **changes: Any) -> None:
    sm.client.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "m1",
                "InstanceType": "ml.g5.2xlarge",
                "InitialInstanceCount": 1,
            }
        ],
        AsyncInferenceConfig={**ASYNC_CONFIG, **changes},
    )


def test_an_async_endpoint_shows_its_config_and_alone_scales_to_zero_instances(sm: Harness):
    # Given an async endpoint config and a real-time one
    sm.model()
    _async_config(sm)
    sm.classic_config()
    # When both endpoints are in service
    sm.endpoint_in_service("jobs", "async-c1")
    sm.endpoint_in_service("e1", "c1")
    # Then the async one describes its AsyncInferenceConfig, the real-time one none
    assert sm.client.describe_endpoint(EndpointName="jobs")["AsyncInferenceConfig"] == ASYNC_CONFIG
    assert "AsyncInferenceConfig" not in sm.client.describe_endpoint(EndpointName="e1")
    # And only the async endpoint's variant may go to zero instances
    zero = [{"VariantName": "AllTraffic", "DesiredInstanceCount": 0}]
    sm.client.update_endpoint_weights_and_capacities(
        EndpointName="jobs", DesiredWeightsAndCapacities=zero
    )
    sm.advance(300)
    (variant,) = sm.client.describe_endpoint(EndpointName="jobs")["ProductionVariants"]
    assert variant["CurrentInstanceCount"] == 0
    refused = _error(
        lambda: sm.client.update_endpoint_weights_and_capacities(
            EndpointName="e1", DesiredWeightsAndCapacities=zero
        )
    )
    assert refused[0] == "ValidationException" and "only asynchronous" in refused[1]


def test_async_configs_are_checked_like_sagemaker_checks_them(sm: Harness):
    sm.model()
    # A response included in a topic the config does not name is refused
    no_error_topic = {
        "S3OutputPath": "s3://llmhost-jobs/async/output/",
        "NotificationConfig": {
            "SuccessTopic": "arn:aws:sns:us-east-1:123456789012:s",
            "IncludeInferenceResponseIn": ["ERROR_NOTIFICATION_TOPIC"],
        },
    }
    code, message = _error(lambda: _async_config(sm, OutputConfig=no_error_topic))
    assert code == "ValidationException" and "ErrorTopic" in message
    # A topic that is no SNS ARN breaks the service model's pattern, as AWS words it
    bad_arn = {**ASYNC_CONFIG["OutputConfig"], "NotificationConfig": {"SuccessTopic": "topic"}}
    code, message = _error(lambda: _async_config(sm, "async-c2", OutputConfig=bad_arn))
    assert code == "ValidationException"
    assert "asyncInferenceConfig.outputConfig.notificationConfig.successTopic" in message
    # A serverless variant cannot be async
    refused = _error(
        lambda: sm.client.create_endpoint_config(
            EndpointConfigName="async-c3",
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": "m1",
                    "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 1},
                }
            ],
            AsyncInferenceConfig=ASYNC_CONFIG,
        )
    )
    assert refused[0] == "ValidationException" and "instance-based" in refused[1]
    assert sm.standin.resources()["endpoint_configs"] == set()
