"""The ingest function driven by the S3 sample events, against moto S3 and embedded Qdrant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import load_event
from llmhost import aws, runtime
from llmhost.local.events import LambdaContext
from llmhost.local.runner import load_handler

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
