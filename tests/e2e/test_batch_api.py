"""OpenAI's Batch API against the local stack, driven by the real ``openai`` package: a
200-line file uploaded, the batch created, polled to its end, both files downloaded, by the
README's own example, run as written (only its port changed).

The lines run as jobs on the jobs queue, answered by the local engine through the SageMaker
runtime front; a few name a model that does not exist or send a prompt the model refuses,
so the error file has lines too, and some ask for RAG over an ingested collection.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_openai_answers import DOCS, _signed

from conftest import local_stack
from llmhost_local.cloud import LOCAL_API_KEY

pytestmark = pytest.mark.e2e

MODEL = "demo"  # the model the README's example names
ROOT = Path(__file__).resolve().parents[2]
LINES = 200
UNKNOWN_MODEL_LINES = {17, 60, 133}
REFUSED_LINES = {42, 170}  # a prompt longer than the model takes
RAG_LINES = {5, 99, 150}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with local_stack(tmp_path_factory.mktemp("qdrant"), speed=600, drift_seconds=0.5) as stack:
        spec = {"name": MODEL, "model": {"model_id": "HuggingFaceH4/zephyr-7b-beta"}}
        assert _signed(stack.api, "POST", "/v1/deployments", spec)[0] == 201
        deadline = time.monotonic() + 120
        while _signed(stack.api, "GET", f"/v1/deployments/{MODEL}")[1]["status"] != "IN_SERVICE":
            assert time.monotonic() < deadline, "the model never came up"
            time.sleep(0.2)
        code, _ = _signed(stack.api, "POST", "/v1/collections/kb/documents", {"documents": DOCS})
        assert code == 200
        yield stack


@pytest.fixture(scope="module")
def client(stack: Any) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=stack.openai + "/v1", api_key=LOCAL_API_KEY, max_retries=0)


def _readme_batch_example() -> str:
    readme = (ROOT / "README.md").read_text()
    [snippet] = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
        if "client.batches.create" in block
    ]
    return snippet


def _request(line: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "no-such-model" if line in UNKNOWN_MODEL_LINES else MODEL,
        "messages": [{"role": "user", "content": f"Question {line}: how is bread leavened?"}],
        "max_tokens": 16,
    }
    if line in REFUSED_LINES:
        body["messages"][0]["content"] = "word " * 6000
    if line in RAG_LINES:
        body["rag"] = {"collection": "kb", "k": 2}
    return {
        "custom_id": f"request-{line}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": body,
    }


def test_a_200_line_batch_answers_every_line_exactly_once(
    stack: Any, client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a 200-line batch file, a few of its lines bound to fail, where the README's
    # example reads it
    monkeypatch.chdir(tmp_path)
    rows = [_request(n) for n in range(1, LINES + 1)]
    (tmp_path / "batch.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    # When the README's example uploads it, creates the batch and polls it to its end
    snippet = _readme_batch_example()
    assert "http://127.0.0.1:8081/v1" in snippet
    ran: dict[str, Any] = {}
    exec(compile(snippet.replace("http://127.0.0.1:8081", stack.openai), "README.md", "exec"), ran)
    done = ran["batch"]
    assert done.model_extra["llmhost"]["runner"] == "fanout"
    # Then it completed, the failed lines in the error file
    assert done.status == "completed", done
    failing = UNKNOWN_MODEL_LINES | REFUSED_LINES
    assert done.request_counts.total == LINES
    assert done.request_counts.failed == len(failing)
    assert done.request_counts.completed == LINES - len(failing)
    output = [json.loads(row) for row in ran["answers"].splitlines()]
    errors = [json.loads(row) for row in ran["failures"].splitlines()]
    # And every custom_id appears exactly once across the two files
    seen = [row["custom_id"] for row in output + errors]
    assert sorted(seen) == sorted(f"request-{n}" for n in range(1, LINES + 1))
    assert {row["custom_id"] for row in errors} == {f"request-{n}" for n in failing}
    # And each line is in OpenAI's shape: answers with a chat completion, errors with the
    # status and error body the chat route would have answered
    assert all(row["response"]["status_code"] == 200 for row in output)
    assert {row["response"]["body"]["object"] for row in output} == {"chat.completion"}
    rag = [row for row in output if row["custom_id"] in {f"request-{n}" for n in RAG_LINES}]
    assert all(row["response"]["body"]["llmhost"]["sources"] for row in rag)
    by_id = {row["custom_id"]: row for row in errors}
    for line in UNKNOWN_MODEL_LINES:
        assert by_id[f"request-{line}"]["response"]["status_code"] == 404
    for line in REFUSED_LINES:
        assert 400 <= by_id[f"request-{line}"]["response"]["status_code"] < 500
    assert [row["custom_id"] for row in output] == sorted(
        (row["custom_id"] for row in output), key=lambda c: int(c.split("-")[1])
    )


def test_a_file_with_an_invalid_line_fails_validation_naming_it(
    client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    rows = [_request(1), {**_request(2), "url": "/v1/completions"}, _request(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    batch = client.batches.create(
        input_file_id=client.files.create(file=path.open("rb"), purpose="batch").id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + 60
    while batch.status == "validating" and time.monotonic() < deadline:
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "failed"
    assert [(e.line, e.code, e.param) for e in batch.errors.data] == [(2, "invalid_url", "url")]
