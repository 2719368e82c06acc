"""The Qdrant adapter: collections, document chunks as points, and hybrid search.

The only module that imports ``qdrant_client`` (lazily: the client library takes most of a
second to import, and functions that never touch a collection should not pay for it). It
turns every client error into a typed llmhost error, so nothing above it sees Qdrant's.

Layout of a collection: each point is one chunk, with a named dense vector ``dense``
(cosine) and a named sparse vector ``bm25`` (``Modifier.IDF``: Qdrant supplies the IDF at
query time, ``llmhost.rag.sparse`` the term-frequency part). Payload::

    {"doc_id": str, "chunk_index": int, "text": str, "start": int, "end": int,
     "metadata": {flat JSON object given at ingest},
     "source_key": str, "source_version": str}   # only for documents read from an S3 object

``source_key`` is the key of the S3 object a document came from and ``source_version`` that
object's ETag when it was read: removing the object deletes exactly its documents, and a new
version of it deletes the documents the new version no longer holds.

Point ids are uuid5(collection / doc_id / chunk index), so re-ingesting a document overwrites
its chunks in place. The collection's own metadata records the dimension and the BM25
parameters its sparse vectors were built with.

Embedded local mode (``QdrantClient(path=...)``) and a server behave the same for
everything used here: named dense + sparse vectors with the IDF modifier, the Query API with
two prefetches fused by DBSF (or RRF), payload filters. Local mode searches by brute force in
Python (a BM25 query over 10k chunks takes ~0.2 s there, milliseconds on a server) and
writes each point in its own SQLite transaction (~20 ms a point on disk).
"""

from __future__ import annotations

import math
import os
import re
import threading
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from llmhost.errors import LlmhostError
from llmhost.rag.chunking import Chunk
from llmhost.rag.sparse import Bm25Params, SparseVector

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

DENSE = "dense"
SPARSE = "bm25"
SCHEMA_VERSION = 1

# Hybrid defaults, measured on SciFact (bench/retrieval.py): each retriever proposes this many
# chunks and Qdrant's distribution-based score fusion merges them. DBSF beat reciprocal rank
# fusion (whatever its k or weights) by ~0.01 nDCG@10 and was flat from 100 to 500 candidates
# (0.728-0.732; 50 cost recall). 300 is what 100 documents need (CHUNKS_PER_DOCUMENT each),
# so the ranking, which DBSF's normalization makes depend on the list length, is the same
# for any k a request may ask: the benchmark's numbers are what a user gets.
DEFAULT_PREFETCH_K = 300
DEFAULT_RRF_K = 2  # Qdrant's own default
DEFAULT_WEIGHTS = (1.0, 1.0)  # (dense, bm25), for RRF only: DBSF takes no weights
# Chunks fetched per requested document when collapsing to one hit per document: a
# document's chunks often rank next to each other, so a few per document is enough.
CHUNKS_PER_DOCUMENT = 3
UPSERT_BATCH = 128
# How long the Qdrant API key is kept (Powertools Parameters' max_age).
QDRANT_KEY_MAX_AGE_S = 300

COLLECTION_NAME_RULE = (
    "1-63 characters: letters, digits, '-' or '_', starting with a letter or digit"
)
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
FIELD_NAME_RULE = "1-64 characters: letters, digits, '_' or '-', starting with a letter or '_'"
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
_RANGE_KEYS = frozenset({"gt", "gte", "lt", "lte"})
_NAMESPACE = uuid.UUID("6f3a1f52-3c4e-5b7e-9c1d-2a8e4d0b7f10")

SearchMode = Literal["hybrid", "dense", "sparse"]
IndexedFieldType = Literal["keyword", "integer", "float", "bool"]


# ------------------------------------------------------------------------------------ errors


class CollectionNotFound(LlmhostError):
    code = "collection_not_found"
    status = 404

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no collection named '{name}'; GET /v1/collections lists them, "
            f"POST /v1/collections creates one"
        )
        self.name = name


class CollectionExists(LlmhostError):
    code = "collection_exists"
    status = 409

    def __init__(self, name: str) -> None:
        super().__init__(
            f"a collection named '{name}' already exists; ingest into it, or DELETE "
            f"/v1/collections/{name} first"
        )
        self.name = name


class InvalidCollectionName(LlmhostError):
    code = "invalid_collection_name"
    status = 422

    def __init__(self, name: str) -> None:
        super().__init__(f"collection name {name!r} is invalid: use {COLLECTION_NAME_RULE}")
        self.name = name


class InvalidFilter(LlmhostError):
    """A metadata filter the store cannot express; ``field`` is its dotted path."""

    code = "invalid_filter"
    status = 422

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class IncompatibleVectors(LlmhostError):
    """Vectors do not match the collection (another embedding model, or a bug upstream)."""

    code = "incompatible_vectors"
    status = 409


class VectorStoreUnavailable(LlmhostError):
    """Qdrant cannot be reached, answers 5xx, or refused the credentials; ``retry_after``
    seconds is a fair wait when retrying can help."""

    code = "vector_store_unavailable"
    status = 503

    def __init__(self, message: str, retry_after: int | None = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class VectorStoreTimeout(VectorStoreUnavailable):
    """Qdrant did not answer in time."""

    code = "vector_store_timeout"
    status = 504


class VectorStoreBusy(VectorStoreUnavailable):
    """Qdrant refused the request for load (its 429)."""

    code = "vector_store_busy"
    status = 429


# ------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    points: int  # chunks, not documents
    dimension: int
    bm25: Bm25Params


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk; ``text == source[start:end]`` of document ``doc_id``."""

    doc_id: str
    chunk_index: int
    text: str
    score: float
    start: int
    end: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentVectors:
    """A document's chunks with their vectors, one to one, ready to store."""

    doc_id: str
    chunks: Sequence[Chunk]
    dense: np.ndarray  # (len(chunks), dimension), float32
    sparse: Sequence[SparseVector]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: DocumentSource | None = None


@dataclass(frozen=True)
class DocumentSource:
    """The S3 object a document was read from: its key and the ETag of the version read."""

    key: str
    version: str


@dataclass(frozen=True)
class Fusion:
    """How hybrid search merges the two candidate lists.

    ``dbsf`` (default): Qdrant's distribution-based score fusion, each list's scores scaled to
    0..1 by its mean +- 3 standard deviations, then summed. ``rrf``: Qdrant's reciprocal rank
    fusion, score = sum of w / (rank + k) over the lists a chunk is in (``k`` and ``weights``
    as in ``models.Rrf``; a server must be recent enough to take RRF weights).
    """

    method: Literal["rrf", "dbsf"] = "dbsf"
    k: int = DEFAULT_RRF_K
    weights: tuple[float, float] = DEFAULT_WEIGHTS


# ------------------------------------------------------------------------------------ filters


def validate_collection_name(name: str) -> str:
    """``name`` if it follows COLLECTION_NAME_RULE; raises InvalidCollectionName."""
    if not isinstance(name, str) or not _COLLECTION_NAME.match(name):
        raise InvalidCollectionName(str(name))
    return name


def parse_filters(filters: Mapping[str, Any] | None) -> list[tuple[str, str, Any]]:
    """Check a simple JSON filter and return its conditions as (key, kind, value).

    Each entry of ``filters`` is one condition, all of which must hold:
    ``"field": value`` (equality; a string, integer or boolean), ``"field": [values]`` (any
    of; strings or integers), ``"field": {"gte": n, "lte": n}`` (numeric range with any of
    gt/gte/lt/lte). ``doc_id`` filters on the document id; any other field is a key of the
    documents' metadata. Raises InvalidFilter naming ``filters.<field>`` and the fix.
    """
    if filters is None:
        return []
    if not isinstance(filters, Mapping):
        raise InvalidFilter("filters", "must be a JSON object of field: condition")
    conditions: list[tuple[str, str, Any]] = []
    for name, condition in filters.items():
        where = f"filters.{name}"
        if not isinstance(name, str) or not _FIELD_NAME.match(name):
            raise InvalidFilter(where, f"field names use {FIELD_NAME_RULE}")
        key = "doc_id" if name == "doc_id" else f"metadata.{name}"
        if isinstance(condition, Mapping):
            unknown = set(condition) - _RANGE_KEYS
            if unknown or not condition:
                raise InvalidFilter(
                    where, "a range takes one or more of gt, gte, lt, lte with numbers"
                )
            for bound, value in condition.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise InvalidFilter(f"{where}.{bound}", "range bounds must be numbers")
                if not math.isfinite(value):  # "1e400" parses as infinity; JSON has none
                    raise InvalidFilter(f"{where}.{bound}", "range bounds must be finite numbers")
            conditions.append((key, "range", dict(condition)))
        elif isinstance(condition, list):
            if not condition or len(condition) > 100:
                raise InvalidFilter(where, "an any-of list holds 1 to 100 values")
            kinds = {_match_kind(value) for value in condition}
            if kinds not in ({"str"}, {"int"}):
                raise InvalidFilter(where, "an any-of list holds only strings or only integers")
            if kinds == {"int"} and not all(_INT64[0] <= v <= _INT64[1] for v in condition):
                raise InvalidFilter(where, _INT64_RULE)
            conditions.append((key, "any", list(condition)))
        else:
            kind = _match_kind(condition)
            if kind is None:
                raise InvalidFilter(
                    where,
                    "match a string, integer or boolean; for decimals use a range such as "
                    '{"gte": 0.5, "lte": 0.5}',
                )
            if kind == "int" and not _INT64[0] <= condition <= _INT64[1]:
                raise InvalidFilter(where, _INT64_RULE)
            conditions.append((key, "value", condition))
    return conditions


# Qdrant matches 64-bit integers; its server refuses a filter with any other.
_INT64 = (-(2**63), 2**63 - 1)
_INT64_RULE = (
    f"integers to match are 64-bit ({_INT64[0]} to {_INT64[1]}); for larger numbers use a "
    'range such as {"gte": 1e20}'
)


def _match_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "str"
    return None


def point_id(collection: str, doc_id: str, chunk_index: int) -> str:
    """The deterministic id of a chunk's point (re-ingesting overwrites it)."""
    return str(uuid.uuid5(_NAMESPACE, f"{collection}/{doc_id}/{chunk_index}"))


# ------------------------------------------------------------------------------------ adapter


class VectorStore:
    """Collections of document chunks in Qdrant (embedded local mode or a server)."""

    def __init__(self, client: QdrantClient, serialize: bool = False) -> None:
        """``serialize``: one call at a time, for embedded local mode, whose in-memory
        collections are not safe to change from several threads (the local runner serves
        requests on threads); a server client is thread-safe as it is."""
        self._client = client
        self._lock: AbstractContextManager[Any] = threading.RLock() if serialize else nullcontext()

    def close(self) -> None:
        """Release the client (local mode: the folder's lock, so another process may open it)."""
        self._client.close()

    # -- collections

    def create_collection(
        self,
        name: str,
        dimension: int,
        bm25: Bm25Params | None = None,
        indexed_fields: Mapping[str, IndexedFieldType] | None = None,
    ) -> CollectionInfo:
        """Create an empty collection for ``dimension``-long dense vectors.

        ``indexed_fields`` names metadata keys to index for filtering (filters on other keys
        still work, by scanning). Raises InvalidCollectionName, CollectionExists.
        """
        from qdrant_client import models

        validate_collection_name(name)
        bm25 = bm25 or Bm25Params()
        for key in indexed_fields or {}:
            if not _FIELD_NAME.match(key):
                raise InvalidFilter(f"indexed_fields.{key}", f"field names use {FIELD_NAME_RULE}")
        with self._errors(name):
            if self._client.collection_exists(name):
                raise CollectionExists(name)
            try:
                self._client.create_collection(
                    name,
                    vectors_config={
                        DENSE: models.VectorParams(size=dimension, distance=models.Distance.COSINE)
                    },
                    sparse_vectors_config={
                        SPARSE: models.SparseVectorParams(modifier=models.Modifier.IDF)
                    },
                    metadata={
                        "llmhost": {
                            "schema": SCHEMA_VERSION,
                            "dimension": dimension,
                            "bm25": {"k1": bm25.k1, "b": bm25.b, "avg_len": bm25.avg_len},
                        }
                    },
                )
            except Exception as error:
                if "already exists" in str(error):
                    raise CollectionExists(name) from None
                raise
            indexes: dict[str, Any] = {
                "doc_id": models.PayloadSchemaType.KEYWORD,
                "source_key": models.PayloadSchemaType.KEYWORD,
            }
            for key, kind in (indexed_fields or {}).items():
                indexes[f"metadata.{key}"] = models.PayloadSchemaType(kind)
            with warnings.catch_warnings():
                # Local mode keeps no payload indexes and says so once; a server uses them.
                warnings.simplefilter("ignore", UserWarning)
                for key, schema in indexes.items():
                    self._client.create_payload_index(name, key, field_schema=schema, wait=True)
        return CollectionInfo(name=name, points=0, dimension=dimension, bm25=bm25)

    def collection(self, name: str) -> CollectionInfo:
        """The collection's size and parameters. Raises CollectionNotFound."""
        validate_collection_name(name)
        with self._errors(name):
            if not self._client.collection_exists(name):
                raise CollectionNotFound(name)
            info = self._client.get_collection(name)
        meta = (info.config.metadata or {}).get("llmhost", {})
        vectors = info.config.params.vectors
        dense = vectors.get(DENSE) if isinstance(vectors, dict) else None
        dimension = int(meta.get("dimension") or (dense.size if dense else 0))
        return CollectionInfo(
            name=name,
            points=int(info.points_count or 0),
            dimension=dimension,
            bm25=Bm25Params(**meta.get("bm25", {})),
        )

    def collections(self) -> list[str]:
        """Names of all collections, sorted."""
        with self._errors(""):
            return sorted(c.name for c in self._client.get_collections().collections)

    def exists(self, name: str) -> bool:
        validate_collection_name(name)
        with self._errors(name):
            return bool(self._client.collection_exists(name))

    def delete_collection(self, name: str) -> None:
        """Delete a collection and all its points. Raises CollectionNotFound."""
        validate_collection_name(name)
        with self._errors(name):
            if not self._client.collection_exists(name):
                raise CollectionNotFound(name)
            self._client.delete_collection(name)

    # -- documents

    def replace_document(
        self,
        collection: str,
        doc_id: str,
        chunks: Sequence[Chunk],
        dense: np.ndarray,
        sparse: Sequence[SparseVector],
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Make ``chunks`` the document's only chunks; returns how many were written.

        Raises CollectionNotFound, IncompatibleVectors. See ``replace_documents``.
        """
        return self.replace_documents(
            collection, [DocumentVectors(doc_id, chunks, dense, sparse, metadata or {})]
        )[0]

    def replace_documents(self, collection: str, documents: Sequence[DocumentVectors]) -> list[int]:
        """Make each document's new chunks its only ones; returns the chunk counts written.

        The new chunks are upserted first (their ids are deterministic, so they overwrite the
        old ones of the same index) and only then are leftover chunks beyond the new count
        deleted: a concurrent search sees the old or the new version, never no document.
        Chunk indexes are contiguous from 0, so a document had leftovers exactly when the point
        at its new count exists: one lookup by id finds them, and only those documents need the
        (scanning) delete by filter. Raises CollectionNotFound, IncompatibleVectors.
        """
        from qdrant_client import models

        points: list[Any] = []
        for doc in documents:
            if len(doc.chunks) != len(doc.dense) or len(doc.chunks) != len(doc.sparse):
                raise IncompatibleVectors(
                    f"document '{doc.doc_id}': {len(doc.chunks)} chunks, {len(doc.dense)} "
                    f"dense and {len(doc.sparse)} sparse vectors; they must match one to one"
                )
            meta = dict(doc.metadata)
            source = (
                {"source_key": doc.source.key, "source_version": doc.source.version}
                if doc.source is not None
                else {}
            )
            points.extend(
                models.PointStruct(
                    id=point_id(collection, doc.doc_id, chunk.index),
                    vector={
                        DENSE: np.asarray(vector, dtype=np.float32).tolist(),
                        SPARSE: models.SparseVector(
                            indices=list(sv.indices), values=list(sv.values)
                        ),
                    },
                    payload={
                        "doc_id": doc.doc_id,
                        "chunk_index": chunk.index,
                        "text": chunk.text,
                        "start": chunk.start,
                        "end": chunk.end,
                        "metadata": meta,
                        **source,
                    },
                )
                for chunk, vector, sv in zip(doc.chunks, doc.dense, doc.sparse, strict=True)
            )
        probes = {point_id(collection, doc.doc_id, len(doc.chunks)): doc for doc in documents}
        with self._errors(collection):
            for offset in range(0, len(points), UPSERT_BATCH):
                self._client.upsert(
                    collection, points=points[offset : offset + UPSERT_BATCH], wait=True
                )
            stale = self._client.retrieve(
                collection, ids=list(probes), with_payload=False, with_vectors=False
            )
            for found in stale:
                doc = probes[str(found.id)]
                self._client.delete(
                    collection,
                    points_selector=models.FilterSelector(
                        filter=models.Filter(
                            must=[
                                _match("doc_id", doc.doc_id),
                                models.FieldCondition(
                                    key="chunk_index", range=models.Range(gte=len(doc.chunks))
                                ),
                            ]
                        )
                    ),
                    wait=True,
                )
        return [len(doc.chunks) for doc in documents]

    def document_chunks(self, collection: str, doc_id: str) -> int:
        """How many chunks the document has (0 if it is not in the collection)."""
        from qdrant_client import models

        with self._errors(collection):
            return int(
                self._client.count(
                    collection,
                    count_filter=models.Filter(must=[_match("doc_id", doc_id)]),
                    exact=True,
                ).count
            )

    def delete_document(self, collection: str, doc_id: str) -> int:
        """Remove every chunk of ``doc_id``; returns how many there were (0: none).

        Raises CollectionNotFound.
        """
        from qdrant_client import models

        existing = self.document_chunks(collection, doc_id)
        if existing:
            with self._errors(collection):
                self._client.delete(
                    collection,
                    points_selector=models.FilterSelector(
                        filter=models.Filter(must=[_match("doc_id", doc_id)])
                    ),
                    wait=True,
                )
        return existing

    def delete_source(self, collection: str, key: str, *, keep_version: str | None = None) -> int:
        """Remove the chunks of every document read from the S3 object ``key``; with
        ``keep_version``, only those read from another version of it. Returns how many
        chunks there were. Raises CollectionNotFound.
        """
        from qdrant_client import models

        must_not = [_match("source_version", keep_version)] if keep_version is not None else []
        selector = models.Filter(must=[_match("source_key", key)], must_not=must_not or None)
        with self._errors(collection):
            existing = int(self._client.count(collection, count_filter=selector, exact=True).count)
            if existing:
                self._client.delete(
                    collection,
                    points_selector=models.FilterSelector(filter=selector),
                    wait=True,
                )
        return existing

    # -- search

    def search(
        self,
        collection: str,
        dense_query: np.ndarray | None,
        sparse_query: SparseVector | None,
        k: int,
        filters: Mapping[str, Any] | None = None,
        prefetch_k: int | None = None,
        mode: SearchMode = "hybrid",
        fusion: Fusion | None = None,
        per_document: bool = False,
    ) -> list[Hit]:
        """The ``k`` best chunks (or documents, with ``per_document``) for the query.

        ``hybrid`` fuses a dense and a BM25 candidate list of ``prefetch_k`` chunks each
        (default max(DEFAULT_PREFETCH_K, chunks requested)); ``dense`` and ``sparse`` use one
        retriever. ``per_document`` keeps each document's best chunk only. ``filters`` as in
        ``parse_filters``. Raises CollectionNotFound, InvalidFilter.
        """
        from qdrant_client import models

        conditions = parse_filters(filters)
        query_filter = _to_qdrant_filter(conditions)
        limit = k * CHUNKS_PER_DOCUMENT if per_document else k
        prefetch_k = max(prefetch_k or DEFAULT_PREFETCH_K, limit)
        fusion = fusion or Fusion()
        dense_input = (
            np.asarray(dense_query, dtype=np.float32).tolist() if dense_query is not None else None
        )
        sparse_input = (
            models.SparseVector(
                indices=list(sparse_query.indices), values=list(sparse_query.values)
            )
            if sparse_query is not None
            else None
        )
        if mode in ("hybrid", "dense") and dense_input is None:
            raise ValueError(f"mode {mode!r} needs a dense query vector")
        if mode in ("hybrid", "sparse") and sparse_input is None:
            raise ValueError(f"mode {mode!r} needs a sparse query vector")
        if sparse_input is not None and not sparse_input.indices and mode != "dense":
            # A query of only stopwords has no terms: BM25 has nothing to say.
            if mode == "sparse":
                return []
            mode = "dense"

        request: dict[str, Any] = {"limit": limit, "query_filter": query_filter}
        if mode == "dense":
            request.update(query=dense_input, using=DENSE)
        elif mode == "sparse":
            request.update(query=sparse_input, using=SPARSE)
        else:
            request["prefetch"] = [
                models.Prefetch(
                    query=dense_input, using=DENSE, limit=prefetch_k, filter=query_filter
                ),
                models.Prefetch(
                    query=sparse_input, using=SPARSE, limit=prefetch_k, filter=query_filter
                ),
            ]
            if fusion.method == "rrf":
                request["query"] = models.RrfQuery(
                    rrf=models.Rrf(k=fusion.k, weights=list(fusion.weights))
                )
            else:
                request["query"] = models.FusionQuery(fusion=models.Fusion.DBSF)
        with self._errors(collection):
            response = self._client.query_points(collection, with_payload=True, **request)
        hits = [_hit(point) for point in response.points]
        if per_document:
            hits = best_chunk_per_document(hits)[:k]
        return hits

    # -- plumbing

    @contextmanager
    def _errors(self, collection: str) -> Iterator[None]:
        """Map client errors to typed ones: a missing collection, an unreachable server."""
        try:
            with self._lock:
                yield
        except LlmhostError:
            raise
        except Exception as error:
            raise _translate(error, collection) from None


def best_chunk_per_document(hits: Sequence[Hit]) -> list[Hit]:
    """Keep the first (best-ranked) hit of each document, in order."""
    seen: set[str] = set()
    best: list[Hit] = []
    for hit in hits:
        if hit.doc_id not in seen:
            seen.add(hit.doc_id)
            best.append(hit)
    return best


def _hit(point: Any) -> Hit:
    payload = point.payload or {}
    return Hit(
        doc_id=payload.get("doc_id", ""),
        chunk_index=int(payload.get("chunk_index", 0)),
        text=payload.get("text", ""),
        score=float(point.score),
        start=int(payload.get("start", 0)),
        end=int(payload.get("end", 0)),
        metadata=dict(payload.get("metadata") or {}),
    )


def _match(key: str, value: Any) -> Any:
    from qdrant_client import models

    return models.FieldCondition(key=key, match=models.MatchValue(value=value))


def _to_qdrant_filter(conditions: Sequence[tuple[str, str, Any]]) -> Any:
    from qdrant_client import models

    if not conditions:
        return None
    must: list[Any] = []
    for key, kind, value in conditions:
        if kind == "value":
            must.append(models.FieldCondition(key=key, match=models.MatchValue(value=value)))
        elif kind == "any":
            must.append(models.FieldCondition(key=key, match=models.MatchAny(any=value)))
        else:
            must.append(models.FieldCondition(key=key, range=models.Range(**value)))
    return models.Filter(must=must)


def _translate(error: Exception, collection: str) -> Exception:
    """The typed error for a client exception (the exception itself if it is a bug)."""
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException

    status = getattr(error, "status_code", None)
    text = str(error)
    # A server answers 404; local mode raises ValueError("Collection x not found").
    if status == 404 or (isinstance(error, ValueError) and text.endswith("not found")):
        return CollectionNotFound(collection)
    if status in (401, 403):
        return VectorStoreUnavailable(
            f"Qdrant refused the API key ({status}); check the secret that "
            "QDRANT_API_KEY_SECRET_ARN names",
            retry_after=None,
        )
    if status == 429:
        return VectorStoreBusy("Qdrant is overloaded (429); retry after 2 s", retry_after=2)
    # The HTTP client wraps transport failures in ResponseHandlingException.
    cause = error.source if isinstance(error, ResponseHandlingException) else error
    if isinstance(cause, httpx.TimeoutException | TimeoutError):
        return VectorStoreTimeout(
            f"Qdrant did not answer in time ({type(cause).__name__}); retry after 5 s, and "
            "if it persists check the server's load",
        )
    unreachable = (httpx.TransportError, ConnectionError)
    if isinstance(cause, unreachable) or (isinstance(status, int) and status >= 500):
        return VectorStoreUnavailable(
            f"Qdrant did not answer ({type(cause).__name__}{f' {status}' if status else ''}); "
            "check QDRANT_URL and that the server is up, then retry"
        )
    return error


# ------------------------------------------------------------------------------------ factory


def store_from_env() -> VectorStore:
    """The store configured by the environment (call once per process and keep it).

    ``QDRANT_URL`` set: a Qdrant server, with the API key read from the Secrets Manager
    secret ``QDRANT_API_KEY_SECRET_ARN`` when given (its string, or a JSON object's
    ``api_key``). Otherwise embedded local mode with its data under ``QDRANT_PATH``
    (default ``.llmhost/qdrant``); only one process may open a local folder at a time.
    """
    from qdrant_client import QdrantClient

    url = os.environ.get("QDRANT_URL", "").strip()
    if url:
        secret_arn = os.environ.get("QDRANT_API_KEY_SECRET_ARN", "").strip()
        api_key = _read_api_key(secret_arn) if secret_arn else None
        # No version handshake: it would cost every cold start a round trip.
        return VectorStore(
            QdrantClient(url=url, api_key=api_key, timeout=10, check_compatibility=False)
        )
    path = os.environ.get("QDRANT_PATH", "").strip() or ".llmhost/qdrant"
    os.makedirs(path, exist_ok=True)
    return VectorStore(QdrantClient(path=path), serialize=True)


def _read_api_key(secret_arn: str) -> str:
    import json

    from botocore.exceptions import BotoCoreError, ClientError

    from llmhost import aws
    from llmhost.aws_faults import fault_error

    try:
        # Read once per process (the store is built once); the age bounds a rotated key's reach
        # in a process that builds another store.
        value = aws.secret(secret_arn, max_age=QDRANT_KEY_MAX_AGE_S)
    except (ClientError, BotoCoreError) as error:
        fault = fault_error(error, "Secrets Manager (reading the Qdrant API key)")
        if fault is not None:
            raise fault from None
        code = getattr(error, "response", {}).get("Error", {}).get("Code", type(error).__name__)
        raise VectorStoreUnavailable(
            f"cannot read the Qdrant API key secret {secret_arn} ({code}); check "
            "QDRANT_API_KEY_SECRET_ARN and the function's secretsmanager:GetSecretValue grant",
            retry_after=None,
        ) from None
    if value.lstrip().startswith("{"):
        parsed = json.loads(value)
        if isinstance(parsed, dict) and isinstance(parsed.get("api_key"), str):
            return str(parsed["api_key"])
    return value.strip()
