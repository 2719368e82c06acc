"""``resources`` in GET /v1/deployments/{name}: the SageMaker names the reconciler observed,
through the API and the reconciler against the emulators."""

from __future__ import annotations

from typing import Any

import pytest
from test_lifecycle import PATCHES, SPECS, Harness

from conftest import api_function
from llmhost import runtime

NONE = {"model": None, "endpoint_config": None, "endpoint": None, "inference_component": None}


@pytest.fixture
def api(standin: Any) -> Any:
    return api_function()


def running(standin: Any, name: str, kind: str) -> dict[str, str | None]:
    """What SageMaker (the stand-in) says the deployment runs on."""
    if kind == "shared":
        component = standin.describe("inference-component", name)
        endpoint = standin.describe("endpoint", component["EndpointName"])
        return {
            "model": component["Specification"]["ModelName"],
            "endpoint_config": endpoint["EndpointConfigName"],
            "endpoint": endpoint["EndpointName"],
            "inference_component": name,
        }
    endpoint = standin.describe("endpoint", name)
    config = standin.describe("endpoint-config", endpoint["EndpointConfigName"])
    return {
        "model": config["ProductionVariants"][0]["ModelName"],
        "endpoint_config": endpoint["EndpointConfigName"],
        "endpoint": name,
        "inference_component": None,
    }


@pytest.mark.parametrize("kind", ["dedicated", "shared", "serverless"])
def test_resources_follow_what_sagemaker_runs(
    api: Any, standin: Any, clock: Any, kind: str
) -> None:
    spec, name = SPECS[kind], SPECS[kind]["name"]
    harness = Harness(standin, clock)
    # Given a new deployment: nothing exists yet
    status, body = api("POST", "/v1/deployments", spec)
    assert status == 201 and body["resources"] == NONE
    # When the reconciler brings it into service
    assert harness.settle(name).status == "IN_SERVICE"
    # Then GET names exactly what SageMaker runs for it
    first = api("GET", f"/v1/deployments/{name}")[1]["resources"]
    assert first == running(standin, name, kind)
    # When a spec change rolls out new resources, the names follow
    assert api("PATCH", f"/v1/deployments/{name}", PATCHES[kind])[0] == 200
    assert harness.settle(name).status == "IN_SERVICE"
    second = api("GET", f"/v1/deployments/{name}")[1]["resources"]
    assert second == running(standin, name, kind)
    if kind != "shared":
        assert second["endpoint_config"] != first["endpoint_config"]
    # When it is deleted, the names are cleared with the resources
    assert api("DELETE", f"/v1/deployments/{name}")[0] == 202
    assert harness.settle(name).status == "DELETED"
    assert not any(standin.resources().values())
    assert runtime.registry().get(name).resources.model_dump() == NONE


def test_a_sleeping_dedicated_deployment_names_no_endpoint(
    api: Any, standin: Any, clock: Any
) -> None:
    spec, name = SPECS["dedicated"], SPECS["dedicated"]["name"]
    harness = Harness(standin, clock)
    api("POST", "/v1/deployments", spec)
    assert harness.settle(name).status == "IN_SERVICE"
    awake = api("GET", f"/v1/deployments/{name}")[1]["resources"]
    assert awake["endpoint"] == name and awake["model"] and awake["endpoint_config"]
    # When it sleeps (its endpoint is deleted; the model and config are kept for the wake)
    assert api("POST", f"/v1/deployments/{name}/sleep")[0] == 202
    assert harness.settle(name).status == "SLEEPING"
    asleep = api("GET", f"/v1/deployments/{name}")[1]["resources"]
    assert asleep == {**awake, "endpoint": None}
    # And when it wakes, the endpoint is back
    assert api("POST", f"/v1/deployments/{name}/wake")[0] == 202
    assert harness.settle(name).status == "IN_SERVICE"
    assert api("GET", f"/v1/deployments/{name}")[1]["resources"] == awake
