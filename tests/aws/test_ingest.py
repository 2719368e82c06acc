"""Ingestion into embedded Qdrant with the real embedder: idempotent replacement, deletion,
per-document rejections in a batch that still lands, and S3 objects of each kind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from llmhost.rag.embeddings.onnx import OnnxEmbedder
from llmhost.rag.ingest import (
    IngestLimits,
    delete_document,
    ingest_documents,
    parse_s3_object,
)
from llmhost.rag.retrieve import retrieve
from llmhost.rag.store import IncompatibleVectors, VectorStore


@pytest.fixture
def store(tmp_path: Path, embedder: OnnxEmbedder) -> Iterator[VectorStore]:
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    vector_store = VectorStore(client)
    vector_store.create_collection("docs", embedder.dimension)
    yield vector_store
    client.close()


def long_text(topic: str, sentences: int) -> str:
    return " ".join(
        f"Note {i} on {topic}: the measurement {i} was repeated." for i in range(sentences)
    )


# Small chunks so a few sentences make a multi-chunk document (and few points to write).
SMALL = IngestLimits(chunk_tokens=32, overlap_tokens=8)


def test_reingesting_a_document_replaces_its_chunks(
    store: VectorStore, embedder: OnnxEmbedder
) -> None:
    # Given a document of several chunks
    doc = {"id": "report", "text": long_text("glaciers", 12), "metadata": {"v": 1}}
    first = ingest_documents("docs", [doc], embedder, store, SMALL)
    chunks = first.indexed[0].chunks
    assert chunks > 3 and store.document_chunks("docs", "report") == chunks
    # When the same document is ingested again
    again = ingest_documents("docs", [doc], embedder, store, SMALL)
    # Then it still has the same chunks, not twice as many
    assert again.indexed[0].chunks == chunks
    assert store.collection("docs").points == chunks
    # When a shorter version with other metadata replaces it
    shorter = {"id": "report", "text": "Glaciers retreat.", "metadata": {"v": 2}}
    ingest_documents("docs", [shorter], embedder, store, SMALL)
    # Then only its one chunk is left, and searches see the new text and metadata
    assert store.collection("docs").points == 1
    hits = retrieve("glacier", "docs", 5, None, embedder, store).hits
    assert [(h.text, h.metadata) for h in hits] == [("Glaciers retreat.", {"v": 2})]


def test_deleting_a_document_removes_all_its_chunks_and_only_them(
    store: VectorStore, embedder: OnnxEmbedder
) -> None:
    docs = [
        {"id": "a", "text": long_text("volcanoes", 8)},
        {"id": "b", "text": "Volcanoes erupt when magma rises."},
    ]
    report = ingest_documents("docs", docs, embedder, store, SMALL)
    a_chunks = report.indexed[0].chunks
    # When "a" is deleted
    assert delete_document("docs", "a", store) == a_chunks
    # Then no hit comes from it, "b" is untouched, and deleting again finds nothing
    hits = retrieve("volcano magma", "docs", 10, None, embedder, store).hits
    assert {h.doc_id for h in hits} == {"b"}
    assert store.collection("docs").points == 1
    assert delete_document("docs", "a", store) == 0


def test_bad_documents_are_reported_and_the_rest_of_the_batch_lands(
    store: VectorStore, embedder: OnnxEmbedder
) -> None:
    # Given a batch mixing good documents with one of each kind of bad one
    limits = IngestLimits(max_text_bytes=200, max_id_chars=20)
    batch: list[Any] = [
        {"id": "good-1", "text": "Coral reefs bleach in warm water.", "metadata": {"sea": "red"}},
        {"text": "no id"},
        {"id": "", "text": "empty id"},
        {"id": 7, "text": "numeric id"},
        {"id": "x" * 21, "text": "id too long"},
        {"id": "no-text"},
        {"id": "blank", "text": "  \n "},
        {"id": "bytes", "text": ["not", "a", "string"]},
        {"id": "huge", "text": "é" * 101},
        {"id": "nested", "text": "ok", "metadata": {"a": {"b": 1}}},
        {"id": "meta-list", "text": "ok", "metadata": ["a"]},
        {"id": "extra", "text": "ok", "title": "T"},
        "just a string",
        {"id": "twice", "text": "first"},
        {"id": "twice", "text": "second"},
        {"id": "good-2", "text": "Kelp forests shelter fish.", "metadata": {"tags": ["a", "b"]}},
    ]
    # When it is ingested
    report = ingest_documents("docs", batch, embedder, store, limits)
    # Then the good ones are indexed, and each bad one is rejected naming its field
    assert [i.id for i in report.indexed] == ["good-1", "good-2"]
    fields = {r.field: r for r in report.rejected}
    assert set(fields) == {
        "documents[1].id",
        "documents[2].id",
        "documents[3].id",
        "documents[4].id",
        "documents[5].text",
        "documents[6].text",
        "documents[7].text",
        "documents[8].text",
        "documents[9].metadata.a",
        "documents[10].metadata",
        "documents[11].title",
        "documents[12]",
        "documents[13].id",
        "documents[14].id",
    }
    assert "200-byte limit" in fields["documents[8].text"].reason
    assert "documents[14]" in fields["documents[13].id"].reason
    assert fields["documents[5].text"].id == "no-text"
    assert all(r.reason for r in report.rejected)
    assert store.collection("docs").points == 2
    assert json.loads(json.dumps(report.as_dict()))["indexed"][0] == {"id": "good-1", "chunks": 1}


def test_a_batch_over_the_document_limit_rejects_only_the_excess(
    store: VectorStore, embedder: OnnxEmbedder
) -> None:
    docs = [{"id": f"d{i}", "text": f"Fact number {i}."} for i in range(4)]
    report = ingest_documents("docs", docs, embedder, store, IngestLimits(max_documents=3))
    assert [i.id for i in report.indexed] == ["d0", "d1", "d2"]
    assert [(r.id, r.field) for r in report.rejected] == [("d3", "documents[3]")]


def test_a_collection_of_another_dimension_is_refused(
    store: VectorStore, embedder: OnnxEmbedder
) -> None:
    store.create_collection("small", 8)
    with pytest.raises(IncompatibleVectors) as caught:
        ingest_documents("small", [{"id": "a", "text": "b"}], embedder, store)
    assert caught.value.status == 409 and "new collection" in caught.value.message


def test_batching_does_not_change_the_vectors(store: VectorStore, embedder: OnnxEmbedder) -> None:
    # Given the same documents ingested with embedding batches of 1 and of 64 chunks
    docs = [{"id": f"d{i}", "text": long_text(f"topic {i}", 3)} for i in range(3)]
    store.create_collection("other", embedder.dimension)
    ingest_documents("docs", docs, embedder, store, IngestLimits(embed_batch=1))
    ingest_documents("other", docs, embedder, store, IngestLimits(embed_batch=64))
    # Then a search scores them identically
    scores = [
        [round(h.score, 5) for h in retrieve("topic 1", c, 5, None, embedder, store).hits]
        for c in ("docs", "other")
    ]
    assert scores[0] == scores[1]
    assert np.isfinite(scores[0]).all()


# ---------------------------------------------------------------------------------- S3 objects


def test_text_and_markdown_objects_are_one_document_named_by_the_key() -> None:
    for key in ("inbox/notes.txt", "inbox/README.MD"):
        parsed = parse_s3_object(key, "\ufeffHello — world\n".encode())
        assert parsed.documents == [
            {"id": key, "text": "Hello — world\n", "metadata": {"source": key}}
        ]
        assert parsed.locations == [key] and parsed.rejected == []


def test_jsonl_objects_give_one_document_a_line_and_reject_bad_lines_alone(
    store: VectorStore, embedder: OnnxEmbedder
) -> None:
    # Given a JSON Lines object with good lines, a blank line, broken JSON and a bad document
    body = "\n".join(
        [
            json.dumps({"id": "p1", "text": "Tides follow the moon.", "metadata": {"n": 1}}),
            "",
            '{"id": "p2", "text": ',
            json.dumps({"id": "p3", "text": ""}),
            json.dumps({"id": "p4", "text": "Waves carry energy."}),
        ]
    ).encode()
    parsed = parse_s3_object("drop/ocean.jsonl", body)
    # Then the broken line is rejected by its line number
    assert [(r.field, r.id) for r in parsed.rejected] == [("drop/ocean.jsonl line 3", None)]
    assert "not JSON" in parsed.rejected[0].reason
    # And when the rest is ingested, the bad document is named by its line too
    report = ingest_documents("docs", parsed.documents, embedder, store, locations=parsed.locations)
    assert [i.id for i in report.indexed] == ["p1", "p4"]
    assert [r.field for r in report.rejected] == ["drop/ocean.jsonl line 4.text"]


@pytest.mark.parametrize(
    ("key", "body", "fix"),
    [
        ("inbox/paper.pdf", b"%PDF-1.7", "upload .txt, .md or .jsonl"),
        ("inbox/noext", b"plain", "upload .txt, .md or .jsonl"),
        ("inbox/latin1.txt", "café".encode("latin-1"), "re-save the file as UTF-8"),
        ("inbox/utf16.jsonl", '{"id": "a"}'.encode("utf-16"), "re-save the file as UTF-8"),
    ],
)
def test_unsupported_or_undecodable_objects_are_rejected_with_the_fix(
    key: str, body: bytes, fix: str
) -> None:
    parsed = parse_s3_object(key, body)
    assert parsed.documents == []
    (rejected,) = parsed.rejected
    assert rejected.field == key and fix in rejected.reason
