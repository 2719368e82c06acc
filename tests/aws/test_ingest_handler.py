"""The ingest function driven by the S3 sample events, against moto S3 and embedded Qdrant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import load_event
from llmhost import aws, runtime
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext

GUIDE = b"# Guide\n\nThe reconciler never waits for an endpoint inside a Lambda.\n"


@pytest.fixture
def ingest(moto_aws: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "qdrant"))
    return load_handler("ingest", "llmhost-ingest")


def test_created_object_is_indexed_and_removed_object_deleted(ingest: Any) -> None:
    created = load_event("s3-object-created.json")
    record = created["Records"][0]["s3"]
    bucket, key = record["bucket"]["name"], record["object"]["key"]
    # Given the sample's object exists in the bucket
    aws.client("s3").create_bucket(Bucket=bucket)
    aws.client("s3").put_object(Bucket=bucket, Key=key, Body=GUIDE)
    # When its creation is delivered, the document lands in the collection named by the key
    result = ingest.handler(created, LambdaContext("llmhost-ingest"))
    assert result["results"] == [{"key": key, "indexed": 1, "rejected": []}]
    collection = key.split("/")[1]
    assert runtime.store().document_chunks(collection, key) >= 1
    # When its removal is delivered, the document's chunks go
    removed = ingest.handler(load_event("s3-object-removed.json"), LambdaContext("x"))
    assert removed["results"][0]["deleted_chunks"] >= 1
    assert runtime.store().document_chunks(collection, key) == 0


def test_bad_lines_are_reported_and_good_ones_land(ingest: Any) -> None:
    event = load_event("s3-object-created.json")
    record = event["Records"][0]["s3"]
    bucket = record["bucket"]["name"]
    record["object"]["key"] = "collections/notes/batch.jsonl"
    aws.client("s3").create_bucket(Bucket=bucket)
    aws.client("s3").put_object(
        Bucket=bucket,
        Key="collections/notes/batch.jsonl",
        Body=b'{"id": "a", "text": "Alpha particles are helium nuclei."}\n{"id": "b"}\nnot json\n',
    )
    result = ingest.handler(event, LambdaContext("llmhost-ingest"))["results"][0]
    assert result["indexed"] == 1
    assert len(result["rejected"]) == 2
    assert all("batch.jsonl" in r["field"] for r in result["rejected"])


def test_keys_outside_the_layout_are_ignored(ingest: Any) -> None:
    event = load_event("s3-object-created.json")
    event["Records"][0]["s3"]["object"]["key"] = "elsewhere/file.md"
    assert ingest.handler(event, LambdaContext("llmhost-ingest")) == {"results": []}


# ------------------------------------------------------------- documents follow their object


def _deliver(ingest: Any, sample: str, key: str) -> dict[str, Any]:
    """The sample S3 event for ``key`` (keys arrive URL-encoded, as S3 sends them)."""
    from urllib.parse import quote_plus

    event = load_event(sample)
    event["Records"][0]["s3"]["object"]["key"] = quote_plus(key, safe="/")
    results = ingest.handler(event, LambdaContext("llmhost-ingest"))["results"]
    assert len(results) == 1
    return dict(results[0])


def _put(key: str, body: bytes) -> None:
    bucket = load_event("s3-object-created.json")["Records"][0]["s3"]["bucket"]["name"]
    s3 = aws.client("s3")
    if not s3.list_buckets()["Buckets"]:
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=body)


def _lines(*docs: tuple[str, str]) -> bytes:
    import json

    return "\n".join(json.dumps({"id": i, "text": t}) for i, t in docs).encode()


def _ids(collection: str) -> set[str]:
    store = runtime.store()
    found = set()
    for doc_id in ("a", "b", "c", "d", "collections/notes/keep.md", "collections/notes/x y.txt"):
        if store.document_chunks(collection, doc_id):
            found.add(doc_id)
    return found


def test_removing_a_jsonl_object_deletes_exactly_the_documents_it_produced(ingest: Any) -> None:
    # Given a .jsonl object of two documents and a markdown object in one collection
    _put("collections/notes/batch.jsonl", _lines(("a", "Alpha decay."), ("b", "Beta decay.")))
    _put("collections/notes/keep.md", b"Gamma rays are photons.")
    assert (
        _deliver(ingest, "s3-object-created.json", "collections/notes/batch.jsonl")["indexed"] == 2
    )
    _deliver(ingest, "s3-object-created.json", "collections/notes/keep.md")
    assert _ids("notes") == {"a", "b", "collections/notes/keep.md"}
    # When the .jsonl object is removed
    aws.client("s3").delete_object(
        Bucket=load_event("s3-object-removed.json")["Records"][0]["s3"]["bucket"]["name"],
        Key="collections/notes/batch.jsonl",
    )
    removed = _deliver(ingest, "s3-object-removed.json", "collections/notes/batch.jsonl")
    # Then its two documents are gone and the other object's document stays
    assert removed["deleted_chunks"] == 2
    assert _ids("notes") == {"collections/notes/keep.md"}


def test_reuploading_an_object_replaces_the_documents_it_produced(ingest: Any) -> None:
    # Given a .jsonl object of three documents, indexed
    key = "collections/notes/batch.jsonl"
    _put(key, _lines(("a", "Alpha decay."), ("b", "Beta decay."), ("c", "Carbon dating.")))
    _deliver(ingest, "s3-object-created.json", key)
    # When a new version without "b" and with "d" is uploaded over it
    _put(key, _lines(("a", "Alpha decay."), ("c", "Carbon-14 dating."), ("d", "Decay chains.")))
    result = _deliver(ingest, "s3-object-created.json", key)
    # Then "b" is gone, the others are there, and "c" has its new text
    assert result["indexed"] == 3
    assert _ids("notes") == {"a", "c", "d"}
    hits = runtime.store().search("notes", None, _sparse("carbon"), 5, mode="sparse")
    assert [h.text for h in hits if h.doc_id == "c"] == ["Carbon-14 dating."]
    # And a key with a space (URL-encoded by S3 as '+') is removed like any other
    _put("collections/notes/x y.txt", b"Spaces in keys.")
    _deliver(ingest, "s3-object-created.json", "collections/notes/x y.txt")
    assert "collections/notes/x y.txt" in _ids("notes")
    removed = _deliver(ingest, "s3-object-removed.json", "collections/notes/x y.txt")
    assert removed["deleted_chunks"] == 1
    assert _ids("notes") == {"a", "c", "d"}


def _sparse(query: str) -> Any:
    from llmhost.rag.sparse import query_vector

    return query_vector(query)
