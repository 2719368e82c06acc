"""DynamoDB failing under the registry: typed errors from the data-access layer, never a 500.

Throttling (ProvisionedThroughputExceededException, ThrottlingException,
RequestLimitExceeded) that outlasts botocore's own retries means llmhost's table is busy,
not that the caller sends too much: the API answers 503 "registry busy" with Retry-After.
Errors are injected below botocore's parser and retry handler (a ``before-send`` hook
answers with DynamoDB's own error response), so botocore decides what llmhost sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest

from llmhost import aws, runtime
from llmhost.errors import RegistryBusy, RegistryError, RegistryUnavailable
from llmhost.lifecycle.record import DeploymentRecord
from llmhost.scaling.budget import BudgetLedger
from llmhost.scaling.capacity_guard import CapacityLock
from llmhost.specs import parse_spec
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext, api_gateway_event

THROTTLING = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
]
SPEC = {
    "name": "llama3-8b",
    "model": {"kind": "hub", "model_id": "meta-llama/Meta-Llama-3-8B-Instruct"},
    "hosting": {"kind": "dedicated", "instance_type": "ml.g5.2xlarge"},
}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class DynamoDBFails:
    """Every DynamoDB request answers ``status``/``code`` (or raises ``transport``) until
    healed; counts what was sent."""

    def __init__(self, code: str = "", status: int = 400, transport: Any = None) -> None:
        self.code, self.status, self.transport = code, status, transport
        self.sent = 0
        self.healed = False
        aws.client("dynamodb").meta.events.register_first("before-send", self._send)

    def _send(self, request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        if self.healed:
            return None
        self.sent += 1
        if self.transport is not None:
            raise self.transport(endpoint_url=request.url)
        body = json.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{self.code}"}).encode()
        headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-ErrorType": self.code}
        return AWSResponse(request.url, self.status, headers, _Raw(body))


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore still retries as configured, without sleeping between attempts."""
    from botocore.retries.standard import ExponentialBackoff

    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0)


@pytest.fixture
def api(moto_aws: None) -> Any:
    module = load_handler("api", "llmhost-api")

    def call(method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
        raw = json.dumps(body).encode() if body is not None else b""
        event = api_gateway_event(method, path, {"Content-Type": "application/json"}, raw, "tester")
        response = module.handler(event, LambdaContext("llmhost-api"))
        headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
        return response["statusCode"], json.loads(response["body"]), headers

    return call


ROUTES = [
    ("GET", "/v1/deployments", None),
    ("GET", "/v1/deployments/llama3-8b", None),
    ("POST", "/v1/deployments", {**SPEC, "name": "another"}),
    ("PATCH", "/v1/deployments/llama3-8b", {"tags": {"team": "search"}}),
    ("POST", "/v1/deployments/llama3-8b/sleep", None),
    ("DELETE", "/v1/deployments/llama3-8b", None),
]


@pytest.mark.parametrize("code", THROTTLING)
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_a_throttled_registry_is_503_registry_busy_with_retry_after(
    api: Any, method: str, path: str, body: Any, code: str
) -> None:
    # Given a deployment, and DynamoDB throttling every request from now on
    assert api("POST", "/v1/deployments", SPEC)[0] == 201
    throttled = DynamoDBFails(code)
    # When a client calls the route
    status, answer, headers = api(method, path, body)
    # Then botocore retried first, and the client is told the registry is busy and when to retry
    assert throttled.sent >= 3
    assert status == 503, answer
    assert answer["error"]["code"] == "registry_busy"
    assert "registry" in answer["error"]["message"] and "retry" in answer["error"]["message"]
    assert int(headers["Retry-After"]) > 0
    # And once DynamoDB is back the same request goes through
    throttled.healed = True
    assert api(method, path, body)[0] < 300


@pytest.mark.parametrize("code", THROTTLING)
def test_a_throttled_capacity_lock_is_503_registry_busy(
    api: Any, code: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a GPU cap (creates take the capacity lock) and DynamoDB throttling
    monkeypatch.setenv("GPU_CAPACITY_CAP", "8")
    DynamoDBFails(code)
    # When a create needs the lock
    status, answer, headers = api("POST", "/v1/deployments", SPEC)
    # Then 503 registry_busy with Retry-After
    assert (status, answer["error"]["code"]) == (503, "registry_busy")
    assert int(headers["Retry-After"]) > 0


# ----------------------------------------------------------------- the data-access layer


def _adapters() -> dict[str, Any]:
    record = DeploymentRecord(name="llama3-8b", spec=parse_spec(SPEC))
    ledger = BudgetLedger(runtime.registry())

    def lock() -> None:
        with CapacityLock(runtime.registry(), attempts=1).held():
            pass

    return {
        "registry.find": lambda: runtime.registry().find("llama3-8b"),
        "registry.deployments": lambda: runtime.registry().deployments(),
        "registry.create": lambda: runtime.registry().create(record),
        "registry.save": lambda: runtime.registry().save(record),
        "capacity-lock": lock,
        "budget.state": ledger.state,
        "budget.spent": lambda: ledger.spent(date(2026, 1, 2)),
        "budget.bill": lambda: ledger.bill(None, 1.0, date(2026, 1, 2), 1.0),
        "budget.mark_exceeded": lambda: ledger.mark_exceeded(date(2026, 1, 2), "spent"),
    }


ADAPTERS = [
    "registry.find",
    "registry.deployments",
    "registry.create",
    "registry.save",
    "capacity-lock",
    "budget.state",
    "budget.spent",
    "budget.bill",
    "budget.mark_exceeded",
]


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("code", THROTTLING)
def test_every_registry_table_call_turns_throttling_into_registry_busy(
    moto_aws: None, adapter: str, code: str
) -> None:
    calls = _adapters()
    DynamoDBFails(code)
    with pytest.raises(RegistryBusy) as caught:
        calls[adapter]()
    assert caught.value.status == 503 and caught.value.retry_after > 0


@pytest.mark.parametrize(
    ("fault", "status"),
    [("5xx", 503), ("timeout", 504), ("unreachable", 503), ("denied", 500)],
)
@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_other_dynamodb_error_is_a_typed_registry_error(
    moto_aws: None, adapter: str, fault: str, status: int
) -> None:
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    calls = _adapters()
    if fault == "5xx":
        DynamoDBFails("InternalServerError", status=500)
    elif fault == "timeout":
        DynamoDBFails(transport=ReadTimeoutError)
    elif fault == "unreachable":
        DynamoDBFails(transport=EndpointConnectionError)
    else:
        DynamoDBFails("AccessDeniedException")
    with pytest.raises(RegistryError) as caught:
        calls[adapter]()
    assert caught.value.status == status
    if fault == "denied":
        # the stack's permissions: retrying will not help, so no Retry-After
        assert caught.value.retry_after is None
        assert not isinstance(caught.value, RegistryUnavailable)
    else:
        assert isinstance(caught.value, RegistryUnavailable)
        assert (caught.value.retry_after or 0) > 0
