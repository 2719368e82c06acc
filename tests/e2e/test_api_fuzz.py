"""Schema fuzzing of the API over loopback: schemathesis generates requests from the OpenAPI
document the running API serves, valid ones and invalid ones, signs them with botocore's
SigV4 signer, and checks every answer against the document.

What must hold for every request: no 5xx but a documented 503; a JSON body, in the error
shape for every error; a status, content type, headers and body the document describes;
invalid data refused with a 4xx. Bounded (a fixed number of examples per route and mode) so
it stays well inside CI's budget.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import checks

from conftest import local_stack
from llmhost_local.cloud import ACCESS_KEY, REGION, SECRET_KEY

pytestmark = pytest.mark.e2e


# hypothesis and schemathesis are imported in full at start-up: see tests/conftest.py

# Per route and mode (valid, invalid). CI's budget; raise it locally to dig deeper.
EXAMPLES_PER_MODE = int(os.environ.get("LLMHOST_FUZZ_EXAMPLES", "12"))


class SigV4(requests.auth.AuthBase):
    """Sign each request as API Gateway's IAM auth expects, counting what was sent."""

    def __init__(self) -> None:
        self.credentials = Credentials(ACCESS_KEY, SECRET_KEY)
        self.sent = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        signed = AWSRequest(method=request.method, url=request.url, data=body, headers={})
        if request.headers.get("Content-Type"):
            signed.headers["Content-Type"] = request.headers["Content-Type"]
        SigV4Auth(self.credentials, "execute-api", REGION).add_auth(signed)
        for key in ("Authorization", "X-Amz-Date"):
            request.headers[key] = signed.headers[key]
        self.sent += 1
        return request


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with local_stack(
        tmp_path_factory.mktemp("qdrant"),
        openai=False,
        speed=600,
        drift_seconds=0.5,
        token_interval_ms=1,
    ) as stack:
        yield stack.api


def _error_shape(response: Any) -> str | None:
    """What is wrong with a response's body, or None: JSON, and errors in the error shape."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return f"{response.status_code}: the body is not JSON: {response.content[:200]!r}"
    if response.status_code < 400:
        return None
    if response.status_code in {403, 413, 429, 504} and set(body) == {"message"}:
        return None  # API Gateway's own refusals
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(error, dict) and {"code", "message"} <= set(error)):
        return f"{response.status_code}: not the documented error shape: {body}"
    return None


def test_the_api_answers_every_generated_request_as_its_document_says(api_url: str) -> None:
    auth = SigV4()
    # Given the OpenAPI document the running API serves
    served = requests.get(f"{api_url}/v1/openapi.json", auth=auth, timeout=30)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json())
    schema.config.update(base_url=api_url)
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    validations = [
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_headers_conformance,
        checks.response_schema_conformance,
        checks.negative_data_rejection,
    ]

    def fuzz(operation: Any, mode: schemathesis.GenerationMode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_MODE,
            phases=[Phase.generate],
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case: Any) -> None:
            response = case.call(base_url=api_url, auth=auth, timeout=30)
            statuses[response.status_code] += 1
            label = f"{case.method} {case.formatted_path} ({mode.value})"
            if response.status_code >= 500 and response.status_code != 503:
                problems.append(f"{label}: {response.status_code} {response.text[:300]}")
            shape = _error_shape(response)
            if shape:
                problems.append(f"{label}: {shape}")
            try:
                case.validate_response(
                    response, checks=validations, transport_kwargs={"auth": auth}
                )
            except FailureGroup as failures:
                problems.append(f"{label}: {str(failures)[:600]}")

        try:
            exercise()
        except Unsatisfiable:
            # Nothing to make invalid: the route takes no parameters and no body
            assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label

    for result in schema.get_all_operations():
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode)

    print(f"schemathesis: requests={auth.sent} statuses={dict(sorted(statuses.items()))}")
    # Then every answer is one the document describes
    assert auth.sent > EXAMPLES_PER_MODE * 20
    assert not problems, "\n\n".join(problems[:20]) + f"\n\n({len(problems)} problems)"
