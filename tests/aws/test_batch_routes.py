"""OpenAI's Files and Batches routes over a real socket, read by the real ``openai`` client:
the multipart upload it sends, the objects it parses, and the error bodies it raises."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_batches import ScriptedRunner, batches, scripted  # noqa: F401  (fixtures)

from llmhost.batches.lines import LineOutcome
from llmhost.batches.service import MAX_FILE_BYTES, Batches
from llmhost.serving.auth import ApiKeyAuth, hash_key
from llmhost.serving.http_app import ServingHttpApp, serve

KEY = "llmh-test-key"


@pytest.fixture
def base_url(batches: Batches) -> Iterator[str]:  # noqa: F811
    auth = ApiKeyAuth(lambda: {"test": hash_key(KEY)})
    app = ServingHttpApp(lambda: None, auth, batches=lambda: batches)
    running = serve(app, port=0)
    threading.Thread(target=running.serve_forever, daemon=True).start()
    host, port = running.server_address[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        running.shutdown()


@pytest.fixture
def client(base_url: str) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0)


def _rows(*ids: str) -> bytes:
    return "\n".join(
        json.dumps(
            {
                "custom_id": custom_id,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
            }
        )
        for custom_id in ids
    ).encode()


def test_the_openai_client_uploads_creates_polls_and_downloads(
    client: Any,
    batches: Batches,  # noqa: F811
    scripted: ScriptedRunner,  # noqa: F811
) -> None:
    # Given a file uploaded as the openai package sends it (multipart, purpose=batch)
    uploaded = client.files.create(file=("in.jsonl", _rows("a", "b")), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes == len(_rows("a", "b"))
    assert client.files.retrieve(uploaded.id).filename == "in.jsonl"
    # When a batch is created over it
    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"llmhost_runner": "scripted"},
    )
    assert batch.status == "in_progress"
    assert batch.request_counts.total == 2
    # And its lines finish
    scripted.finished = {
        1: LineOutcome.answered({"object": "chat.completion"}),
        2: LineOutcome.refused(404, "not_found", "no deployment named 'demo'"),
    }
    batches.advance(batch.id)
    done = client.batches.retrieve(batch.id)
    # Then the client reads the ended batch and both files
    assert done.status == "completed"
    output = client.files.content(done.output_file_id).text.splitlines()
    errors = client.files.content(done.error_file_id).text.splitlines()
    assert [json.loads(r)["custom_id"] for r in output] == ["a"]
    assert [json.loads(r)["custom_id"] for r in errors] == ["b"]
    assert [b.id for b in client.batches.list(limit=5).data] == [batch.id]
    assert client.files.delete(uploaded.id).deleted is True


def test_cancel_through_the_client(
    client: Any,
    scripted: ScriptedRunner,  # noqa: F811
) -> None:
    from openai import ConflictError

    # Given a running batch and one that failed validation
    uploaded = client.files.create(file=("in.jsonl", _rows("a")), purpose="batch")
    not_jsonl = client.files.create(file=("bad.jsonl", b"not json"), purpose="batch")

    def create(file_id: str) -> Any:
        return client.batches.create(
            input_file_id=file_id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"llmhost_runner": "scripted"},
        )

    running, failed = create(uploaded.id), create(not_jsonl.id)
    assert failed.status == "failed"
    # When both are cancelled
    # Then the running one is (its one queued line never ran), the ended one refuses
    assert client.batches.cancel(running.id).status == "cancelled"
    with pytest.raises(ConflictError):
        client.batches.cancel(failed.id)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "param"),
    [
        ("GET", "/v1/files/file-missing", {}, 404, "file_id"),
        ("GET", "/v1/files/not-a-file-id", {}, 404, "file_id"),
        ("GET", "/v1/files/file-missing/content", {}, 404, "file_id"),
        ("DELETE", "/v1/files/file-missing", {}, 404, "file_id"),
        ("GET", "/v1/batches/batch_missing", {}, 404, "batch_id"),
        ("POST", "/v1/batches/" + "x" * 3000 + "/cancel", {}, 404, "batch_id"),
        ("GET", "/v1/batches?limit=0", {}, 400, "limit"),
        ("GET", "/v1/batches?after=batch_missing", {}, 404, "after"),
        ("GET", "/v1/batches?after=not-a-batch-id", {}, 404, "after"),
        ("PUT", "/v1/batches", {}, 405, None),
        ("POST", "/v1/batches", {"json": {"input_file_id": "file-x"}}, 422, "endpoint"),
        (
            "POST",
            "/v1/batches",
            {
                "json": {
                    "input_file_id": "file-missing",
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                }
            },
            404,
            "input_file_id",
        ),
        (
            "POST",
            "/v1/batches",
            {
                "json": {
                    "input_file_id": "../not-a-file-id",
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                }
            },
            404,
            "input_file_id",
        ),
        (
            "POST",
            "/v1/batches",
            {
                "json": {
                    "input_file_id": "file-missing",
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                    "metadata": {"llmhost_runner": "carrier-pigeon"},
                }
            },
            400,
            "metadata.llmhost_runner",
        ),
        ("POST", "/v1/files", {"json": {"purpose": "batch"}}, 415, None),
        ("POST", "/v1/files", {"files": {"file": ("a.jsonl", b"{}")}}, 400, "purpose"),
        (
            "POST",
            "/v1/files",
            {"data": {"purpose": "batch"}, "files": {"x": ("a", b"")}},
            400,
            "file",
        ),
        (
            "POST",
            "/v1/files",
            {"data": {"purpose": "fine-tune"}, "files": {"file": ("a.jsonl", b"{}")}},
            400,
            "purpose",
        ),
        (
            "POST",
            "/v1/files",
            {"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data"}},
            400,
            None,
        ),
        (
            "POST",
            "/v1/files",
            {"data": {"purpose": "batch"}, "files": {"file": ("a", b"x" * (MAX_FILE_BYTES + 1))}},
            413,
            None,
        ),
    ],
)
def test_what_a_client_gets_wrong_is_a_4xx_in_openais_shape(
    base_url: str, method: str, path: str, kwargs: dict[str, Any], status: int, param: str | None
) -> None:
    headers = {"Authorization": f"Bearer {KEY}", **kwargs.pop("headers", {})}
    reply = httpx.request(method, base_url + path, headers=headers, timeout=30, **kwargs)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert {"message", "type", "code"} <= set(error)
    if param is not None:
        assert error["param"] == param
    if status == 405:
        assert reply.headers["allow"] == "POST, GET"


def test_the_routes_need_an_api_key(base_url: str) -> None:
    assert httpx.get(base_url + "/v1/batches", timeout=30).status_code == 401
