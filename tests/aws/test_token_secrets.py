"""A spec may name as its token only a secret the stack allows: under SecretsPrefix and
tagged llmhost:allowed=true. Anything else is a 422 on model.token_secret_arn with the fix."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from conftest import api_function
from llmhost import aws

SPEC = {
    "name": "llama",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}
ALLOWED = [{"Key": "llmhost:allowed", "Value": "true"}]


@pytest.fixture
def api(moto_aws: None) -> Any:
    return api_function()


def secret(name: str, tags: list[dict[str, str]] | None = None, region: str = "") -> str:
    client = boto3.client("secretsmanager", region_name=region) if region else None
    client = client or aws.client("secretsmanager")
    extra = {"Tags": tags} if tags else {}
    return str(client.create_secret(Name=name, SecretString="hf_x", **extra)["ARN"])


def with_token(arn: str) -> dict[str, Any]:
    return {**SPEC, "model": {**SPEC["model"], "token_secret_arn": arn}}


def token_issue(body: dict[str, Any]) -> str:
    (issue,) = body["error"]["fields"]
    assert issue["field"] == "model.token_secret_arn"
    return str(issue["message"])


def test_a_tagged_secret_under_the_prefix_is_accepted(api: Any) -> None:
    status, body = api("POST", "/v1/deployments", with_token(secret("llmhost/hf", ALLOWED)))
    assert status == 201, body
    # and the token's ARN never comes back
    assert "token_secret_arn" not in json.dumps(api("GET", "/v1/deployments")[1])


@pytest.mark.parametrize(
    ("make", "says"),
    [
        # another team's secret, outside the prefix, even tagged
        (lambda: secret("prod/db-password", ALLOWED), "outside this stack's SecretsPrefix"),
        # under the prefix, but nobody allowed it
        (lambda: secret("llmhost/other"), "tag it llmhost:allowed=true"),
        (lambda: secret("llmhost/other", [{"Key": "llmhost:allowed", "Value": "no"}]), "tag it"),
        # another region's copy
        (lambda: secret("llmhost/hf", ALLOWED, region="eu-west-1"), "create the token secret"),
        # a secret that does not exist
        (
            lambda: "arn:aws:secretsmanager:us-east-1:123456789012:secret:llmhost/gone-AbCdEf",
            "no secret 'llmhost/gone-AbCdEf' exists",
        ),
    ],
    ids=["outside-prefix", "untagged", "tag-not-true", "other-region", "missing"],
)
def test_a_secret_the_stack_does_not_allow_is_422_naming_the_field_and_fix(
    api: Any, make: Any, says: str
) -> None:
    status, body = api("POST", "/v1/deployments", with_token(make()))
    assert status == 422, body
    assert says in token_issue(body)
    assert api("GET", "/v1/deployments")[1]["count"] == 0


def test_a_change_to_a_disallowed_secret_is_422(api: Any) -> None:
    assert api("POST", "/v1/deployments", SPEC)[0] == 201
    patch = {"model": {**SPEC["model"], "token_secret_arn": secret("llmhost/other")}}
    status, body = api("PATCH", "/v1/deployments/llama", patch)
    assert status == 422 and "llmhost:allowed" in token_issue(body)
    assert api("GET", "/v1/deployments/llama")[1]["generation"] == 1
