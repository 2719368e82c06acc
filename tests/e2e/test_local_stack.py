"""End to end over real HTTP against the local runner: create a model, ingest documents,
ask with /v1/rag, chat and stream with the real ``openai`` package.

Everything is the product's own path: SigV4-signed requests to the API handlers, the
reconciler driven by stream/EventBridge-shaped events, the SageMaker stand-in, the SageMaker
runtime front with the local engine, embedded Qdrant and the ONNX embedder.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import StreamGate, local_stack
from llmhost_local.cloud import ACCESS_KEY, LOCAL_API_KEY, REGION, SECRET_KEY, LocalCloud

pytestmark = pytest.mark.e2e

DOCS = [
    {
        "id": "volcano",
        "text": "Mount Etna is an active stratovolcano on the east coast of Sicily. "
        "It is the tallest active volcano in Europe outside the Caucasus.",
        "metadata": {"topic": "geology"},
    },
    {
        "id": "bread",
        "text": "Sourdough bread is leavened by a culture of wild yeast and lactic acid "
        "bacteria. The starter must be fed with flour and water every day.",
        "metadata": {"topic": "cooking"},
    },
    {"id": "empty", "text": "   "},
]


class Local:
    def __init__(self, cloud: LocalCloud, api: str, openai: str) -> None:
        self.cloud, self.api, self.openai = cloud, api, openai

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        url = self.api + path
        request = AWSRequest(
            method=method, url=url, data=data, headers={"Content-Type": "application/json"}
        )
        creds = Credentials(ACCESS_KEY, SECRET_KEY)
        SigV4Auth(creds, "execute-api", REGION).add_auth(request)
        http = urllib.request.Request(
            url, data=data or None, headers=dict(request.headers), method=method
        )
        try:
            with urllib.request.urlopen(http, timeout=60) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def wait_for(self, name: str, status: str, timeout: float = 120) -> dict[str, Any]:
        # A deadline for a stuck reconciler, not a slow one: a loaded CI machine is slow.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code, body = self.call("GET", f"/v1/deployments/{name}")
            if code == 200 and body["status"] == status:
                return body
            time.sleep(0.2)
        raise AssertionError(f"{name} never reached {status}: {body}")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Local]:
    # 600x: an endpoint is created in one second; the engine streams a token every 20 ms
    with local_stack(
        tmp_path_factory.mktemp("qdrant"), speed=600, drift_seconds=0.5, token_interval_ms=20
    ) as stack:
        yield Local(stack.cloud, stack.api, stack.openai + "/v1")


def test_unsigned_requests_are_refused(local: Local) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(local.api + "/v1/deployments", timeout=10)
    assert refused.value.code == 403


def test_the_whole_path(local: Local) -> None:
    from openai import APIStatusError, OpenAI

    # Given a model created through the API and brought up by the reconciler
    spec = {"name": "zephyr", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}
    assert local.call("POST", "/v1/deployments", spec)[0] == 201
    local.wait_for("zephyr", "IN_SERVICE")

    # When documents are ingested, the bad one is reported and the others land
    code, report = local.call("POST", "/v1/collections/kb/documents", {"documents": DOCS})
    assert code == 200
    assert sorted(d["id"] for d in report["indexed"]) == ["bread", "volcano"]
    assert report["rejected"][0]["id"] == "empty" and "text" in report["rejected"][0]["field"]

    # Then /v1/rag answers from the right document, with sources and a latency breakdown
    code, answer = local.call(
        "POST",
        "/v1/rag",
        {"model": "zephyr", "collection": "kb", "query": "Where is Mount Etna?", "k": 2},
    )
    assert code == 200, answer
    assert "Sicily" in answer["answer"] and "not an LLM" in answer["answer"]
    assert answer["sources"][0]["id"] == "volcano"
    assert set(answer["latency_ms"]) >= {"embed", "retrieve", "generate", "total"}
    assert answer["usage"]["total_tokens"] > 0

    # And a metadata filter keeps the other topic out
    code, filtered = local.call(
        "POST",
        "/v1/rag",
        {
            "model": "zephyr",
            "collection": "kb",
            "query": "Where is Mount Etna?",
            "filters": {"topic": "cooking"},
        },
    )
    assert code == 200 and {s["id"] for s in filtered["sources"]} == {"bread"}

    # And the openai package works unchanged: models, chat, and a stream that really streams
    client = OpenAI(base_url=local.openai, api_key=LOCAL_API_KEY)
    assert "zephyr" in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model="zephyr",
        messages=[{"role": "user", "content": "How is sourdough leavened?"}],
        extra_body={"rag": {"collection": "kb", "k": 1}},
    )
    assert "wild yeast" in reply.choices[0].message.content

    # A stream that really streams, checked by causality rather than by the clock: the engine
    # may produce token k+2 only once the client holds token k. A server that held events
    # back (buffered them, or sent them only at the end) would stall the engine here.
    gate = StreamGate()
    local.cloud.engine._sleep = gate.before_token
    try:
        text = []
        stream = client.chat.completions.create(
            model="zephyr",
            messages=[{"role": "user", "content": "How is sourdough leavened?"}],
            stream=True,
            extra_body={"rag": {"collection": "kb", "k": 1}},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
                gate.received()
    finally:
        local.cloud.engine._sleep = time.sleep
    assert "".join(text) == reply.choices[0].message.content
    assert len(text) > 5 and gate.produced == len(text)
    assert not gate.stalled, (
        f"the engine waited in vain before tokens {gate.stalled}: the client did not have "
        "token k-2 before token k (the server held events back)"
    )

    # And errors are OpenAI-shaped: unknown model 404, bad key 401
    with pytest.raises(APIStatusError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert missing.value.status_code == 404
    bad = OpenAI(base_url=local.openai, api_key="wrong")
    with pytest.raises(APIStatusError) as denied:
        bad.models.list()
    assert denied.value.status_code == 401

    # When the document is deleted, it is no longer retrieved
    assert local.call("DELETE", "/v1/collections/kb/documents/volcano")[0] == 200
    code, after = local.call(
        "POST", "/v1/rag", {"model": "zephyr", "collection": "kb", "query": "Where is Mount Etna?"}
    )
    assert code == 200 and {s["id"] for s in after["sources"]} == {"bread"}


def test_a_sleeping_model_answers_503_with_retry_after(local: Local) -> None:
    spec = {"name": "sleepy", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}
    assert local.call("POST", "/v1/deployments", spec)[0] == 201
    local.wait_for("sleepy", "IN_SERVICE")
    assert local.call("POST", "/v1/deployments/sleepy/sleep")[0] == 202
    local.wait_for("sleepy", "SLEEPING")
    # serving's view of the registry (10 s in AWS) ages on the stack's compressed clock
    from llmhost.serving.routing import CACHE_SECONDS

    time.sleep(local.cloud.clock.seconds(CACHE_SECONDS) + 0.1)
    request = urllib.request.Request(
        local.openai + "/chat/completions",
        data=json.dumps(
            {"model": "sleepy", "messages": [{"role": "user", "content": "hi"}]}
        ).encode(),
        headers={
            "Authorization": f"Bearer {LOCAL_API_KEY}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as asleep:
        urllib.request.urlopen(request, timeout=10)
    assert asleep.value.code == 503
    assert int(asleep.value.headers["Retry-After"]) > 0
    body = json.loads(asleep.value.read())
    assert "asleep" in body["error"]["message"]
    # and that request woke it: the reconciler brings it back without anyone asking
    local.wait_for("sleepy", "IN_SERVICE")


def test_a_sleeping_model_answers_503_with_retry_after_through_the_control_api(
    local: Local,
) -> None:
    # Given a sleeping model (API Gateway's local stand-in passes on the function's
    # multiValueHeaders, where Powertools puts them)
    spec = {"name": "sleepy-api", "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}
    assert local.call("POST", "/v1/deployments", spec)[0] == 201
    local.wait_for("sleepy-api", "IN_SERVICE")
    assert local.call("POST", "/v1/deployments/sleepy-api/sleep")[0] == 202
    local.wait_for("sleepy-api", "SLEEPING")
    from llmhost.serving.routing import CACHE_SECONDS

    time.sleep(local.cloud.clock.seconds(CACHE_SECONDS) + 0.1)
    # When it is asked through the control API
    data = json.dumps({"model": "sleepy-api", "messages": [{"role": "user", "content": "hi"}]})
    url = local.api + "/v1/chat/completions"
    signed = AWSRequest(
        method="POST", url=url, data=data.encode(), headers={"Content-Type": "application/json"}
    )
    creds = Credentials(ACCESS_KEY, SECRET_KEY)
    SigV4Auth(creds, "execute-api", REGION).add_auth(signed)
    request = urllib.request.Request(
        url, data=data.encode(), headers=dict(signed.headers), method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as asleep:
        urllib.request.urlopen(request, timeout=10)
    # Then the client gets the 503 with its Retry-After and a JSON Content-Type
    assert asleep.value.code == 503
    assert int(asleep.value.headers["Retry-After"]) > 0
    assert asleep.value.headers["Content-Type"].startswith("application/json")
    assert "asleep" in json.loads(asleep.value.read())["error"]["message"]
    local.wait_for("sleepy-api", "IN_SERVICE")


def test_ingest_folder_cli(local: Local, tmp_path: Path) -> None:
    from llmhost_local import ingest_folder

    (tmp_path / "a.md").write_text("# Tides\nTides are caused by the Moon's gravity.")
    (tmp_path / "b.jsonl").write_text(
        '{"id": "x1", "text": "Comets have icy nuclei."}\n{bad json\n'
    )
    code = ingest_folder.main([str(tmp_path), "--collection", "cli", "--api", local.api])
    assert code == 1  # one bad line is reported, the rest landed
    status, info = local.call("GET", "/v1/collections/cli")
    assert status == 200 and info["points"] >= 2


def test_the_ingest_cli_names_files_by_their_folder_path_and_they_delete_by_it(
    local: Local, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llmhost_local import ingest_folder

    # Given a folder with a nested file, ingested with the CLI over real HTTP
    (tmp_path / "guides").mkdir()
    (tmp_path / "guides" / "sleep.md").write_text("Sleeping deletes the endpoint, keeps config.")
    code = ingest_folder.main([str(tmp_path), "--collection", "cli", "--api", local.api])
    assert code == 0, capsys.readouterr()
    assert "batch 1/1: 1 files, 1/1 documents" in capsys.readouterr().out
    # When its id, which holds a '/', is deleted percent-encoded through the local runner
    status, body = local.call("DELETE", "/v1/collections/cli/documents/guides%2Fsleep.md")
    # Then that document goes
    assert (status, body.get("deleted")) == (200, "guides/sleep.md"), body
    assert local.call("DELETE", "/v1/collections/cli/documents/guides%2Fsleep.md")[0] == 404
