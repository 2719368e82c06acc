"""The OpenAI-compatible server against the local stack, read by the real ``openai`` client:
a streamed request keeps the status of a refusal, and usage is the same streamed or not.

The whole serving path is the product's: the model directory reading the registry, the
SageMaker runtime front, the local engine (which counts and limits tokens as TGI does and,
like TGI, reports a streamed request's validation error as the stream's first event).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import local_stack
from llmhost_local.cloud import ACCESS_KEY, LOCAL_API_KEY, REGION, SECRET_KEY

pytestmark = pytest.mark.e2e

MODEL = "usage-demo"
SERVER_LOG: list[str] = []  # what the server logs: a 500's traceback is there
DOCS = [
    {
        "id": "volcano",
        "text": "Mount Etna is an active stratovolcano on the east coast of Sicily. "
        "It is the tallest active volcano in Europe outside the Caucasus.",
    },
    {
        "id": "bread",
        "text": "Sourdough bread is leavened by a culture of wild yeast and lactic acid "
        "bacteria. The starter must be fed with flour and water every day.",
    },
]


def _signed(api: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else b""
    request = AWSRequest(
        method=method, url=api + path, data=data, headers={"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION).add_auth(request)
    http = urllib.request.Request(
        api + path, data=data or None, headers=dict(request.headers), method=method
    )
    with urllib.request.urlopen(http, timeout=60) as reply:
        return reply.status, json.loads(reply.read())


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from openai import OpenAI

    with local_stack(
        tmp_path_factory.mktemp("qdrant"), log=SERVER_LOG.append, speed=600, drift_seconds=0.5
    ) as stack:
        spec = {"name": MODEL, "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}
        assert _signed(stack.api, "POST", "/v1/deployments", spec)[0] == 201
        deadline = time.monotonic() + 120
        while _signed(stack.api, "GET", f"/v1/deployments/{MODEL}")[1]["status"] != "IN_SERVICE":
            assert time.monotonic() < deadline, "the model never came up"
            time.sleep(0.2)
        code, _ = _signed(stack.api, "POST", "/v1/collections/kb/documents", {"documents": DOCS})
        assert code == 200
        yield OpenAI(base_url=stack.openai + "/v1", api_key=LOCAL_API_KEY, max_retries=0)


def _streamed_usage(client: Any, **request: Any) -> tuple[str, dict[str, int]]:
    text, usage = [], None
    for chunk in client.chat.completions.create(
        **request, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
    assert usage is not None, "include_usage asked for a usage chunk"
    return "".join(text), usage


@pytest.mark.parametrize("rag", [None, {"collection": "kb", "k": 2}], ids=["chat", "rag"])
def test_usage_is_the_same_streamed_or_not(client: Any, rag: dict[str, Any] | None) -> None:
    # Given one request, asked plain and streamed
    request: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "How is sourdough bread leavened?"}],
    }
    if rag:
        request["extra_body"] = {"rag": rag}
    plain = client.chat.completions.create(**request)
    text, streamed = _streamed_usage(client, **request)
    # Then the answers and their usage agree, and the prompt was counted
    assert text == plain.choices[0].message.content
    assert plain.usage.model_dump() == streamed
    assert streamed["prompt_tokens"] > 0
    assert streamed["total_tokens"] == streamed["prompt_tokens"] + streamed["completion_tokens"]


def test_a_streamed_request_the_model_refuses_keeps_its_status(client: Any) -> None:
    from openai import APIStatusError

    # Given a prompt longer than the model takes (the engine says so as the stream's first
    # event, as TGI does)
    request = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "word " * 6000}],
    }
    with pytest.raises(APIStatusError) as plain:
        client.chat.completions.create(**request)
    # When it is streamed, it is refused with the same status and message, not a 200
    with pytest.raises(APIStatusError) as streamed:
        client.chat.completions.create(**request, stream=True)
    assert 400 <= plain.value.status_code < 500
    assert streamed.value.status_code == plain.value.status_code
    assert streamed.value.body == plain.value.body


# ------------------------------------------------------------------- schema fuzzing

EXAMPLES_PER_MODE = 30


def _error_shape(response: Any) -> str | None:
    """None if an error answer is OpenAI's error object, else what is wrong with it."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}: not JSON: {response.text[:200]}"
    error = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(error, dict) and {"message", "type", "code"} <= set(error)):
        return f"{response.status_code}: not OpenAI's error shape: {body}"
    return None


def test_the_openai_api_answers_every_generated_request_as_its_document_says(
    client: Any,
) -> None:
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.core.failures import FailureGroup
    from schemathesis.specs.openapi import checks

    base = str(client.base_url).rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {LOCAL_API_KEY}"}
    # Given the OpenAPI document the running server serves (no key needed for it)
    served = requests.get(f"{base}/v1/openapi.json", timeout=30)
    assert served.status_code == 200
    schema = schemathesis.openapi.from_dict(served.json())
    schema.config.update(base_url=base)
    statuses: Counter[int] = Counter()
    problems: list[str] = []
    validations = [
        checks.status_code_conformance,
        checks.content_type_conformance,
        checks.response_headers_conformance,
        checks.response_schema_conformance,
        checks.negative_data_rejection,
    ]
    sent = 0

    def fuzz(operation: Any, mode: Any) -> None:
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
            nonlocal sent
            # Random model and collection names only ever meet a 404: point every other valid
            # request at the running model and the ingested collection, so the generated
            # parameters reach the engine and the retrieval path.
            body = case.body
            positive = mode is schemathesis.GenerationMode.POSITIVE
            if positive and isinstance(body, dict) and sent % 2 == 0:
                body["model"] = MODEL
                if isinstance(body.get("rag"), dict):
                    body["rag"]["collection"] = "kb"
                if "collection" in body:
                    body["collection"] = "kb"
            response = case.call(base_url=base, headers=headers, timeout=60)
            sent += 1
            statuses[response.status_code] += 1
            label = f"{case.method} {case.formatted_path} ({mode.value})"
            if response.status_code >= 500 and response.status_code != 503:
                problems.append(f"{label}: {response.status_code} {response.text[:300]}")
            if shape := _error_shape(response):
                problems.append(f"{label}: {shape}")
            try:
                case.validate_response(response, checks=validations, headers=headers)
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

    print(f"schemathesis: requests={sent} statuses={dict(sorted(statuses.items()))}")
    # Then every answer is one the document describes
    assert sent > 120
    assert statuses[200] > 20, statuses  # valid requests really were answered
    tracebacks = [line for line in SERVER_LOG if line.startswith("Traceback")]
    assert not problems, (
        "\n\n".join(problems[:20])
        + f"\n\n({len(problems)} problems)\n\n"
        + "\n".join(tracebacks[-3:])
    )
