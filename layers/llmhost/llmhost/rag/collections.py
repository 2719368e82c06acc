"""What may be done to collections and their documents, and what counts as a failure.

The serving API's collection and document routes call these operations; each returns plain
values or raises a typed error, which the API turns into HTTP in one place
(``llmhost.api.http``). Documents are checked one by one (``llmhost.rag.ingest``): a batch
where some landed succeeds with a report of the rest, one where none did fails as a whole
(``NoDocumentIndexed``), carrying the same report.

The embedder is built only by the operations that need it (creating a collection, adding
documents): loading its model is most of a cold start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llmhost.errors import FieldIssue, LlmhostError

if TYPE_CHECKING:
    from llmhost.rag.embeddings import Embedder
    from llmhost.rag.ingest import IngestReport
    from llmhost.rag.store import CollectionInfo, VectorStore

# ------------------------------------------------------------------------------------ errors


class NoDocumentIndexed(LlmhostError):
    """Not one document of a batch landed; ``answer`` is the batch's report (every document
    with the reason), ``issues`` the same reasons by field."""

    code = "no_document_indexed"
    status = 422

    def __init__(self, added: DocumentsAdded, hint: str = "") -> None:
        rejected = added.report.rejected
        super().__init__(
            f"none of the {len(rejected)} documents could be indexed; each is listed with the "
            f"reason in fields (and in rejected){hint}"
        )
        self.answer = added.as_dict()
        self.issues = [FieldIssue(r.field, r.reason) for r in rejected]


class IngestUnavailable(NoDocumentIndexed):
    """Nothing landed and a service failed (embedding, Qdrant): the documents marked
    retryable may be sent again after ``retry_after`` seconds."""

    code = "ingest_unavailable"
    status = 503

    def __init__(self, added: DocumentsAdded) -> None:
        super().__init__(added, "; send the retryable ones again after Retry-After")
        self.retry_after = added.report.retry_after or 5


class DocumentIdTooLong(LlmhostError):
    code = "invalid_request"
    status = 422

    def __init__(self, doc_id: str, limit: int) -> None:
        super().__init__(f"doc_id: is {len(doc_id)} characters; ids have at most {limit}")


class DocumentNotFound(LlmhostError):
    code = "document_not_found"
    status = 404

    def __init__(self, collection: str, doc_id: str) -> None:
        super().__init__(f"collection '{collection}' has no document '{doc_id}'")
        self.collection = collection
        self.doc_id = doc_id


# ------------------------------------------------------------------------------ operations


@dataclass(frozen=True)
class DocumentsAdded:
    """A batch's outcome: which documents landed in ``collection`` and which did not."""

    collection: str
    report: IngestReport

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.report.as_dict(),
            "collection": self.collection,
            "created_collection": self.report.created_collection,
        }


class Collections:
    """The collection and document operations over one vector store and embedder, each
    given as a factory called when an operation needs it."""

    def __init__(self, store: Callable[[], VectorStore], embedder: Callable[[], Embedder]) -> None:
        self._store = store
        self._embedder = embedder

    def list(self) -> list[str]:
        """Every collection's name."""
        return self._store().collections()

    def get(self, name: str) -> CollectionInfo:
        """A collection's size and dimension. Raises CollectionNotFound."""
        return self._store().collection(name)

    def create(self, name: str) -> CollectionInfo:
        """An empty collection for the embedder's vectors. Raises CollectionExists."""
        return self._store().create_collection(name, self._embedder().dimension)

    def delete(self, name: str) -> None:
        """Remove a collection and its documents. Raises CollectionNotFound."""
        self._store().delete_collection(name)

    def add_documents(self, name: str, documents: Sequence[Any]) -> DocumentsAdded:
        """Index each valid document into ``name``, made on first use: only once a document
        is about to land, so a batch that is all rejected leaves nothing behind.

        Raises NoDocumentIndexed when none landed (IngestUnavailable when a service failed
        for some), and what ``ingest_documents`` raises when the collection cannot be used
        at all (IncompatibleVectors, VectorStoreUnavailable).
        """
        from llmhost.rag.ingest import ingest_documents

        report = ingest_documents(name, documents, self._embedder(), self._store(), create=True)
        added = DocumentsAdded(name, report)
        if report.indexed or not report.rejected:
            return added
        if report.failed:
            raise IngestUnavailable(added)
        raise NoDocumentIndexed(added)

    def delete_document(self, name: str, doc_id: str) -> int:
        """Remove a document's chunks; returns how many there were. Raises
        DocumentIdTooLong, DocumentNotFound, CollectionNotFound."""
        from llmhost.rag.ingest import IngestLimits, delete_document

        limit = IngestLimits().max_id_chars
        if len(doc_id) > limit:
            raise DocumentIdTooLong(doc_id, limit)
        removed = delete_document(name, doc_id, self._store())
        if removed == 0:
            raise DocumentNotFound(name, doc_id)
        return removed
