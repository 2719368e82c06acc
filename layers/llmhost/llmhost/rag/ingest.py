"""Ingestion: validate documents one by one, chunk, embed in batches, replace in the store.

A batch is never all-or-nothing: each bad document (missing or empty id or text, text too
large, wrong types, nested metadata, an id given twice) is reported with the field at fault
and the fix, and every good one lands. Re-ingesting a document replaces its chunks, so a
retried batch converges to the same collection.

``parse_s3_object`` turns an object dropped in the ingest bucket into documents: ``.txt`` and
``.md`` are one document each (the key is the id), ``.jsonl`` holds one document a line.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmhost.errors import LlmhostError
from llmhost.rag.chunking import DEFAULT_MAX_TOKENS, DEFAULT_OVERLAP_TOKENS, Chunk, chunk_document
from llmhost.rag.sparse import Bm25Params, document_vector
from llmhost.rag.store import (
    FIELD_NAME_RULE,
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    DocumentSource,
    DocumentVectors,
    IncompatibleVectors,
    validate_collection_name,
)

if TYPE_CHECKING:
    from llmhost.rag.embeddings import Embedder
    from llmhost.rag.store import VectorStore

_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOCUMENT_KEYS = frozenset({"id", "text", "metadata"})
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class IngestLimits:
    """Per-document limits and how documents are cut and batched.

    Sizes are in bytes of UTF-8; ``chunk_tokens`` and ``overlap_tokens`` are embedder
    wordpieces (capped at what the embedder reads, less its two special tokens);
    ``embed_batch`` is chunks per embedder call.
    """

    max_documents: int = 1000
    max_text_bytes: int = 1_000_000
    max_id_chars: int = 256
    max_metadata_bytes: int = 8192
    chunk_tokens: int = DEFAULT_MAX_TOKENS
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS
    embed_batch: int = 32


@dataclass(frozen=True)
class Indexed:
    id: str
    chunks: int

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "chunks": self.chunks}


@dataclass(frozen=True)
class Rejected:
    """A document that did not land: ``field`` locates the problem (``documents[2].text``,
    ``notes.jsonl line 4``); ``reason`` says what is wrong and what to do. ``retryable``: the
    document is fine but a service failed (embedding, Qdrant); sending it again later
    indexes it, once (point ids are deterministic)."""

    id: str | None
    field: str
    reason: str
    retryable: bool = False
    retry_after: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "field": self.field,
            "reason": self.reason,
            "retryable": self.retryable,
        }


@dataclass
class IngestReport:
    indexed: list[Indexed] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    created_collection: bool = False

    def merge(self, other: IngestReport) -> IngestReport:
        return IngestReport(
            self.indexed + other.indexed,
            self.rejected + other.rejected,
            self.created_collection or other.created_collection,
        )

    @property
    def failed(self) -> list[Rejected]:
        """Documents that did not land because a service failed (worth sending again)."""
        return [r for r in self.rejected if r.retryable]

    @property
    def retry_after(self) -> int | None:
        """The longest wait a service failure asked for, if any did."""
        waits = [r.retry_after for r in self.failed if r.retry_after]
        return max(waits) if waits else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "indexed": [i.as_dict() for i in self.indexed],
            "rejected": [r.as_dict() for r in self.rejected],
        }


@dataclass(frozen=True)
class ParsedObject:
    """Documents read from one S3 object, with where each came from, and what was refused."""

    documents: list[dict[str, Any]]
    locations: list[str]
    rejected: list[Rejected]


def ingest_documents(
    collection: str,
    documents: Sequence[Any],
    embedder: Embedder,
    store: VectorStore,
    limits: IngestLimits | None = None,
    locations: Sequence[str] | None = None,
    source: DocumentSource | None = None,
    create: bool = False,
) -> IngestReport:
    """Index each valid document of ``documents`` into ``collection``; report every one.

    A document is ``{"id": str, "text": str, "metadata": {flat JSON object}?}``.
    ``locations`` names where each document came from in rejections (default
    ``documents[i]``); ``source`` is the S3 object they were read from (recorded with each
    chunk, so removing the object removes them). ``create``: make the collection if it does
    not exist, once the first document is about to land (``report.created_collection``).
    Raises CollectionNotFound,
    IncompatibleVectors (the collection was made for another embedding dimension), and
    VectorStoreUnavailable when the collection cannot be read at all; document problems
    never raise, and a failure of the embedder or the store while writing is reported for
    each document it hit (``retryable``), the other documents still landing.
    """
    limits = limits or IngestLimits()
    validate_collection_name(collection)
    found: list[CollectionInfo] = []
    try:
        if not create or store.exists(collection):
            found.append(_compatible(store.collection(collection), embedder))
    except LlmhostError as error:
        # The store could not be read: each valid document is reported retryable below
        # (target() reads it again for each batch), not the whole request failed.
        if not _is_transient(error):
            raise
    report = IngestReport()

    def target() -> CollectionInfo:
        # Created only once a document is about to land: a batch that is all rejected
        # leaves no empty collection behind.
        if not found and not create:
            found.append(_compatible(store.collection(collection), embedder))
        if not found:
            try:
                found.append(store.create_collection(collection, embedder.dimension))
                report.created_collection = True
            except CollectionExists:  # a concurrent request made it first (or a retry)
                found.append(_compatible(store.collection(collection), embedder))
        return found[0]

    where = list(locations) if locations is not None else []
    where += [f"documents[{i}]" for i in range(len(where), len(documents))]
    if len(documents) > limits.max_documents:
        report.rejected.extend(
            Rejected(
                _id_of(doc),
                where[i],
                f"over {limits.max_documents} documents in one "
                "batch; send the rest in another request",
            )
            for i, doc in enumerate(documents)
            if i >= limits.max_documents
        )
        documents = documents[: limits.max_documents]

    valid: list[tuple[int, str, str, dict[str, Any]]] = []
    duplicates = _duplicate_ids(documents)
    for i, doc in enumerate(documents):
        problem = _validate(doc, where[i], limits)
        if problem is None and doc["id"] in duplicates:
            others = ", ".join(where[j] for j in duplicates[doc["id"]] if j != i)
            problem = Rejected(
                doc["id"],
                f"{where[i]}.id",
                f"the same id is also at {others}; send each id once per batch",
            )
        if problem is not None:
            report.rejected.append(problem)
        else:
            valid.append((i, doc["id"], doc["text"], dict(doc.get("metadata") or {})))

    # The embedder reads max_tokens including its [CLS] and [SEP]: chunks must fit whole.
    chunk_tokens = min(limits.chunk_tokens, embedder.max_tokens - 2)
    overlap = min(limits.overlap_tokens, max(0, chunk_tokens // 2 - 1))
    pending: list[_Pending] = []
    pending_chunks = 0

    def flush() -> None:
        try:
            info = target()
            report.indexed.extend(
                _write(collection, pending, embedder, store, info.bm25, limits, source)
            )
        except (CollectionNotFound, IncompatibleVectors):
            raise
        except LlmhostError as error:
            if not _is_transient(error):
                raise
            # This batch did not land; later batches may (the service may be back).
            wait = getattr(error, "retry_after", None)
            report.rejected.extend(
                Rejected(
                    p.doc_id,
                    p.where,
                    f"not indexed: {error.message}; send the document again later",
                    retryable=True,
                    retry_after=int(wait) if wait else None,
                )
                for p in pending
            )

    for i, doc_id, text, metadata in valid:
        chunks = chunk_document(doc_id, text, embedder.token_spans(text), chunk_tokens, overlap)
        if not chunks:
            report.rejected.append(
                Rejected(doc_id, f"{where[i]}.text", "has no words to index; send text")
            )
            continue
        pending.append(_Pending(doc_id, chunks, metadata, where[i]))
        pending_chunks += len(chunks)
        # Batch across documents: most are one or two chunks, and the model is much faster
        # per text on a batch than one text at a time.
        if pending_chunks >= limits.embed_batch:
            flush()
            pending, pending_chunks = [], 0
    if pending:
        flush()
    return report


def delete_document(collection: str, doc_id: str, store: VectorStore) -> int:
    """Remove a document's chunks; returns how many there were (0: it was not there).

    Raises CollectionNotFound.
    """
    validate_collection_name(collection)
    return store.delete_document(collection, doc_id)


def delete_source(collection: str, key: str, store: VectorStore) -> int:
    """Remove every document read from the S3 object ``key``; returns their chunk count.

    Documents indexed before their object was recorded with them (a .txt/.md object's
    document is named by its key) go too. Raises CollectionNotFound.
    """
    validate_collection_name(collection)
    removed = store.delete_source(collection, key)
    if key.lower().endswith(TEXT_SUFFIXES):
        removed += store.delete_document(collection, key)
    return removed


def parse_s3_object(key: str, body: bytes) -> ParsedObject:
    """The documents in one S3 object, by the key's extension.

    ``.txt``/``.md``: one document, id = key, metadata ``{"source": key}``. ``.jsonl``: one
    document object a line (blank lines skipped), each bad line rejected on its own. Any
    other extension, or bytes that are not UTF-8, give one rejection naming the key and the
    fix; nothing raises.
    """
    lowered = key.lower()
    if not lowered.endswith((*TEXT_SUFFIXES, JSONL_SUFFIX)):
        return ParsedObject(
            [], [], [Rejected(key, key, "unsupported file type; upload .txt, .md or .jsonl")]
        )
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return ParsedObject(
            [],
            [],
            [
                Rejected(
                    key,
                    key,
                    f"not valid UTF-8 (byte {error.start}); re-save the file as UTF-8 and "
                    "upload it again",
                )
            ],
        )
    if not lowered.endswith(JSONL_SUFFIX):
        return ParsedObject([{"id": key, "text": text, "metadata": {"source": key}}], [key], [])

    documents: list[dict[str, Any]] = []
    locations: list[str] = []
    rejected: list[Rejected] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{key} line {number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            rejected.append(
                Rejected(
                    None,
                    where,
                    f"not JSON ({error.msg} at column {error.colno}); "
                    'write one {"id": ..., "text": ...} object per line',
                )
            )
            continue
        documents.append(value)
        locations.append(where)
    return ParsedObject(documents, locations, rejected)


# ------------------------------------------------------------------------------------ helpers


def _compatible(info: CollectionInfo, embedder: Embedder) -> CollectionInfo:
    if info.dimension != embedder.dimension:
        raise IncompatibleVectors(
            f"collection '{info.name}' holds {info.dimension}-dimensional vectors but the "
            f"embedding model makes {embedder.dimension}; ingest into a new collection"
        )
    return info


@dataclass(frozen=True)
class _Pending:
    doc_id: str
    chunks: list[Chunk]
    metadata: dict[str, Any]
    where: str


def _is_transient(error: LlmhostError) -> bool:
    """A failure of a service (busy, unreachable, timed out) that a later retry may not meet:
    its status says so and it suggests a wait (a refused credential suggests none)."""
    return error.status in (429, 503, 504) and getattr(error, "retry_after", None) is not None


def _write(
    collection: str,
    pending: list[_Pending],
    embedder: Embedder,
    store: VectorStore,
    bm25: Bm25Params,
    limits: IngestLimits,
    source: DocumentSource | None = None,
) -> list[Indexed]:
    import numpy as np

    texts = [chunk.text for p in pending for chunk in p.chunks]
    dense = np.concatenate(
        [
            embedder.embed(texts[offset : offset + limits.embed_batch])
            for offset in range(0, len(texts), limits.embed_batch)
        ]
    )
    documents: list[DocumentVectors] = []
    offset = 0
    for p in pending:
        sparse = [document_vector(chunk.text, bm25) for chunk in p.chunks]
        vectors = dense[offset : offset + len(p.chunks)]
        documents.append(DocumentVectors(p.doc_id, p.chunks, vectors, sparse, p.metadata, source))
        offset += len(p.chunks)
    counts = store.replace_documents(collection, documents)
    return [Indexed(doc.doc_id, count) for doc, count in zip(documents, counts, strict=True)]


def _validate(doc: Any, where: str, limits: IngestLimits) -> Rejected | None:
    if not isinstance(doc, Mapping):
        return Rejected(None, where, 'a document is a JSON object {"id", "text", "metadata"?}')
    doc_id = doc.get("id")
    unknown = sorted(str(k) for k in doc if k not in _DOCUMENT_KEYS)
    if unknown:
        return Rejected(
            _id_of(doc),
            f"{where}.{unknown[0]}",
            "unknown field; a document has only id, text and metadata (put the rest in metadata)",
        )
    if doc_id is None:
        return Rejected(None, f"{where}.id", "required: a unique string naming the document")
    if not isinstance(doc_id, str):
        return Rejected(None, f"{where}.id", f"must be a string, got {_json_type(doc_id)}")
    if not doc_id.strip():
        return Rejected(doc_id, f"{where}.id", "must not be empty")
    if len(doc_id) > limits.max_id_chars or _CONTROL.search(doc_id):
        return Rejected(
            doc_id[:64],
            f"{where}.id",
            f"use at most {limits.max_id_chars} characters and no control characters",
        )
    text = doc.get("text")
    if text is None:
        return Rejected(doc_id, f"{where}.text", "required: the document's text as a string")
    if not isinstance(text, str):
        return Rejected(doc_id, f"{where}.text", f"must be a string, got {_json_type(text)}")
    if not text.strip():
        return Rejected(doc_id, f"{where}.text", "is empty; send the document's text")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > limits.max_text_bytes:
        return Rejected(
            doc_id,
            f"{where}.text",
            f"is {size} bytes, over the {limits.max_text_bytes}-byte limit; split the "
            "document into parts with ids of their own",
        )
    return _validate_metadata(doc.get("metadata"), doc_id, f"{where}.metadata", limits)


def _validate_metadata(
    metadata: Any, doc_id: str, where: str, limits: IngestLimits
) -> Rejected | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        return Rejected(doc_id, where, f"must be a JSON object, got {_json_type(metadata)}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not _FIELD_NAME.match(key):
            return Rejected(doc_id, f"{where}.{key}", f"keys use {FIELD_NAME_RULE}")
        scalars = value if isinstance(value, list) else [value]
        for item in scalars:
            if item is not None and not isinstance(item, str | int | float | bool):
                return Rejected(
                    doc_id,
                    f"{where}.{key}",
                    "metadata is flat: values are strings, numbers, booleans, null or lists "
                    "of those, not objects",
                )
            if isinstance(item, float) and not math.isfinite(item):
                return Rejected(doc_id, f"{where}.{key}", "numbers must be finite")
    size = len(json.dumps(metadata, ensure_ascii=False).encode())
    if size > limits.max_metadata_bytes:
        return Rejected(
            doc_id, where, f"is {size} bytes of JSON, over the {limits.max_metadata_bytes} limit"
        )
    return None


def _duplicate_ids(documents: Sequence[Any]) -> dict[str, list[int]]:
    positions: dict[str, list[int]] = {}
    for i, doc in enumerate(documents):
        doc_id = doc.get("id") if isinstance(doc, Mapping) else None
        if isinstance(doc_id, str):
            positions.setdefault(doc_id, []).append(i)
    return {doc_id: found for doc_id, found in positions.items() if len(found) > 1}


def _id_of(doc: Any) -> str | None:
    doc_id = doc.get("id") if isinstance(doc, Mapping) else None
    return doc_id if isinstance(doc_id, str) else None


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return "null" if value is None else type(value).__name__
