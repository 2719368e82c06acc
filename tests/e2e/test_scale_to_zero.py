"""End to end over real HTTP: a shared model with scale to zero goes to zero copies after its
idle minutes (time-compressed), a request is answered 503 with Retry-After and wakes it, and a
later request is answered.

The product's own path throughout: the API creates the deployment, the reconciler brings it
up and applies its alarms to (moto's) CloudWatch, the local CloudWatch evaluates the idle alarm
against the runtime front's invocation counts and sends its state change to the scaling
function, serving refuses and wakes, the scaling function and the reconciler add the copy.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import local_stack
from llmhost_local.cloud import (
    ACCESS_KEY,
    LOCAL_API_KEY,
    REGION,
    SCALE_TO_ZERO_DEPLOYMENT,
    SECRET_KEY,
    LocalCloud,
)

pytestmark = pytest.mark.e2e

# 600x: a 5-minute idle window lasts half a second, an endpoint is created in one.
SPEED = 600
NAME = SCALE_TO_ZERO_DEPLOYMENT["name"]


class Stack:
    def __init__(self, cloud: LocalCloud, api: str, openai: str) -> None:
        self.cloud, self.api, self.openai = cloud, api, openai
        self.lines: list[str] = []

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        code, _, answer = self.call_with_headers(method, path, body)
        return code, answer

    def call_with_headers(
        self, method: str, path: str, body: Any = None
    ) -> tuple[int, dict[str, str], Any]:
        """A SigV4-signed request to the control API (API Gateway in AWS)."""
        data = json.dumps(body).encode() if body is not None else b""
        url = self.api + path
        request = AWSRequest(
            method=method, url=url, data=data, headers={"Content-Type": "application/json"}
        )
        SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION).add_auth(request)
        http = urllib.request.Request(
            url, data=data or None, headers=dict(request.headers), method=method
        )
        try:
            with urllib.request.urlopen(http, timeout=30) as reply:
                return reply.status, dict(reply.headers), json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.loads(error.read() or b"{}")

    def chat(self) -> tuple[int, Message, dict[str, Any]]:
        body = {"model": NAME, "messages": [{"role": "user", "content": "are you awake?"}]}
        request = urllib.request.Request(
            self.openai + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": f"Bearer {LOCAL_API_KEY}",
            },
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                # Header names are case-insensitive: keep the message, not a dict of it.
                return reply.status, reply.headers, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, error.headers, json.loads(error.read() or b"{}")

    def copies(self) -> int:
        described = self.cloud.standin.describe("inference-component", NAME)
        assert described is not None, f"SageMaker has no component {NAME}"
        return int(described["RuntimeConfig"]["CurrentCopyCount"])

    def until(self, what: str, check: Any, timeout: float = 120) -> Any:
        """Poll ``check`` until it is true. The deadline is for a stuck stack, not a slow one
        (a loaded CI machine): a step that happens returns as soon as it does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.1)
        raise AssertionError(
            f"{what} did not happen in {timeout} s; console:\n" + "\n".join(self.lines)
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    lines: list[str] = []
    with local_stack(
        tmp_path_factory.mktemp("qdrant"), log=lines.append, speed=SPEED, drift_seconds=0.5
    ) as running:
        local = Stack(running.cloud, running.api, running.openai + "/v1")
        local.lines = lines
        yield local


def test_an_idle_model_goes_to_zero_and_a_request_wakes_it(stack: Stack) -> None:
    # Given a shared model with scale to zero after 5 idle minutes, created through the API
    code, created = stack.call("POST", "/v1/deployments", SCALE_TO_ZERO_DEPLOYMENT)
    assert code == 201, created
    stack.until(
        "IN_SERVICE",
        lambda: stack.call("GET", f"/v1/deployments/{NAME}")[1]["status"] == "IN_SERVICE",
    )

    # When nobody asks it anything for its (compressed) idle minutes
    # Then the idle alarm fires, the scaling hook acts, and SageMaker holds no copy of it
    stack.until("zero copies", lambda: stack.copies() == 0)
    assert any(f"{NAME}: no requests for its idle minutes" in line for line in stack.lines)

    # When a client asks it a question
    code, headers, refused = stack.chat()
    # Then it is told to come back later, in words about the model, not SageMaker's
    assert code == 503, refused
    # (after about as long as SageMaker adds a copy, on the stack's clock: 300 s / SPEED)
    assert 0 < int(headers["Retry-After"]) <= 5, headers
    message = refused["error"]["message"]
    assert "zero-demo" in message or "scaled to zero" in message, message
    assert "Inference Component" not in message and "arn:" not in message

    # And a later request is answered by the woken model
    def answered() -> dict[str, Any] | None:
        code, _, body = stack.chat()
        return body if code == 200 else None

    reply = stack.until("an answer", answered)
    assert reply["choices"][0]["message"]["content"]
    # And the deployment's history tells the story: idle, asleep or scaled in, woken
    history = [h["event"] for h in stack.call("GET", f"/v1/deployments/{NAME}")[1]["history"]]
    assert "IdleSleep" in history and "WakeRequested" in history, history
    assert history.index("WakeRequested") > history.index("IdleSleep")

    # When it is left idle again, it goes to zero again (not only once per run)
    stack.until("zero copies again", lambda: stack.copies() == 0)
    # And a request through the control API (SigV4, API Gateway in AWS) is refused with the
    # serve function's 503 and its headers
    chat = {"model": NAME, "messages": [{"role": "user", "content": "awake again?"}]}
    code, headers, refused = stack.call_with_headers("POST", "/v1/chat/completions", chat)
    assert code == 503, refused
    assert headers["Content-Type"].startswith("application/json")
    # (this time after about as long as the first wake took, as its history recorded it: a
    # few seconds on a quiet machine, more on a loaded one)
    recorded = stack.call("GET", f"/v1/deployments/{NAME}")[1]["history"]
    assert 0 < int(headers["Retry-After"]) <= max(1, first_wake_seconds(recorded)), headers
    # And it wakes again and answers
    reply = stack.until("an answer after the second wake", answered)
    assert reply["choices"][0]["message"]["content"]
    history = [h["event"] for h in stack.call("GET", f"/v1/deployments/{NAME}")[1]["history"]]
    assert history.count("IdleSleep") == 2 and history.count("WakeRequested") == 2, history


def first_wake_seconds(history: list[dict[str, Any]]) -> int:
    """How long the first recorded wake took, measured as serving measures one for its
    Retry-After (``llmhost.serving.routing.wake_estimate_s``): from WakeRequested to the
    first later entry that is Woken (a zero-copy component's first answer) or brings the
    status back to IN_SERVICE (this stack's zero-demo goes SLEEPING when idle, and records
    no Woken), in whole seconds rounded up (the history's timestamps are to the second)."""
    from datetime import datetime

    def at(entry: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))

    start = next(i for i, entry in enumerate(history) if entry["event"] == "WakeRequested")
    previous = history[start]["status"]
    for entry in history[start + 1 :]:
        back = entry["status"] == "IN_SERVICE" and previous != "IN_SERVICE"
        if entry["event"] == "Woken" or back:
            return math.ceil((at(entry) - at(history[start])).total_seconds())
        previous = entry["status"]
    return 1  # no wake measured: the default estimate, one second locally
