"""The documents bucket: apply one object change (ingest or delete) to its collection.

An object's documents carry its key (and the ETag of the version read), so removing the
object removes exactly the documents it produced, whatever their ids (a ``.jsonl`` line names
its own), and a new version of the object replaces them: documents it no longer holds go.
Nothing here raises for a bad object or document; a failure of S3, the embedder or Qdrant
that a retry may not meet raises ``ObjectNotIndexed`` once every document has been tried,
so the function fails and Lambda delivers the event again (then to the dead-letter queue);
re-ingesting converges, point ids being deterministic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmhost.errors import LlmhostError
from llmhost.rag.ingest import (
    IngestLimits,
    IngestReport,
    Rejected,
    delete_source,
    ingest_documents,
    parse_s3_object,
)
from llmhost.rag.store import CollectionNotFound, DocumentSource

if TYPE_CHECKING:
    from llmhost.rag.embeddings import Embedder
    from llmhost.rag.s3_events import ObjectChange
    from llmhost.rag.store import VectorStore


class ObjectNotIndexed(LlmhostError):
    """Some of an object's documents met a service failure; the event should be retried."""

    code = "object_not_indexed"
    status = 503

    def __init__(self, key: str, result: dict[str, Any]) -> None:
        failed = result.get("failed", 0)
        super().__init__(f"{failed} document(s) of {key} were not indexed; retrying the event")
        self.result = result


def apply_change(
    change: ObjectChange,
    s3: Any,
    store: VectorStore,
    embedder: Embedder,
    limits: IngestLimits | None = None,
) -> dict[str, Any]:
    """Ingest or delete the documents of one object; returns what was done, for the logs.

    Raises ObjectNotIndexed (S3 could not be read, or documents met a service failure).
    """
    if change.action == "delete":
        try:
            removed = delete_source(change.collection, change.key, store)
        except CollectionNotFound:
            removed = 0
        return {"key": change.key, "deleted_chunks": removed}

    read = _read(s3, change.bucket, change.key)
    if isinstance(read, Rejected):
        result = {"key": change.key, "indexed": 0, "rejected": [read.as_dict()]}
        if read.retryable:
            raise ObjectNotIndexed(change.key, {**result, "failed": 1})
        return result
    if read is None:  # removed since the event was sent: its removal event deletes it
        return {"key": change.key, "indexed": 0, "rejected": [], "gone": True}
    body, etag = read
    parsed = parse_s3_object(change.key, body)
    source = DocumentSource(change.key, etag)
    limits = limits or IngestLimits()
    report = IngestReport()
    # An object may hold more documents than one request; ids are checked per slice.
    step = limits.max_documents
    for start in range(0, max(len(parsed.documents), 1), step):
        report = report.merge(
            ingest_documents(
                change.collection,
                parsed.documents[start : start + step],
                embedder,
                store,
                limits,
                locations=parsed.locations[start : start + step],
                source=source,
                create=True,
            )
        )
    rejected = [r.as_dict() for r in parsed.rejected + report.rejected]
    result = {"key": change.key, "indexed": len(report.indexed), "rejected": rejected}
    if report.failed:
        # The old version's documents stay until every document of this one has landed.
        raise ObjectNotIndexed(change.key, {**result, "failed": len(report.failed)})
    try:
        stale = store.delete_source(change.collection, change.key, keep_version=etag)
    except CollectionNotFound:
        stale = 0
    if stale:
        result["deleted_chunks"] = stale
    return result


def _read(s3: Any, bucket: str, key: str) -> tuple[bytes, str] | Rejected | None:
    """(body, ETag) of the object; None if it no longer exists; Rejected if unreadable."""
    from botocore.exceptions import BotoCoreError, ClientError

    from llmhost.aws_faults import classify

    try:
        response = s3.get_object(Bucket=bucket, Key=key)
        return response["Body"].read(), str(response.get("ETag", "")).strip('"')
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404"):
            return None
        fault = classify(error)
        if fault is None:
            return Rejected(
                key,
                key,
                f"S3 refused to read the object ({code}); check the ingest function's "
                "s3:GetObject permission and the object's encryption key",
            )
        return Rejected(key, key, f"S3 could not be read ({fault.kind})", retryable=True)
    except BotoCoreError as error:
        fault = classify(error)
        kind = fault.kind if fault else type(error).__name__
        return Rejected(key, key, f"S3 could not be read ({kind})", retryable=True)
