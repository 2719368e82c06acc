"""End to end over real HTTP with the real ``openai`` package: a streaming request for a model
scaled to zero is held open with SSE keep-alives while the model wakes, then answered; a
request through the serve function that prefers to wait is answered after the wake too.

The product's path throughout (see test_scale_to_zero.py): the idle alarm takes the local
stack's "zero-demo" to zero copies, the held request asks for the one wake, the scaling
function and the stand-in add the copy, and the request is answered by the local engine.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import pytest
from test_scale_to_zero import Stack

from conftest import local_stack
from llmhost_local.cloud import LOCAL_API_KEY, SCALE_TO_ZERO_DEPLOYMENT

pytestmark = pytest.mark.e2e

SPEED = 600
NAME = SCALE_TO_ZERO_DEPLOYMENT["name"]
QUESTION = {"model": NAME, "messages": [{"role": "user", "content": "are you awake?"}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    lines: list[str] = []
    # Keep-alives every 50 ms, so a wake of a fraction of a second shows several
    os.environ["HOLD_KEEPALIVE_S"] = "0.05"
    try:
        with local_stack(
            tmp_path_factory.mktemp("qdrant"), log=lines.append, speed=SPEED, drift_seconds=0.5
        ) as running:
            local = Stack(running.cloud, running.api, running.openai + "/v1")
            local.lines = lines
            code, created = local.call("POST", "/v1/deployments", SCALE_TO_ZERO_DEPLOYMENT)
            assert code == 201, created
            local.until("IN_SERVICE", lambda: _record(local)["status"] == "IN_SERVICE")
            yield local
    finally:
        os.environ.pop("HOLD_KEEPALIVE_S", None)


def _watch_copies(stack: Stack) -> Future[float]:
    """When (time.monotonic) the model next has a copy, watched every 10 ms."""
    done: Future[float] = Future()

    def watch() -> None:
        while stack.copies() == 0:
            time.sleep(0.01)
        done.set_result(time.monotonic())

    threading.Thread(target=watch, daemon=True).start()
    return done


def _record(stack: Stack) -> dict[str, Any]:
    return stack.call("GET", f"/v1/deployments/{NAME}")[1]


def _wake_seconds(history: list[dict[str, Any]]) -> float:
    """The last recorded wake, as ``wake_estimate_s`` measures one: from WakeRequested to
    the first later entry back in service (or Woken), in the history's whole seconds."""
    start = max(i for i, h in enumerate(history) if h["event"] == "WakeRequested")
    previous = history[start]["status"]
    for entry in history[start + 1 :]:
        back = entry["status"] == "IN_SERVICE" and previous != "IN_SERVICE"
        if entry["event"] == "Woken" or back:
            ended, began = (
                datetime.fromisoformat(e["at"].replace("Z", "+00:00"))
                for e in (entry, history[start])
            )
            return (ended - began).total_seconds()
        previous = entry["status"]
    raise AssertionError(f"no end of the last wake in {history}")


def test_a_streaming_request_for_a_model_at_zero_is_held_then_answered(stack: Stack) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=stack.openai, api_key=LOCAL_API_KEY, max_retries=0)
    # Given the model went to zero copies after its idle minutes
    stack.until("zero copies", lambda: stack.copies() == 0)
    wakes_before = [h["event"] for h in _record(stack)["history"]].count("WakeRequested")

    # When a client streams a question to it (and, for the measure, a watcher notes when
    # SageMaker's stand-in holds a copy again)
    started = time.monotonic()
    copy_up = _watch_copies(stack)
    first_data = 0.0
    with client.chat.completions.with_streaming_response.create(**QUESTION, stream=True) as reply:
        # Then the stream opens at once and waits, saying so
        assert reply.http_response.status_code == 200
        comments, data = [], []
        for line in reply.iter_lines():
            if line.startswith(":"):
                assert not data, "a keep-alive after the answer began"
                comments.append(line)
            elif line:
                if not data:
                    first_data = time.monotonic() - started
                data.append(line)

    # And is answered by the woken model, in OpenAI's stream format
    assert comments, "no keep-alive before the answer"
    assert all(c.startswith(f": waiting for {NAME} (") for c in comments), comments
    assert data[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text
    # And exactly one wake was asked for it
    history = _record(stack)["history"]
    assert [h["event"] for h in history].count("WakeRequested") == wakes_before + 1
    copy_at = copy_up.result(timeout=60) - started
    print(
        f"held stream: answer began {first_data:.2f} s after the request, the copy was up "
        f"after {copy_at:.2f} s (held {first_data - copy_at:.2f} s past it); "
        f"{len(comments)} keep-alives; the wake took {_wake_seconds(history):.0f} s as "
        "recorded (whole seconds)"
    )

    # When it goes to zero again, the openai client's own stream reads a held answer as any
    stack.until("zero copies again", lambda: stack.copies() == 0)
    stream = client.chat.completions.create(**QUESTION, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_the_serve_function_holds_a_request_that_prefers_to_wait(stack: Stack) -> None:
    stack.until("zero copies", lambda: stack.copies() == 0)
    code, headers, body = _signed_with(stack, {"Prefer": "wait=20"})
    assert code == 200, body
    assert body["choices"][0]["message"]["content"]
    assert headers["Preference-Applied"] == "wait=20"


def _signed_with(stack: Stack, extra: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    """A SigV4-signed chat through the control API (API Gateway in AWS), with headers."""
    import urllib.error
    import urllib.request

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from llmhost_local.cloud import ACCESS_KEY, REGION, SECRET_KEY

    data = json.dumps(QUESTION).encode()
    url = stack.api + "/v1/chat/completions"
    request = AWSRequest(
        method="POST", url=url, data=data, headers={"Content-Type": "application/json", **extra}
    )
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION).add_auth(request)
    http = urllib.request.Request(url, data=data, headers=dict(request.headers), method="POST")
    try:
        with urllib.request.urlopen(http, timeout=60) as reply:
            return reply.status, dict(reply.headers), json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read() or b"{}")
