"""``llmhost --stack NAME``: the deployed stack's URLs from its CloudFormation outputs (moto's
CloudFormation), requests signed for execute-api by botocore's signer with the credentials of
the normal chain (here the environment's), as API Gateway's IAM auth checks them.
"""

from __future__ import annotations

import io
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from llmhost_cli import commands
from llmhost_cli.target import resolve
from llmhost_local import sigv4

API_URL = "https://abc123defg.execute-api.us-east-1.amazonaws.com/Prod"
STREAM_URL = "https://xyz.lambda-url.us-east-1.on.aws/v1"
TEMPLATE = {
    "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
    "Outputs": {
        "ApiUrl": {"Value": API_URL},
        "StreamUrl": {"Value": STREAM_URL},
        "RegistryTableName": {"Value": "llmhost-registry"},
    },
}


@pytest.fixture
def stack(moto_aws: None) -> Iterator[str]:
    import boto3

    cloudformation = boto3.client("cloudformation", region_name="us-east-1")
    cloudformation.create_stack(StackName="llmhost-prod", TemplateBody=json.dumps(TEMPLATE))
    yield "llmhost-prod"


class _Answer(io.BytesIO):
    status = 200
    headers: Any = {"Content-Type": "application/json"}

    def __enter__(self) -> _Answer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[urllib.request.Request]:
    """Every request the CLI sends (none leaves the process), answered with no deployments."""
    requests: list[urllib.request.Request] = []

    def urlopen(request: urllib.request.Request, timeout: float) -> _Answer:
        requests.append(request)
        return _Answer(json.dumps({"deployments": [], "count": 0}).encode())

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requests


def test_the_stacks_outputs_name_the_urls(stack: str) -> None:
    target = resolve(
        stack=stack, url=None, openai_url=None, api_key="k", region="us-east-1", profile=None
    )
    assert target.api == API_URL
    assert target.openai == "https://xyz.lambda-url.us-east-1.on.aws"  # without its /v1
    assert target.region == "us-east-1" and target.where == "stack llmhost-prod (us-east-1)"
    # the chain's credentials: here the environment's (moto's)
    assert target.credentials.access_key == os.environ["AWS_ACCESS_KEY_ID"]


def test_requests_to_a_stack_are_signed_for_execute_api(
    stack: str, sent: list[urllib.request.Request], capsys: pytest.CaptureFixture[str]
) -> None:
    key, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    # When a command runs against the stack
    assert commands.main(["--stack", stack, "--region", "us-east-1", "ls", "--json"]) == 0
    # Then it went to the stack's API URL
    [request] = sent
    assert request.full_url == f"{API_URL}/v1/deployments"
    headers = dict(request.header_items())
    # ... signed with SigV4 for execute-api in the stack's region, by the chain's key
    match = re.fullmatch(
        rf"AWS4-HMAC-SHA256 Credential={key}/(\d{{8}})/us-east-1/execute-api/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        headers["Authorization"],
    )
    assert match, headers["Authorization"]
    assert headers["X-amz-date"].startswith(match.group(1))
    assert {"host", "x-amz-date", "x-amz-security-token"} <= set(match.group(2).split(";"))
    assert headers["X-amz-security-token"] == os.environ["AWS_SESSION_TOKEN"]
    # ... and the signature is the one API Gateway computes for that request (and that key)
    parts = urlsplit(request.full_url)
    received = [("Host", parts.netloc), *headers.items()]
    assert sigv4.verify("GET", parts.path, received, b"", key, secret) == key
    with pytest.raises(sigv4.AuthError):
        sigv4.verify("GET", parts.path, received, b"", key, "another-secret")
    assert json.loads(capsys.readouterr().out) == {"deployments": [], "count": 0}


def test_an_unknown_stack_is_unreachable_exit_3(
    moto_aws: None, sent: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert commands.main(["--stack", "nope", "--region", "us-east-1", "ls"]) == 3
    err = capsys.readouterr().err
    assert "error: no stack 'nope' in us-east-1" in err and "--region" in err
    assert sent == []


def test_a_stack_without_the_api_output_is_a_failure(
    moto_aws: None, sent: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    other = {"Resources": TEMPLATE["Resources"], "Outputs": {"X": {"Value": "y"}}}
    boto3.client("cloudformation", region_name="us-east-1").create_stack(
        StackName="other", TemplateBody=json.dumps(other)
    )
    assert commands.main(["--stack", "other", "--region", "us-east-1", "ls"]) == 1
    assert "stack 'other' has no ApiUrl output" in capsys.readouterr().err
    assert sent == []


def test_streaming_against_a_stack_needs_an_api_key(
    stack: str, sent: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code = commands.main(["--stack", stack, "--region", "us-east-1", "ask", "m", "q", "--stream"])
    assert code == 1
    err = capsys.readouterr().err
    assert "needs an API key" in err and "field: --api-key" in err
    assert sent == []
