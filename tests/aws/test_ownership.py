"""llmhost changes only what it created: tags on everything it makes, and hands off the rest.

A SageMaker endpoint that exists under a name a deployment would use, without this stack's
``llmhost:stack`` tag, is someone else's: the API refuses to create over it (409, naming it),
the observer never adopts it, and the reconciler neither updates nor deletes it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import STACK, api_function
from llmhost import aws, runtime
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.specs import parse_spec

DEDICATED = {
    "name": "llama",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
    "tags": {"team": "search"},
}
SHARED = {
    "name": "zephyr",
    "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
    "hosting": {"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"},
    "scaling": {"min_capacity": 0, "max_capacity": 2, "scale_to_zero": True, "idle_minutes": 30},
}
ROLE = "arn:aws:iam::123456789012:role/someone-elses"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/theirs:latest"


def foreign_endpoint(name: str, tags: dict[str, str] | None = None, instance: str = "") -> None:
    """An endpoint someone created outside llmhost (untagged unless ``tags``)."""
    sm = aws.client("sagemaker")
    extra = {"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]} if tags else {}
    sm.create_model(
        ModelName=f"{name}-theirs", ExecutionRoleArn=ROLE, PrimaryContainer={"Image": IMAGE}
    )
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-theirs",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": f"{name}-theirs",
                "InstanceType": instance or "ml.g5.2xlarge",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-theirs", **extra)


@pytest.fixture
def api(moto_aws: None) -> Any:
    """The API handler against moto, whose SageMaker keeps endpoints and their tags."""
    return api_function()


# ----------------------------------------------------------------------------------- the API


@pytest.mark.parametrize(
    ("spec", "endpoint", "tags"),
    [
        (DEDICATED, "llama", None),
        (SHARED, "gpu-pool", None),
        # tagged by llmhost, but by another stack in the same account
        (DEDICATED, "llama", {"llmhost:stack": "other", "llmhost:deployment": "llama"}),
        # this stack's, but another resource's: a shared pool's endpoint named like the
        # deployment, or a dedicated deployment's endpoint named like the pool
        (DEDICATED, "llama", {"llmhost:stack": STACK, "llmhost:pool": "llama"}),
        (SHARED, "gpu-pool", {"llmhost:stack": STACK, "llmhost:deployment": "gpu-pool"}),
    ],
    ids=[
        "untagged-endpoint",
        "untagged-pool",
        "other-stack",
        "pool-endpoint",
        "dedicated-endpoint",
    ],
)
def test_create_over_an_endpoint_llmhost_did_not_create_is_409_naming_it(
    api: Any, spec: dict[str, Any], endpoint: str, tags: dict[str, str] | None
) -> None:
    # Given an endpoint (moto's) with the name the spec would use, not tagged for this stack
    foreign_endpoint(endpoint, tags, instance="ml.m5.large")
    # When the spec is posted
    status, body = api("POST", "/v1/deployments", spec)
    # Then it is refused, naming the endpoint and what to do, and nothing is stored
    assert status == 409, body
    assert body["error"]["code"] == "endpoint_not_owned"
    assert f"'{endpoint}'" in body["error"]["message"]
    field = "hosting.pool" if spec is SHARED else "name"
    assert f"choose another {field}" in body["error"]["message"]
    assert api("GET", "/v1/deployments")[1]["count"] == 0


def test_an_endpoint_tagged_for_this_stack_is_no_conflict(api: Any) -> None:
    # Given the endpoint of an earlier deployment of this stack, still there
    foreign_endpoint(
        "llama", {"llmhost:stack": STACK, "llmhost:deployment": "llama"}, instance="ml.m5.large"
    )
    # Then creating the deployment again is accepted
    assert api("POST", "/v1/deployments", DEDICATED)[0] == 201


def test_wake_into_an_endpoint_that_appeared_while_asleep_is_409(api: Any) -> None:
    # Given a sleeping deployment (its endpoint deleted) whose name someone then took
    assert api("POST", "/v1/deployments", DEDICATED)[0] == 201
    assert api("POST", "/v1/deployments/llama/sleep")[0] == 202
    foreign_endpoint("llama", instance="ml.m5.large")
    # When it is woken, or changed while asleep and then woken
    assert api("PATCH", "/v1/deployments/llama", {"tags": {"team": "ml"}})[0] == 200
    status, body = api("POST", "/v1/deployments/llama/wake")
    # Then the wake is refused, naming the endpoint; the deployment stays asleep
    assert status == 409 and "'llama'" in body["error"]["message"]
    assert api("GET", "/v1/deployments/llama")[1]["desired_state"] == "sleeping"


def test_patch_of_a_deployment_in_service_over_a_foreign_endpoint_is_409(api: Any) -> None:
    # Given a deployment whose endpoint name was taken before the reconciler created it
    assert api("POST", "/v1/deployments", DEDICATED)[0] == 201
    foreign_endpoint("llama", instance="ml.m5.large")
    # When its spec changes
    status, body = api("PATCH", "/v1/deployments/llama", {"tags": {"team": "ml"}})
    # Then the change is refused: applying it would update that endpoint
    assert status == 409 and body["error"]["code"] == "endpoint_not_owned"


def test_spec_tags_cannot_use_llmhosts_own_keys(api: Any) -> None:
    spec = {**DEDICATED, "tags": {"llmhost:stack": "mine"}}
    status, body = api("POST", "/v1/deployments", spec)
    assert status == 422
    (issue,) = body["error"]["fields"]
    assert issue["field"] == "tags" and "llmhost:" in issue["message"]


# ---------------------------------------------------------------------------- the reconciler


def _settle(standin: Any, clock: Any, name: str, want: set[str]) -> DeploymentRecord:
    reconciler, registry = runtime.reconciler(), runtime.registry()
    for _ in range(40):
        reconciler.reconcile(name)
        record = registry.find(name)
        assert record is not None
        if record.status in want:
            return record
        clock.advance(900)
        standin.tick()
    raise AssertionError(f"{name} did not settle: {registry.find(name)}")


def _snapshot(standin: Any, endpoint: str) -> tuple[Any, ...]:
    ep = standin.describe("endpoint", endpoint)
    assert ep is not None, f"the endpoint {endpoint} is gone"
    config = standin.describe("endpoint-config", ep["EndpointConfigName"])
    return ep["EndpointStatus"], ep["EndpointConfigName"], json.dumps(config, default=str)


@pytest.mark.parametrize(
    ("spec", "tags", "whose"),
    [
        (DEDICATED, None, "no llmhost:stack tag"),
        (SHARED, None, "no llmhost:stack tag"),
        # this stack's shared pool named like the deployment: another deployment's endpoint
        (DEDICATED, {"llmhost:stack": STACK, "llmhost:pool": "llama"}, "another llmhost"),
    ],
    ids=["dedicated", "shared-pool", "this-stacks-pool"],
)
def test_reconciler_never_adopts_updates_or_deletes_an_endpoint_it_did_not_create(
    standin: Any, clock: Any, spec: dict[str, Any], tags: dict[str, str] | None, whose: str
) -> None:
    # Given an endpoint, in service, with the name the deployment needs but not tagged as
    # its own (it appeared after the API's check, or the record was written around the API)
    endpoint = spec["hosting"].get("pool", spec["name"])
    foreign_endpoint(endpoint, tags, instance="ml.g5.12xlarge" if spec is SHARED else "")
    clock.advance(900)
    standin.tick()
    before = _snapshot(standin, endpoint)
    name = spec["name"]
    runtime.registry().create(DeploymentRecord(name=name, spec=parse_spec(spec)))
    # When the reconciler runs
    record = _settle(standin, clock, name, {"FAILED", "IN_SERVICE"})
    # Then the deployment failed, naming the endpoint, and the endpoint is untouched
    assert record.status == "FAILED"
    assert f"endpoint '{endpoint}' already exists" in record.status_reason
    assert whose in record.status_reason
    assert _snapshot(standin, endpoint) == before
    assert not standin.resources()["inference_components"]
    # When the deployment is deleted
    registry = runtime.registry()
    registry.save(registry.get(name).model_copy(update={"desired_state": "deleted"}))
    record = _settle(standin, clock, name, {"DELETED"})
    # Then the delete finishes and the endpoint, its config and model are all still there
    assert _snapshot(standin, endpoint) == before
    assert f"{endpoint}-theirs" in standin.resources()["models"]


def test_a_deployment_goes_on_once_the_foreign_endpoint_is_gone(standin: Any, clock: Any) -> None:
    # Given a deployment stopped by someone else's endpoint
    foreign_endpoint("llama")
    clock.advance(900)
    standin.tick()
    runtime.registry().create(DeploymentRecord(name="llama", spec=parse_spec(DEDICATED)))
    assert _settle(standin, clock, "llama", {"FAILED"}).status == "FAILED"
    # When its owner deletes that endpoint
    aws.client("sagemaker").delete_endpoint(EndpointName="llama")
    clock.advance(900)
    standin.tick()
    # Then llmhost creates its own, without a spec change
    assert _settle(standin, clock, "llama", {"IN_SERVICE"}).status == "IN_SERVICE"


def _sagemaker_tags(arn: str) -> dict[str, str]:
    page = aws.client("sagemaker").list_tags(ResourceArn=arn)
    return {t["Key"]: t["Value"] for t in page["Tags"]}


def test_every_resource_llmhost_creates_carries_the_stack_and_its_owner(
    standin: Any, clock: Any
) -> None:
    # Given a dedicated and a shared deployment (scale to zero: target, policies, alarms)
    registry = runtime.registry()
    for spec in (DEDICATED, SHARED):
        registry.create(DeploymentRecord(name=spec["name"], spec=parse_spec(spec)))
    # When the reconciler brings both into service
    for name in ("llama", "zephyr"):
        _settle(standin, clock, name, {"IN_SERVICE"})
        _settle(standin, clock, name, {"IN_SERVICE"})  # scaling applied after in service
    assert registry.get("zephyr").scaling_applied
    sm = aws.client("sagemaker")
    llama = {"llmhost:stack": STACK, "llmhost:deployment": "llama"}
    zephyr = {"llmhost:stack": STACK, "llmhost:deployment": "zephyr"}
    pool = {"llmhost:stack": STACK, "llmhost:pool": "gpu-pool"}
    # Then every SageMaker resource carries the stack and its deployment (or pool) tags
    # (and the spec's own tags where the resource is the deployment's alone)
    seen: dict[str, dict[str, str]] = {}
    for model in sm.list_models()["Models"]:
        seen[model["ModelName"]] = _sagemaker_tags(model["ModelArn"])
    for config in sm.list_endpoint_configs()["EndpointConfigs"]:
        seen[config["EndpointConfigName"]] = _sagemaker_tags(config["EndpointConfigArn"])
    for endpoint in sm.list_endpoints()["Endpoints"]:
        seen[endpoint["EndpointName"]] = _sagemaker_tags(endpoint["EndpointArn"])
    (component,) = sm.list_inference_components()["InferenceComponents"]
    seen["component"] = _sagemaker_tags(component["InferenceComponentArn"])
    assert len(seen) == 7  # 2 models, 2 configs, 2 endpoints, 1 component
    for name, tags in seen.items():
        if name.startswith("llama"):
            assert tags == {**llama, "team": "search"}, name
        elif name.startswith("gpu-pool"):
            assert tags == pool, name
        else:
            assert tags == zephyr, name
    # And so do the alarms (moto's CloudWatch) and the scalable target (the stand-in)
    cloudwatch = aws.client("cloudwatch")
    alarms = cloudwatch.describe_alarms(AlarmNamePrefix="llmhost-zephyr-")["MetricAlarms"]
    assert {a["AlarmName"] for a in alarms} == {
        "llmhost-zephyr-idle",
        "llmhost-zephyr-no-capacity",
        "llmhost-zephyr-overload",
        "llmhost-zephyr-underload",
    }
    for alarm in alarms:
        listed = cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
        assert {t["Key"]: t["Value"] for t in listed} == zephyr, alarm["AlarmName"]
    assert standin.autoscaling.target_tags("inference-component/zephyr") == zephyr
