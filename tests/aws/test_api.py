"""The deployment API through its Lambda handler, with API Gateway events and moto DynamoDB."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext, api_gateway_event

SPEC = {
    "name": "llama3-8b",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}


@pytest.fixture
def api(moto_aws: None) -> Any:
    module = load_handler("api", "llmhost-api")

    def call(method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        raw = json.dumps(body).encode() if body is not None else b""
        event = api_gateway_event(method, path, {"Content-Type": "application/json"}, raw, "tester")
        response = module.handler(event, LambdaContext("llmhost-api"))
        headers = response.get("multiValueHeaders") or {}
        assert headers["Content-Type"][0].startswith("application/json")
        return response["statusCode"], json.loads(response["body"])

    return call


def test_create_get_list(api: Any) -> None:
    # When a valid spec is posted
    status, body = api("POST", "/v1/deployments", SPEC)
    # Then it is stored as PENDING with its first history entry
    assert status == 201
    assert body["status"] == "PENDING" and body["generation"] == 1
    assert body["history"][0]["event"] == "Created"
    status, body = api("GET", "/v1/deployments/llama3-8b")
    assert status == 200 and body["spec"]["model"]["model_id"] == SPEC["model"]["model_id"]
    status, body = api("GET", "/v1/deployments")
    assert status == 200 and [d["name"] for d in body["deployments"]] == ["llama3-8b"]


def test_duplicate_is_409(api: Any) -> None:
    api("POST", "/v1/deployments", SPEC)
    status, body = api("POST", "/v1/deployments", SPEC)
    assert status == 409 and body["error"]["code"] == "already_exists"


def test_invalid_spec_is_422_with_field_paths(api: Any) -> None:
    bad = {**SPEC, "scaling": {"min_capacity": 3, "max_capacity": 1}}
    status, body = api("POST", "/v1/deployments", bad)
    assert status == 422
    assert "scaling.min_capacity" in [f["field"] for f in body["error"]["fields"]]
    # and nothing was stored
    assert api("GET", "/v1/deployments")[1]["count"] == 0


def test_unknown_field_and_wrong_type_name_their_paths(api: Any) -> None:
    bad = {**SPEC, "hosting": {"kind": "dedicated", "instance_count": "many", "gpus": 2}}
    status, body = api("POST", "/v1/deployments", bad)
    fields = {f["field"] for f in body["error"]["fields"]}
    assert status == 422
    assert {"hosting.instance_count", "hosting.gpus"} <= fields


def test_malformed_json_is_400_with_line_and_column(api: Any, moto_aws: None) -> None:
    module = load_handler("api", "llmhost-api")
    body = b'{"name": "x",\n "model": }'
    event = api_gateway_event("POST", "/v1/deployments", {}, body, "tester")
    response = module.handler(event, LambdaContext("llmhost-api"))
    assert response["statusCode"] == 400
    error = json.loads(response["body"])["error"]
    # It says where, and what was expected there (it once said "24: JSON decode error")
    assert error["code"] == "invalid_json"
    assert "line 2, column 11" in error["message"] and "expected a value" in error["message"]


def test_unknown_deployment_and_route_are_404(api: Any) -> None:
    status, body = api("GET", "/v1/deployments/nope")
    assert status == 404 and "nope" in body["error"]["message"]
    status, body = api("GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "route_not_found"


def test_patch_bumps_generation_and_rejects_kind_change(api: Any) -> None:
    api("POST", "/v1/deployments", SPEC)
    status, body = api(
        "PATCH", "/v1/deployments/llama3-8b", {"generation": {"max_new_tokens": 256}}
    )
    assert status == 200 and body["generation"] == 2
    assert body["spec"]["generation"]["max_new_tokens"] == 256
    status, body = api(
        "PATCH",
        "/v1/deployments/llama3-8b",
        {"hosting": {"kind": "shared", "pool": "p1", "instance_type": "ml.g5.12xlarge"}},
    )
    assert status == 422 and body["error"]["fields"][0]["field"] == "hosting.kind"


def test_delete_is_202_and_the_record_reads_deleted_until_the_name_is_reused(api: Any) -> None:
    from llmhost import runtime

    api("POST", "/v1/deployments", SPEC)
    status, body = api("DELETE", "/v1/deployments/llama3-8b")
    assert status == 202 and body["status"] == "DELETING" and body["desired_state"] == "deleted"
    # deleting again is idempotent
    assert api("DELETE", "/v1/deployments/llama3-8b")[0] == 202
    # and a PATCH while deleting is refused
    status, _ = api("PATCH", "/v1/deployments/llama3-8b", {"tags": {"team": "x"}})
    assert status == 409
    # When the reconciler has removed everything
    registry = runtime.registry()
    registry.save(registry.get("llama3-8b").with_event("Deleted", status="DELETED"))
    # Then GET answers the record as DELETED, as the README's "ends as DELETED" says
    status, body = api("GET", "/v1/deployments/llama3-8b")
    assert status == 200 and body["status"] == "DELETED"
    assert body["history"][-1]["event"] == "Deleted"
    # consistent with the list: hidden by default, shown with include_deleted
    assert api("GET", "/v1/deployments")[1]["count"] == 0
    listed = api("GET", "/v1/deployments?include_deleted=true")[1]["deployments"]
    assert [(d["name"], d["status"]) for d in listed] == [("llama3-8b", "DELETED")]
    # a deleted deployment cannot change or be deleted again: it is gone
    for method, path in (
        ("PATCH", "/v1/deployments/llama3-8b"),
        ("POST", "/v1/deployments/llama3-8b/sleep"),
        ("DELETE", "/v1/deployments/llama3-8b"),
        ("GET", "/v1/deployments/llama3-8b/scaling"),
    ):
        status, body = api(method, path, {"tags": {}} if method == "PATCH" else None)
        assert status == 404 and "was deleted" in body["error"]["message"], (method, path)
    # And the name can be used again; GET then shows the new deployment
    assert api("POST", "/v1/deployments", SPEC)[0] == 201
    status, body = api("GET", "/v1/deployments/llama3-8b")
    assert status == 200 and body["status"] == "PENDING"


def test_sleep_and_wake_set_desired_state(api: Any) -> None:
    api("POST", "/v1/deployments", SPEC)
    status, body = api("POST", "/v1/deployments/llama3-8b/sleep")
    assert status == 202 and body["desired_state"] == "sleeping"
    status, body = api("POST", "/v1/deployments/llama3-8b/wake")
    assert status == 202 and body["desired_state"] == "in_service"


def test_plan_creates_nothing(api: Any) -> None:
    status, body = api("POST", "/v1/plan", {**SPEC, "hosting": {"kind": "dedicated"}})
    assert status == 200
    plan = body["plan"]
    assert plan["instance_type"].startswith("ml.")
    assert plan["cost"]["hourly_min"] > 0
    assert api("GET", "/v1/deployments")[1]["count"] == 0


def test_pool_name_cannot_shadow_a_deployment(api: Any) -> None:
    api("POST", "/v1/deployments", SPEC)
    shared = {
        "name": "zephyr",
        "model": {"kind": "hub", "model_id": "HuggingFaceH4/zephyr-7b-beta"},
        "hosting": {"kind": "shared", "pool": "llama3-8b", "instance_type": "ml.g5.12xlarge"},
    }
    status, body = api("POST", "/v1/deployments", shared)
    assert status == 409 and "hosting.pool" in body["error"]["message"]


def test_openapi_document_lists_every_route(api: Any) -> None:
    status, body = api("GET", "/v1/openapi.json")
    assert status == 200
    paths = body["paths"]
    assert {"/v1/deployments", "/v1/deployments/{name}", "/v1/plan"} <= set(paths)
    # the serving routes (another function) are in the same document
    assert {"/v1/rag", "/v1/chat/completions", "/v1/collections/{name}/documents"} <= set(paths)
    assert "DeploymentSpec" in json.dumps(body["components"])


def test_shared_spec_without_instance_type_joins_its_pools_type(api: Any) -> None:
    first = {
        "name": "zephyr",
        "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"},
        "hosting": {"kind": "shared", "pool": "pool-a", "instance_type": "ml.g5.12xlarge"},
    }
    assert api("POST", "/v1/deployments", first)[0] == 201
    # When a second model joins the pool without naming an instance type
    second = {
        "name": "mistral",
        "model": {"model_id": "mistralai/Mistral-7B-Instruct-v0.2"},
        "hosting": {"kind": "shared", "pool": "pool-a"},
    }
    status, body = api("POST", "/v1/deployments", second)
    # Then it is pinned to the pool's instance type, stored in its spec
    assert status == 201
    assert body["spec"]["hosting"]["instance_type"] == "ml.g5.12xlarge"
    # And a first model in a new pool gets the planner's choice, also stored
    third = {**second, "name": "solo", "hosting": {"kind": "shared", "pool": "pool-b"}}
    status, body = api("POST", "/v1/deployments", third)
    assert status == 201 and body["spec"]["hosting"]["instance_type"].startswith("ml.")


# ---- the GPU capacity cap (GPU_CAPACITY_CAP) ---------------------------------------------


def test_create_over_the_gpu_cap_is_409_and_nothing_is_written(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cap of 3 GPU units and a deployment that needs 2 at its minimum
    monkeypatch.setenv("GPU_CAPACITY_CAP", "3")
    assert (
        api(
            "POST", "/v1/deployments", {**SPEC, "hosting": {**SPEC["hosting"], "instance_count": 2}}
        )[0]
        == 201
    )
    # When another asks for a minimum of 2
    other = {**SPEC, "name": "other", "scaling": {"min_capacity": 2, "max_capacity": 4}}
    status, body = api("POST", "/v1/deployments", other)
    # Then it is refused naming the field and the fix, and not stored
    assert status == 409 and body["error"]["code"] == "gpu_capacity_cap"
    message = body["error"]["message"]
    assert message.startswith("scaling.min_capacity:")
    assert "raise the GpuCapacityCap stack parameter or lower scaling.min_capacity" in message
    assert "llama3-8b 2" in message
    assert api("GET", "/v1/deployments/other")[0] == 404


def test_update_and_wake_over_the_gpu_cap_are_409(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPU_CAPACITY_CAP", "2")
    api("POST", "/v1/deployments", SPEC)
    api("POST", "/v1/deployments", {**SPEC, "name": "other"})
    # When an update raises a minimum past the cap
    status, body = api("PATCH", "/v1/deployments/llama3-8b", {"hosting": {"instance_count": 2}})
    # Then it is refused naming hosting.instance_count, and the spec is unchanged
    assert status == 409 and body["error"]["message"].startswith("hosting.instance_count:")
    assert api("GET", "/v1/deployments/llama3-8b")[1]["generation"] == 1
    # When one sleeps, another deployment takes its unit, and the sleeper asks to wake
    assert api("POST", "/v1/deployments/other/sleep")[0] == 202
    api("POST", "/v1/deployments", {**SPEC, "name": "third"})
    status, body = api("POST", "/v1/deployments/other/wake")
    # Then the wake is refused and the deployment stays asleep
    assert status == 409 and "waking it needs 1 GPU unit" in body["error"]["message"]
    assert api("GET", "/v1/deployments/other")[1]["desired_state"] == "sleeping"
    # And with no cap everything goes through
    monkeypatch.setenv("GPU_CAPACITY_CAP", "0")
    assert api("POST", "/v1/deployments/other/wake")[0] == 202


def test_openapi_documents_every_status_and_error_body_the_api_answers(api: Any) -> None:
    from openapi_spec_validator import validate

    status, doc = api("GET", "/v1/openapi.json")
    assert status == 200
    # A valid OpenAPI document (checked by a validator we did not write)
    validate(doc)
    ops = {(m, p): op for p, item in doc["paths"].items() for m, op in item.items()}
    # The error body is the one llmhost sends, not FastAPI's {"detail": [...]}
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["code", "message"]
    assert "fields" in error["properties"]["error"]["properties"]
    for key, op in ops.items():
        codes = set(op["responses"])
        # every route: IAM's 403 and the gateway's 504; a success status
        assert {"403", "504"} <= codes, key
        assert any(c.startswith("2") for c in codes), key
        if "requestBody" in op:
            assert {"400", "413", "415", "422"} <= codes, key
        assert "detail" not in json.dumps(op["responses"]), key
    # the statuses each route really answers
    assert set(ops[("post", "/v1/deployments")]["responses"]) >= {"201", "409"}
    assert "200" not in ops[("post", "/v1/deployments")]["responses"]
    assert set(ops[("delete", "/v1/deployments/{name}")]["responses"]) >= {"202", "404"}
    assert "200" not in ops[("delete", "/v1/deployments/{name}")]["responses"]
    assert set(ops[("post", "/v1/deployments/{name}/wake")]["responses"]) >= {"202", "409"}
    chat = ops[("post", "/v1/chat/completions")]["responses"]
    assert {"404", "429", "502", "503", "504"} <= set(chat)
    assert "Retry-After" in chat["503"]["headers"] and "Retry-After" in chat["429"]["headers"]
    # IAM's refusal carries API Gateway's own body
    assert chat["403"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/GatewayError"
    }
    # a deployment's record is described from the record's model
    view = doc["components"]["schemas"]["DeploymentView"]
    assert {"name", "spec", "status", "history", "endpoint_name"} <= set(view["properties"])
    assert "version" not in view["properties"]


def test_every_error_the_api_answers_matches_its_documented_status(api: Any) -> None:
    _, doc = api("GET", "/v1/openapi.json")
    responses = doc["paths"]["/v1/deployments/{name}"]["patch"]["responses"]
    # Given answers the API really gives on that route
    api("POST", "/v1/deployments", SPEC)
    for body, expected in (
        ({"scaling": {"max_capacity": 0}}, 422),
        ({"name": "renamed"}, 422),
    ):
        got, _ = api("PATCH", "/v1/deployments/llama3-8b", body)
        assert got == expected and str(got) in responses
    got, _ = api("PATCH", "/v1/deployments/missing", {"tags": {}})
    assert got == 404 and "404" in responses
