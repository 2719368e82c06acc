"""The collection and document operations without HTTP: what fails as a whole, what the
failure carries, and that only the operations that embed build the embedder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

from llmhost.rag.collections import (
    Collections,
    DocumentIdTooLong,
    DocumentNotFound,
    IngestUnavailable,
    NoDocumentIndexed,
)
from llmhost.rag.store import CollectionNotFound, VectorStore, VectorStoreUnavailable


class Built:
    """The embedder factory, counting how often an operation asked for it."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.embedder


class Unavailable:
    """An embedder whose service is down: every embedding call fails with a wait."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def embed(self, texts: list[str]) -> np.ndarray:
        raise VectorStoreUnavailable("the embedding service is down", retry_after=7)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    yield VectorStore(client)
    client.close()


def test_reading_and_removing_collections_never_builds_the_embedder(
    store: VectorStore, embedder: Any
) -> None:
    built = Built(embedder)
    ops = Collections(lambda: store, built)
    assert ops.create("docs").dimension == embedder.dimension and built.calls == 1
    assert ops.list() == ["docs"] and ops.get("docs").points == 0
    ops.delete("docs")
    with pytest.raises(CollectionNotFound):
        ops.get("docs")
    assert built.calls == 1


def test_a_batch_none_of_which_lands_fails_with_its_report(
    store: VectorStore, embedder: Any
) -> None:
    ops = Collections(lambda: store, lambda: embedder)
    # When every document of a batch is rejected
    with pytest.raises(NoDocumentIndexed) as failed:
        ops.add_documents("fresh", [{"id": "a"}, "not an object"])
    # Then the error carries the report and names each field, and no collection was made
    error = failed.value
    assert error.status == 422 and error.code == "no_document_indexed"
    assert [i.field for i in error.issues] == ["documents[0].text", "documents[1]"]
    assert error.answer["indexed"] == [] and len(error.answer["rejected"]) == 2
    assert error.answer["collection"] == "fresh" and error.answer["created_collection"] is False
    assert not store.exists("fresh")
    # And a batch where one lands succeeds, reporting the other
    added = ops.add_documents("fresh", [{"id": "a", "text": "Ammonites are extinct."}, {}])
    assert [i.id for i in added.report.indexed] == ["a"] and len(added.report.rejected) == 1
    assert added.as_dict()["created_collection"] is True


def test_a_batch_kept_out_by_a_service_failure_is_retryable(
    store: VectorStore, embedder: Any
) -> None:
    ops = Collections(lambda: store, lambda: Unavailable(embedder))
    with pytest.raises(IngestUnavailable) as failed:
        ops.add_documents("docs", [{"id": "a", "text": "Rivers rise in spring."}])
    error = failed.value
    assert error.status == 503 and error.retry_after == 7
    assert [r["retryable"] for r in error.answer["rejected"]] == [True]
    assert error.message.endswith("send the retryable ones again after Retry-After")


def test_deleting_a_document(store: VectorStore, embedder: Any) -> None:
    ops = Collections(lambda: store, lambda: embedder)
    ops.add_documents("docs", [{"id": "guides/sleep.md", "text": "Sleep releases the GPUs."}])
    with pytest.raises(DocumentIdTooLong, match="ids have at most 256"):
        ops.delete_document("docs", "x" * 257)
    assert ops.delete_document("docs", "guides/sleep.md") == 1
    with pytest.raises(DocumentNotFound) as missing:
        ops.delete_document("docs", "guides/sleep.md")
    assert missing.value.status == 404 and "'guides/sleep.md'" in missing.value.message
