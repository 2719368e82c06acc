"""The applier's contract: idempotent creates and deletes, busy vs. rejected (stand-in)."""

from __future__ import annotations

from typing import Any

import pytest

from llmhost import runtime
from llmhost.errors import SageMakerBusy, SageMakerRejected
from llmhost.lifecycle import planner as p
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.specs import parse_spec

SPEC = {
    "name": "llama",
    "model": {"model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}


@pytest.fixture
def ctx(standin: Any) -> tuple[Any, DeploymentRecord, Any]:
    reconciler = runtime.reconciler()
    record = DeploymentRecord(name="llama", spec=parse_spec(SPEC))
    return reconciler._applier, record, reconciler._resolve(record.spec)


def test_creates_and_deletes_are_idempotent(ctx, standin: Any) -> None:
    applier, record, desired = ctx
    for _ in range(2):  # a retry after a crash repeats the call
        applier.apply(p.CreateModel(desired.model_name), record, desired)
        applier.apply(p.CreateEndpointConfig(desired.config_name), record, desired)
    assert standin.resources()["models"] == {desired.model_name}
    for _ in range(2):
        applier.apply(p.DeleteEndpointConfig(desired.config_name), record, desired)
        applier.apply(p.DeleteModel(desired.model_name), record, desired)
    assert standin.resources()["models"] == set()


def test_deleting_a_creating_endpoint_is_busy_not_failed(ctx) -> None:
    applier, record, desired = ctx
    applier.apply(p.CreateModel(desired.model_name), record, desired)
    applier.apply(p.CreateEndpointConfig(desired.config_name), record, desired)
    applier.apply(p.CreateEndpoint("llama", config=desired.config_name), record, desired)
    with pytest.raises(SageMakerBusy):
        applier.apply(p.DeleteEndpoint("llama"), record, desired)


def test_a_request_sagemaker_refuses_for_good_is_rejected(ctx) -> None:
    applier, record, desired = ctx
    # An endpoint config whose model does not exist can never be created
    with pytest.raises(SageMakerRejected, match="Could not find model"):
        applier.apply(p.CreateEndpointConfig(desired.config_name), record, desired)


def test_model_carries_the_token_but_the_record_never_does(standin: Any, moto_aws: None) -> None:
    from llmhost import aws

    secret = aws.client("secretsmanager").create_secret(Name="llmhost/hf", SecretString="hf_xyz")
    spec = {**SPEC, "model": {**SPEC["model"], "token_secret_arn": secret["ARN"]}}
    reconciler = runtime.reconciler()
    record = DeploymentRecord(name="llama", spec=parse_spec(spec))
    desired = reconciler._resolve(record.spec)
    reconciler._applier.apply(p.CreateModel(desired.model_name), record, desired)
    model = standin.describe("model", desired.model_name)
    assert model["PrimaryContainer"]["Environment"]["HF_TOKEN"] == "hf_xyz"
    assert "hf_xyz" not in record.model_dump_json()
    assert "hf_xyz" not in str(desired)
