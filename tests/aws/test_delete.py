"""Delete always finishes: from any status, whatever became of the spec, nothing is left.

Through the API (POST, PATCH, DELETE as a user sends them) and the reconciler, against moto
and the SageMaker stand-in. A delete must not need the spec to be buildable: a release that
drops an image (or a region from the image table) leaves specs that no longer resolve, and
their endpoints must still go away.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from test_lifecycle import Harness, existing

from conftest import api_function

EMPTY = {
    "models": set(),
    "endpoint_configs": set(),
    "endpoints": set(),
    "inference_components": set(),
}

# Each kind with autoscaling, so a delete has policies and alarms to remove too.
SPECS: dict[str, dict[str, Any]] = {
    "dedicated": {
        "name": "llama",
        "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
        "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
        "scaling": {"min_capacity": 1, "max_capacity": 2, "scale_to_zero": True},
    },
    "shared": {
        "name": "zephyr",
        "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
        "hosting": {"kind": "shared", "pool": "gpu-pool", "instance_type": "ml.g5.12xlarge"},
        "scaling": {"min_capacity": 0, "max_capacity": 2, "scale_to_zero": True},
    },
    "serverless": {
        "name": "flan",
        "model": {"kind": "hub", "model_id": "google/flan-t5-small"},
        "engine": {"name": "hf-inference"},
        "hosting": {
            "kind": "serverless",
            "memory_mb": 4096,
            "max_concurrency": 10,
            "provisioned_concurrency": 2,
        },
        "scaling": {"min_capacity": 1, "max_capacity": 4},
    },
    "async": {
        "name": "mistral-jobs",
        "model": {"kind": "hub", "model_id": "mistralai/Mistral-7B-Instruct-v0.2"},
        "hosting": {"kind": "async", "instance_type": "ml.g5.2xlarge"},
        "scaling": {"min_capacity": 0, "max_capacity": 2},
    },
}
# A change that makes SageMaker roll the deployment (a new config or component spec).
ROLLS: dict[str, dict[str, Any]] = {
    "dedicated": {"hosting": {"kind": "dedicated", "instance_type": "ml.g5.4xlarge"}},
    "shared": {"hosting": {**SPECS["shared"]["hosting"], "memory_mb": 16384}},
    "serverless": {"hosting": {**SPECS["serverless"]["hosting"], "memory_mb": 6144}},
    "async": {"hosting": {"kind": "async", "instance_type": "ml.g5.4xlarge"}},
}


@pytest.fixture
def api(standin: Any) -> Any:
    return api_function()


@pytest.fixture
def harness(standin: Any, clock: Any) -> Harness:
    return Harness(standin, clock)


def drop_region_from_image_table(monkeypatch: pytest.MonkeyPatch, region: str) -> None:
    """A later release's image table without ``region``: every stored spec stops resolving."""
    from llmhost import images

    table = copy.deepcopy(images._table())
    for engine, versions in table.items():
        if engine in {"defaults", "frameworks", "generated_by", "sdk_version"}:
            continue
        for uris in versions.values():
            uris.pop(region, None)
    monkeypatch.setattr(images, "_table", lambda: table)


def left_in_aws(harness: Harness) -> dict[str, Any]:
    """Everything llmhost could leave behind: SageMaker resources, scaling, alarms."""
    from llmhost import aws

    scaling = aws.client("application-autoscaling")
    return {
        **existing(harness),
        "scalable_targets": scaling.describe_scalable_targets(ServiceNamespace="sagemaker")[
            "ScalableTargets"
        ],
        "scaling_policies": scaling.describe_scaling_policies(ServiceNamespace="sagemaker")[
            "ScalingPolicies"
        ],
        "alarms": aws.client("cloudwatch").describe_alarms()["MetricAlarms"],
    }


NOTHING = {**EMPTY, "scalable_targets": [], "scaling_policies": [], "alarms": []}


@pytest.mark.parametrize("kind", ["dedicated", "shared", "serverless", "async"])
def test_delete_finishes_when_the_spec_can_no_longer_be_built(
    harness: Harness, api: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    spec = SPECS[kind]
    name = spec["name"]
    # Given a deployment in service, with its autoscaling applied
    assert api("POST", "/v1/deployments", spec)[0] == 201
    assert harness.settle(name).status == "IN_SERVICE"
    # When its spec can no longer be built (the image table lost the region): the API
    # refuses any change that would need it, and the reconciler finds it unbuildable
    drop_region_from_image_table(monkeypatch, "us-east-1")
    assert api("PATCH", f"/v1/deployments/{name}", {"generation": {"max_new_tokens": 64}})[0] == 422
    harness.reconciler.reconcile(name)
    record = harness.registry.get(name)
    # Then it is FAILED and its endpoint still serves
    assert record.status == "FAILED", record.status_reason
    assert "cannot build" in record.status_reason
    assert existing(harness)["endpoints"]
    # When it is deleted
    assert api("DELETE", f"/v1/deployments/{name}")[0] == 202
    record = harness.settle(name)
    # Then the delete finishes and nothing of it is left: no endpoint answering or billing
    assert record.status == "DELETED", record.status_reason
    assert left_in_aws(harness) == NOTHING
    status, body = api("GET", f"/v1/deployments/{name}")
    assert (status, body["status"]) == (200, "DELETED")


def _bring_to(state: str, kind: str, harness: Harness, api: Any, monkeypatch: Any) -> str:
    """Put a fresh deployment of ``kind`` in ``state``; returns the status it then has."""
    spec = SPECS[kind]
    name = spec["name"]
    if state == "FAILED-by-sagemaker":
        what = "inference-component" if kind == "shared" else "endpoint"
        harness.standin.fail_next(what, name, "CUDA out of memory while loading weights")
    assert api("POST", "/v1/deployments", spec)[0] == 201
    if state == "PENDING":
        return harness.registry.get(name).status
    if state == "CREATING":
        harness.reconciler.reconcile(name)  # the endpoint (or component) is now Creating
        return harness.registry.get(name).status
    record = harness.settle(name)
    if state in {"IN_SERVICE", "FAILED-by-sagemaker"}:
        return record.status
    if state == "UPDATING":
        assert api("PATCH", f"/v1/deployments/{name}", ROLLS[kind])[0] == 200
        harness.reconciler.reconcile(name)  # SageMaker is now rolling to the new config
        return harness.registry.get(name).status
    if state == "SLEEPING":
        assert api("POST", f"/v1/deployments/{name}/sleep")[0] == 202
        return harness.settle(name).status
    if state == "FAILED-unbuildable":
        drop_region_from_image_table(monkeypatch, "us-east-1")
        harness.reconciler.reconcile(name)
        return harness.registry.get(name).status
    raise AssertionError(state)


STATES = {
    "PENDING": "PENDING",
    "CREATING": "CREATING",
    "IN_SERVICE": "IN_SERVICE",
    "UPDATING": "UPDATING",
    "SLEEPING": "SLEEPING",
    "FAILED-by-sagemaker": "FAILED",
    "FAILED-unbuildable": "FAILED",
}


# Every status each kind can be in: a serverless deployment cannot be put to sleep
# (SageMaker scales it), so it has no SLEEPING case.
KIND_STATES = [
    (kind, state)
    for kind in ("dedicated", "shared", "serverless", "async")
    for state in STATES
    if not (kind == "serverless" and state == "SLEEPING")
]


@pytest.mark.parametrize(("kind", "state"), KIND_STATES)
def test_delete_converges_from_every_status(
    harness: Harness, api: Any, monkeypatch: pytest.MonkeyPatch, kind: str, state: str
) -> None:
    name = SPECS[kind]["name"]
    # Given a deployment in `state`
    assert _bring_to(state, kind, harness, api, monkeypatch) == STATES[state]
    # When it is deleted
    assert api("DELETE", f"/v1/deployments/{name}")[0] == 202
    record = harness.settle(name)
    # Then the delete converges: DELETED, and nothing of it is left in AWS
    assert record.status == "DELETED", record.status_reason
    assert left_in_aws(harness) == NOTHING
