"""Both Lambda handlers driven by the sample events in events/, against moto and the stand-in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import EVENTS, load_event
from llmhost import runtime
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext


@pytest.fixture
def handlers(standin: Any) -> tuple[Any, Any]:
    return load_handler("api", "llmhost-api"), load_handler("reconcile", "llmhost-reconcile")


def call(module: Any, event: dict[str, Any]) -> dict[str, Any]:
    return module.handler(event, LambdaContext("test"))


def _deployment_api_samples() -> list[str]:
    # ApiFunction serves /{proxy+}; serving samples name their own resources (ServeFunction).
    return sorted(
        p.name
        for p in Path(EVENTS).glob("api-*.json")
        if json.loads(p.read_text())["resource"] == "/{proxy+}"
    )


def _without_token(event: dict[str, Any]) -> dict[str, Any]:
    spec = json.loads(event["body"])
    del spec["model"]["token_secret_arn"]
    return {**event, "body": json.dumps(spec)}


@pytest.mark.parametrize("sample", _deployment_api_samples(), ids=lambda s: s[:-5])
def test_every_api_sample_gets_a_json_answer_and_never_a_500(handlers, sample: str) -> None:
    api, _ = handlers
    # Given the sample deployment exists (without its token: the sample's secret ARN, with
    # its random suffix, cannot exist in this emulated account)
    assert call(api, _without_token(load_event("api-create-deployment.json")))["statusCode"] == 201
    response = call(api, load_event(sample))
    body = json.loads(response["body"])
    assert response["statusCode"] < 500, body
    if sample == "api-create-deployment-invalid.json":
        assert response["statusCode"] == 422 and body["error"]["fields"]
    elif sample == "api-create-deployment.json":
        # its token secret does not exist here: refused before anything is stored
        assert response["statusCode"] == 422
        assert [f["field"] for f in body["error"]["fields"]] == ["model.token_secret_arn"]
    else:
        assert response["statusCode"] in {200, 201, 202}, body


def test_stream_event_reconciles_and_a_missing_token_secret_fails_cleanly(
    handlers, standin: Any
) -> None:
    from llmhost.lifecycle.record import DeploymentRecord
    from llmhost.specs import parse_spec

    api, reconcile = handlers
    # Given the sample deployment, whose token secret does not exist in this account: the
    # API refuses it, but a record written around the API (or a secret deleted since)
    # reaches the reconciler anyway
    event = load_event("api-create-deployment.json")
    assert call(api, event)["statusCode"] == 422
    spec = parse_spec(json.loads(event["body"]))
    runtime.registry().create(DeploymentRecord(name=spec.name, spec=spec))
    # When its spec change arrives on the stream
    result = call(reconcile, load_event("dynamodb-stream-spec-change.json"))
    # Then the reconciler stops with a reason naming the secret, and creates no model
    assert result["reconciled"][0]["status"] == "FAILED"
    record = runtime.registry().get("llama3-8b")
    assert "token secret" in record.status_reason
    assert standin.resources()["models"] == set()


def test_endpoint_event_and_schedule_drive_a_deployment_to_in_service(
    handlers, standin: Any, clock: Any
) -> None:
    api, reconcile = handlers
    event = _without_token(load_event("api-create-deployment.json"))
    assert call(api, event)["statusCode"] == 201
    # When the schedule sweeps, the endpoint gets created and is left to SageMaker
    assert call(reconcile, load_event("schedule-reconcile.json"))["reconciled"][0]["status"] == (
        "CREATING"
    )
    # When SageMaker reports the endpoint in service (the sample event names it)
    clock.advance(3600)
    standin.tick()
    result = call(reconcile, load_event("sagemaker-endpoint-state-change-inservice.json"))
    # Then the deployment is IN_SERVICE
    assert result["source"] == "sagemaker"
    assert result["reconciled"] == [{"name": "llama3-8b", "status": "IN_SERVICE", "steps": []}]


def test_events_for_unknown_endpoints_are_ignored(handlers) -> None:
    _, reconcile = handlers
    event = load_event("sagemaker-endpoint-state-change-failed.json")
    event["detail"]["EndpointName"] = "not-ours"
    assert call(reconcile, event)["reconciled"] == []
