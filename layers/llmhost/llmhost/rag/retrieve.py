"""Retrieval: embed the query both ways (dense and BM25 terms) and ask the store, timed."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmhost.errors import LlmhostError
from llmhost.rag.sparse import query_vector
from llmhost.rag.store import Fusion, Hit, SearchMode, parse_filters, validate_collection_name

if TYPE_CHECKING:
    from llmhost.rag.embeddings import Embedder
    from llmhost.rag.store import VectorStore

MAX_K = 100
MAX_QUERY_CHARS = 4000


class InvalidQuery(LlmhostError):
    code = "invalid_query"
    status = 422

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True)
class Retrieval:
    """The hits, best first, and how long each step took (milliseconds)."""

    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)


def retrieve(
    query: str,
    collection: str,
    k: int,
    filters: Mapping[str, Any] | None,
    embedder: Embedder,
    store: VectorStore,
    mode: SearchMode = "hybrid",
    per_document: bool = False,
    prefetch_k: int | None = None,
    fusion: Fusion | None = None,
) -> Retrieval:
    """The ``k`` (1..MAX_K) chunks of ``collection`` most relevant to ``query``.

    Hybrid by default (dense + BM25, fused; see ``VectorStore.search``); ``per_document``
    keeps one chunk per document. ``timings_ms`` has ``embed`` (both query vectors) and
    ``retrieve`` (the store round trip). Raises InvalidQuery (empty or over MAX_QUERY_CHARS
    query, k out of range), InvalidCollectionName, InvalidFilter, CollectionNotFound.
    """
    if not isinstance(query, str) or not query.strip():
        raise InvalidQuery("query", "must be a non-empty string")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidQuery("query", f"is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise InvalidQuery("k", f"must be an integer from 1 to {MAX_K}")
    validate_collection_name(collection)
    parse_filters(filters)  # a bad filter fails before the embedding work

    started = time.perf_counter()
    dense = embedder.embed([query])[0] if mode != "sparse" else None
    sparse = query_vector(query) if mode != "dense" else None
    embedded = time.perf_counter()
    hits = store.search(
        collection,
        dense,
        sparse,
        k,
        filters=filters,
        prefetch_k=prefetch_k,
        mode=mode,
        fusion=fusion,
        per_document=per_document,
    )
    done = time.perf_counter()
    return Retrieval(
        hits=hits,
        timings_ms={
            "embed": round((embedded - started) * 1000, 2),
            "retrieve": round((done - embedded) * 1000, 2),
        },
    )
