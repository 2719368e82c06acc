"""The collections/documents routes of the serving function, fed API Gateway's REST events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from conftest import load_event
from llmhost import runtime
from llmhost.rag.store import VectorStore
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext


@pytest.fixture
def serve(tmp_path: Path, embedder: Any) -> Iterator[Any]:
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    runtime.override(store=VectorStore(client), embedder=embedder)
    yield load_handler("serve", "llmhost-serve")
    client.close()


def call(serve: Any, event: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any]]:
    response = serve.handler(event, LambdaContext("llmhost-serve"))
    headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
    return response["statusCode"], json.loads(response["body"]), headers


def add(serve: Any, collection: str, documents: list[Any]) -> tuple[int, dict[str, Any]]:
    event = load_event("api-documents-add.json")
    event["path"] = f"/v1/collections/{collection}/documents"
    event["pathParameters"] = {"name": collection}
    event["body"] = json.dumps({"documents": documents})
    status, body, _ = call(serve, event)
    return status, body


GREEDY = "/v1/collections/{name}/documents/{doc_id+}"


def delete(
    serve: Any, collection: str, raw_id: str, *, parameter: str | None = None
) -> tuple[int, dict[str, Any]]:
    """DELETE as API Gateway delivers it to the template's greedy {doc_id+} resource: the
    path as received, and ``parameter`` (default: the id as sent) in pathParameters."""
    event = load_event("api-document-delete.json")
    event["resource"] = event["requestContext"]["resourcePath"] = GREEDY
    event["path"] = f"/v1/collections/{collection}/documents/{raw_id}"
    event["requestContext"]["path"] = f"/prod{event['path']}"
    event["pathParameters"] = {"name": collection, "doc_id": parameter or raw_id}
    status, body, _ = call(serve, event)
    return status, body


def test_a_batch_that_is_all_rejected_creates_no_collection(serve: Any) -> None:
    # When every document of a batch for a new collection is rejected
    status, body = add(serve, "fresh", [{"id": "a"}, {"text": "no id"}])
    # Then the answer is 422 naming each, and no (empty) collection was made
    assert status == 422 and len(body["rejected"]) == 2
    assert body["created_collection"] is False
    assert not runtime.store().exists("fresh")
    # And the first batch with a good document makes it
    status, body = add(serve, "fresh", [{"id": "a", "text": "Ammonites are extinct."}])
    assert status == 200 and body["created_collection"] is True
    assert runtime.store().exists("fresh")


@pytest.mark.parametrize(
    ("doc_id", "sent"),
    [
        ("guides/sleep.md", "guides%2Fsleep.md"),
        ("notes/2024/a b.txt", "notes%2F2024%2Fa%20b.txt"),
        ("100% sure", "100%25%20sure"),
        ("plain", "plain"),
    ],
)
def test_a_document_whose_id_has_a_slash_is_deleted_by_its_encoded_id(
    serve: Any, doc_id: str, sent: str
) -> None:
    # Given a document whose id holds characters a path segment cannot carry as they are
    assert add(serve, "docs", [{"id": doc_id, "text": "Dormice hibernate."}])[0] == 200
    # When it is deleted with the id percent-encoded, as API Gateway passes it on
    status, body = delete(serve, "docs", sent)
    # Then that document goes
    assert (status, body["deleted"]) == (200, doc_id), body
    assert runtime.store().document_chunks("docs", doc_id) == 0
    # And deleting it again is a 404 naming the decoded id
    status, body = delete(serve, "docs", sent)
    assert status == 404 and doc_id in body["error"]["message"]


@pytest.mark.parametrize(
    ("doc_id", "path", "parameter"),
    [
        # API Gateway decoded %2F: the id spans several segments of the greedy resource
        ("guides/sleep.md", "guides/sleep.md", "guides/sleep.md"),
        ("notes/2024/a b.txt", "notes/2024/a%20b.txt", "notes/2024/a b.txt"),
        ("notes/2024/a b.txt", "notes/2024/a b.txt", "notes/2024/a b.txt"),
        ("folder/", "folder/", "folder/"),
        # the path kept encoded, the greedy parameter decoded (or not)
        ("guides/sleep.md", "guides%2Fsleep.md", "guides/sleep.md"),
        ("guides/sleep.md", "guides%2Fsleep.md", "guides%2Fsleep.md"),
    ],
)
def test_a_document_is_deleted_however_the_gateway_delivers_its_slashes(
    serve: Any, doc_id: str, path: str, parameter: str
) -> None:
    # Given a document whose id holds '/'
    assert add(serve, "docs", [{"id": doc_id, "text": "Dormice hibernate."}])[0] == 200
    # When API Gateway hands its DELETE to the {doc_id+} resource in either shape
    status, body = delete(serve, "docs", path, parameter=parameter)
    # Then that document goes, and only once
    assert (status, body["deleted"]) == (200, doc_id), body
    assert runtime.store().document_chunks("docs", doc_id) == 0
    status, body = delete(serve, "docs", path, parameter=parameter)
    assert status == 404 and doc_id in body["error"]["message"]


def test_an_id_part_with_an_empty_segment_is_a_404_not_a_500(serve: Any) -> None:
    assert add(serve, "docs", [{"id": "a/b", "text": "Dormice hibernate."}])[0] == 200
    status, body = delete(serve, "docs", "a//b", parameter="a//b")
    assert status == 404, body


def test_errors_of_the_document_routes_keep_their_codes_and_bodies(serve: Any) -> None:
    # A document id over the limit is a 422 naming doc_id; an unknown one a 404
    assert add(serve, "docs", [{"id": "a", "text": "Dormice hibernate."}])[0] == 200
    status, body = delete(serve, "docs", "x" * 257)
    assert status == 422 and body == {
        "error": {
            "code": "invalid_request",
            "message": "doc_id: is 257 characters; ids have at most 256",
        }
    }
    status, body = delete(serve, "docs", "missing")
    assert status == 404 and body["error"]["code"] == "document_not_found"


def test_a_stream_request_to_the_gateway_says_where_to_stream(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = load_event("api-chat-completions.json")
    event["body"] = json.dumps(
        {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    )
    status, body, _ = call(serve, event)
    assert status == 400 and body["error"]["code"] == "stream_not_supported_here"
    assert "the StreamUrl stack output" in body["error"]["message"]
