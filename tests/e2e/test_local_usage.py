"""Usage and cost in the local stack: a chat is counted for its caller, a model's
copies are recorded by the 5-minute tick (every half second at 600x), and GET /v1/usage and
GET /v1/deployments/{name}/capacity answer from them over real, SigV4-signed HTTP."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import local_stack
from llmhost_local.cloud import ACCESS_KEY, REGION, SECRET_KEY

pytestmark = pytest.mark.e2e

Call = Callable[..., tuple[int, Any]]


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Call]:
    with local_stack(
        tmp_path_factory.mktemp("qdrant"), openai=False, speed=600, drift_seconds=0.5
    ) as stack:

        def signed(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            data = json.dumps(body).encode() if body is not None else b""
            url = stack.api + path
            request = AWSRequest(
                method=method, url=url, data=data, headers={"Content-Type": "application/json"}
            )
            SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION).add_auth(request)
            http = urllib.request.Request(
                url, data=data or None, headers=dict(request.headers), method=method
            )
            try:
                with urllib.request.urlopen(http, timeout=60) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read() or b"{}")

        yield signed


def _eventually(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    # A deadline for something stuck, not slow: a loaded machine is slow.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"never: {what}")


def test_a_chat_is_counted_and_the_demo_models_copies_are_costed(call: Call) -> None:
    # Given a model created through the API and in service
    spec = {"name": "demo", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}
    assert call("POST", "/v1/deployments", spec)[0] == 201
    _eventually(
        lambda: call("GET", "/v1/deployments/demo")[1].get("status") == "IN_SERVICE", "demo up"
    )

    # Then the capacity history holds the demo's instance in service, which costs something
    def in_service() -> list[dict[str, Any]]:
        code, body = call("GET", "/v1/deployments/demo/capacity")
        assert code == 200, body
        return [p for p in body["points"] if p["in_service"] >= 1]

    points = _eventually(in_service, "a capacity point in service")
    assert points[0]["usd_per_hour"] > 0

    # When a chat is answered
    code, answer = call(
        "POST",
        "/v1/chat/completions",
        {"model": "demo", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert code == 200, answer

    # And its caller's usage counts it, with its tokens and a share of the instance
    def counted() -> dict[str, Any] | None:
        code, body = call("GET", "/v1/usage?by=key")
        assert code == 200, body
        return next((r for r in body["rows"] if r["requests"] >= 1), None)

    row = _eventually(counted, "the chat counted")
    assert row["key"] and row["deployments"] == ["demo"]
    assert row["input_tokens"] + row["output_tokens"] > 0

    def costed() -> dict[str, Any] | None:
        rows = call("GET", "/v1/usage?by=deployment")[1]["rows"]
        demo = next((r for r in rows if r["deployment"] == "demo"), None)
        return demo if demo and demo["cost_usd"] > 0 else None

    demo = _eventually(costed, "the demo's cost")
    assert demo["requests"] >= 1
    assert demo["cost_usd"] == pytest.approx(
        demo["served_cost_usd"] + demo["idle_cost_usd"], abs=2e-6
    )
    # And a bad period is refused, naming the field
    code, body = call("GET", "/v1/usage?from=tomorrow")
    assert code == 422 and body["error"]["fields"][0]["field"] == "from"
