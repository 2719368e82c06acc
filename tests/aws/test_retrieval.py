"""Hybrid retrieval on embedded Qdrant with the real embedder: what each retriever alone
misses, filters, per-document results, and the collection lifecycle's errors."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from qdrant_client import QdrantClient

from llmhost.rag.embeddings.onnx import OnnxEmbedder
from llmhost.rag.ingest import IngestLimits, ingest_documents
from llmhost.rag.retrieve import InvalidQuery, retrieve
from llmhost.rag.store import (
    CollectionExists,
    CollectionNotFound,
    InvalidCollectionName,
    InvalidFilter,
    VectorStore,
    VectorStoreUnavailable,
    parse_filters,
    store_from_env,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    yield VectorStore(client)
    client.close()


DOCS: list[dict[str, Any]] = [
    {
        "id": "code",
        "text": "Changelog: QX-7731 retired; archives now use the new layout.",
        "metadata": {"kind": "changelog", "year": 2021, "tags": ["archive"]},
    },
    {
        "id": "upload-errors",
        "text": "Upload failures are usually caused by a dropped network connection during "
        "the transfer.",
        "metadata": {"kind": "guide", "year": 2022, "tags": ["upload", "network"]},
    },
    {
        "id": "error-codes",
        "text": "Every error the service returns carries a code; the troubleshooting guide "
        "explains what each one means.",
        "metadata": {"kind": "guide", "year": 2023},
    },
    {
        "id": "retry",
        "text": "If an upload fails with an error, wait a minute and retry it; most failures "
        "are temporary.",
        "metadata": {"kind": "faq", "year": 2023, "tags": ["upload"]},
    },
    {
        "id": "bike",
        "text": "Repairing a punctured bicycle tyre: take the wheel off, locate the hole and "
        "patch the inner tube.",
        "metadata": {"kind": "howto", "year": 2020},
    },
    {
        "id": "shipping",
        "text": "Flat rate shipping applies to every order; tire retailers and bike shops get "
        "a discount.",
        "metadata": {"kind": "faq", "year": 2024},
    },
    {
        "id": "kettle",
        "text": "Descale the kettle with vinegar once a month to keep it working well.",
        "metadata": {"kind": "howto", "year": 2019},
    },
    {
        "id": "apartment",
        "text": "How do I rent a flat? Compare prices, visit the flat, and fix the date with "
        "the landlord.",
        "metadata": {"kind": "faq", "year": 2018},
    },
]

KEYWORD_QUERY = "What does error QX-7731 mean when an upload fails?"
PARAPHRASE_QUERY = "how do I fix a flat tire on my bike"


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory, embedder: OnnxEmbedder) -> Iterator[VectorStore]:
    """One collection of DOCS shared by the read-only tests of this module."""
    client = QdrantClient(path=str(tmp_path_factory.mktemp("kb") / "qdrant"))
    store = VectorStore(client)
    store.create_collection("kb", embedder.dimension, indexed_fields={"kind": "keyword"})
    report = ingest_documents("kb", DOCS, embedder, store)
    assert not report.rejected
    yield store
    client.close()


def ids(
    store: VectorStore, embedder: OnnxEmbedder, query: str, k: int = 3, **options: Any
) -> list[str]:
    result = retrieve(query, "kb", k, options.pop("filters", None), embedder, store, **options)
    return [hit.doc_id for hit in result.hits]


def test_hybrid_finds_an_exact_keyword_that_dense_alone_misses(
    kb: VectorStore, embedder: OnnxEmbedder
) -> None:
    # Given a query naming a code only one document contains, among generic error documents
    # Then dense retrieval ranks the generic ones higher, BM25 ranks the code's first,
    # and the hybrid keeps it in its top 3
    assert "code" not in ids(kb, embedder, KEYWORD_QUERY, mode="dense")
    assert "code" in ids(kb, embedder, KEYWORD_QUERY, mode="sparse")
    assert "code" in ids(kb, embedder, KEYWORD_QUERY)


def test_hybrid_finds_a_paraphrase_that_bm25_alone_misses(
    kb: VectorStore, embedder: OnnxEmbedder
) -> None:
    # Given a question sharing no word with its answer ("bicycle tyre" for "bike tire"),
    # while two other documents share "flat", "tire", "fix" and "bike"
    # Then BM25 misses the answer, dense ranks it first, and the hybrid keeps it
    assert "bike" not in ids(kb, embedder, PARAPHRASE_QUERY, mode="sparse")
    assert ids(kb, embedder, PARAPHRASE_QUERY, mode="dense")[0] == "bike"
    assert "bike" in ids(kb, embedder, PARAPHRASE_QUERY)


def test_hits_carry_text_offsets_metadata_and_timings(
    kb: VectorStore, embedder: OnnxEmbedder
) -> None:
    result = retrieve(PARAPHRASE_QUERY, "kb", 8, None, embedder, kb, mode="dense")
    best = result.hits[0]
    source = next(d for d in DOCS if d["id"] == best.doc_id)
    assert source["text"][best.start : best.end] == best.text
    assert best.metadata == source["metadata"]
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert set(result.timings_ms) == {"embed", "retrieve"}
    assert all(v >= 0 for v in result.timings_ms.values())


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"kind": "faq"}, {"retry", "shipping", "apartment"}),
        ({"kind": ["howto", "changelog"]}, {"bike", "kettle", "code"}),
        ({"year": {"gte": 2022, "lte": 2023}}, {"upload-errors", "error-codes", "retry"}),
        ({"tags": "upload"}, {"upload-errors", "retry"}),
        ({"kind": "faq", "year": {"lt": 2020}}, {"apartment"}),
        ({"doc_id": ["bike", "kettle"]}, {"bike", "kettle"}),
        ({"kind": "nothing-like-this"}, set()),
    ],
)
def test_filters_restrict_every_retriever(
    kb: VectorStore, embedder: OnnxEmbedder, filters: dict[str, Any], expected: set[str]
) -> None:
    # Given a metadata filter, each mode returns only (and, with k large, all) matching docs
    for mode in ("dense", "hybrid"):
        assert set(ids(kb, embedder, "upload errors", k=20, filters=filters, mode=mode)) == (
            expected
        )
    assert set(ids(kb, embedder, "upload errors", k=20, filters=filters, mode="sparse")) <= (
        expected
    )


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"kind": {"near": 3}}, "filters.kind"),
        ({"kind": []}, "filters.kind"),
        ({"kind": ["a", 1]}, "filters.kind"),
        ({"year": {"gte": "2020"}}, "filters.year.gte"),
        ({"score": 0.5}, "filters.score"),
        ({"a.b": 1}, "filters.a.b"),
        ({"kind": {"a": 1}}, "filters.kind"),
        (["kind"], "filters"),
        # Qdrant's server refuses what it cannot read (a 400 the client would see as a 500):
        # JSON has no infinity or NaN ("1e400" parses as infinity), and integers are 64-bit
        ({"year": {"gte": float("inf")}}, "filters.year.gte"),
        ({"year": {"lt": float("nan")}}, "filters.year.lt"),
        ({"n": 2**63}, "filters.n"),
        ({"n": -(2**63) - 1}, "filters.n"),
        ({"n": [1, 2**64]}, "filters.n"),
    ],
)
def test_bad_filters_are_refused_naming_the_field(filters: Any, field: str) -> None:
    with pytest.raises(InvalidFilter) as caught:
        parse_filters(filters)
    assert caught.value.status == 422
    assert caught.value.field == field
    assert caught.value.message.startswith(field)


def test_filters_at_the_edge_of_64_bit_integers_are_accepted() -> None:
    assert parse_filters({"n": 2**63 - 1, "m": [-(2**63)], "r": {"gte": 1e308}}) == [
        ("metadata.n", "value", 2**63 - 1),
        ("metadata.m", "any", [-(2**63)]),
        ("metadata.r", "range", {"gte": 1e308}),
    ]


def test_per_document_keeps_each_documents_best_chunk(
    store: VectorStore, embedder: OnnxEmbedder
) -> None:
    # Given a long document (several chunks) about one topic and a short one
    store.create_collection("kb", embedder.dimension)
    long_text = " ".join(
        f"Section {i}: glacier ice cores record the climate of year {1900 + i}." for i in range(20)
    )
    ingest_documents(
        "kb",
        [{"id": "long", "text": long_text}, {"id": "short", "text": "Ice cores hold old air."}],
        embedder,
        store,
        IngestLimits(chunk_tokens=48, overlap_tokens=8),
    )
    assert store.document_chunks("kb", "long") > 3
    # When asking per document
    per_doc = retrieve("ice core climate", "kb", 5, None, embedder, store, per_document=True)
    per_chunk = retrieve("ice core climate", "kb", 5, None, embedder, store)
    # Then each document appears once, while plain results repeat the long one
    assert sorted(h.doc_id for h in per_doc.hits) == ["long", "short"]
    assert [h.doc_id for h in per_chunk.hits].count("long") >= 4


def test_collection_lifecycle_and_its_errors(store: VectorStore, embedder: OnnxEmbedder) -> None:
    # Given a new collection
    info = store.create_collection("papers", embedder.dimension)
    assert (info.points, info.dimension) == (0, embedder.dimension)
    assert store.exists("papers") and store.collections() == ["papers"]
    assert store.collection("papers").bm25 == info.bm25
    # Then creating it again conflicts, and bad names are refused with the rule
    with pytest.raises(CollectionExists) as exists:
        store.create_collection("papers", embedder.dimension)
    assert exists.value.status == 409
    for bad in ("", "has space", "-leading", "x" * 64, "a/b"):
        with pytest.raises(InvalidCollectionName) as invalid:
            store.create_collection(bad, embedder.dimension)
        assert invalid.value.status == 422 and "letters, digits" in invalid.value.message
    # When it is deleted, everything that needs it says it is missing
    store.delete_collection("papers")
    assert not store.exists("papers") and store.collections() == []
    for call in (
        lambda: store.delete_collection("papers"),
        lambda: store.collection("papers"),
        lambda: retrieve("q", "papers", 3, None, embedder, store),
        lambda: ingest_documents("papers", [{"id": "a", "text": "b"}], embedder, store),
        lambda: store.delete_document("papers", "a"),
    ):
        with pytest.raises(CollectionNotFound) as missing:
            call()
        assert missing.value.status == 404 and "papers" in missing.value.message


@pytest.mark.parametrize(
    ("query", "k", "field"),
    [
        ("", 3, "query"),
        ("   ", 3, "query"),
        ("x" * 5000, 3, "query"),
        ("ok", 0, "k"),
        ("ok", 101, "k"),
        ("ok", True, "k"),
    ],
)
def test_bad_queries_are_refused(
    store: VectorStore, embedder: OnnxEmbedder, query: str, k: int, field: str
) -> None:
    # (checked before the collection is looked up: none exists here)
    with pytest.raises(InvalidQuery) as caught:
        retrieve(query, "kb", k, None, embedder, store)
    assert caught.value.status == 422 and caught.value.field == field


def test_a_stopword_only_query_still_gets_dense_results(
    kb: VectorStore, embedder: OnnxEmbedder
) -> None:
    assert len(ids(kb, embedder, "what is it about")) == 3
    assert ids(kb, embedder, "what is it about", mode="sparse") == []


# ------------------------------------------------------------------------- configuration


def test_store_from_env_defaults_to_embedded_qdrant_in_a_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no server URL, only a folder
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "data"))
    store = store_from_env()
    # Then collections live in that folder and survive a reopen
    store.create_collection("notes", 4)
    store.close()
    reopened = store_from_env()
    assert reopened.collections() == ["notes"]
    reopened.close()
    assert (tmp_path / "data").is_dir()


class _QdrantLike(BaseHTTPRequestHandler):
    """Answers GET /collections like a Qdrant server and records the API key it was sent."""

    seen_keys: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        type(self).seen_keys.append(self.headers.get("api-key"))
        body = json.dumps(
            {"result": {"collections": [{"name": "remote"}]}, "status": "ok", "time": 0.0}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_store_from_env_uses_the_server_url_and_the_api_key_secret(
    moto_aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a Qdrant server and its API key in Secrets Manager (as JSON)
    from llmhost import aws

    secret = aws.client("secretsmanager").create_secret(
        Name="llmhost/qdrant", SecretString=json.dumps({"api_key": "k-123"})
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _QdrantLike)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("QDRANT_URL", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("QDRANT_API_KEY_SECRET_ARN", secret["ARN"])
    try:
        # When the store lists collections
        names = store_from_env().collections()
    finally:
        server.shutdown()
    # Then it asked that server, with the secret's key
    assert names == ["remote"]
    assert _QdrantLike.seen_keys == ["k-123"]


def test_an_unreachable_server_is_a_503_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a URL where nothing listens (a port just released)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("QDRANT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("QDRANT_API_KEY_SECRET_ARN", raising=False)
    with pytest.raises(VectorStoreUnavailable) as caught:
        store_from_env().collections()
    assert caught.value.status == 503 and "QDRANT_URL" in caught.value.message
