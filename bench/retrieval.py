"""Retrieval quality on a BEIR-format set (SciFact by default), through the product's own path.

Indexes the corpus with ``llmhost.rag.ingest.ingest_documents`` (title and text as one
document, the corpus id as the document id) into embedded Qdrant in a temporary folder,
with the real ONNX embedder, then runs every judged query through
``llmhost.rag.retrieve.retrieve`` three ways: dense only, BM25 only and the product's
default hybrid. Scores are per document (each document's best chunk): nDCG@10 (binary or
graded gains, log2 discount) and recall@100. Prints a table, the indexing time and median
query latency, and last ``ndcg@10=<value> recall@100=<value>`` for the default hybrid.

    python bench/retrieval.py [--corpus C] [--queries Q] [--qrels R] [--model DIR]
    python bench/retrieval.py CORPUS=... QUERIES=... QRELS=...   (make-style, same meaning)

Paths default to ``../shared/data/rag/scifact/`` beside the repository (train judgments).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "rag" / "scifact"
DEFAULTS = {
    "corpus": DATA / "corpus.jsonl.gz",
    "queries": DATA / "queries.jsonl",
    "qrels": DATA / "qrels" / "train.tsv",
    "model": ROOT / "layers" / "embeddings" / "model",
}
COLLECTION = "bench"
INGEST_BATCH = 500
NDCG_AT = 10
RECALL_AT = 100


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    from qdrant_client import QdrantClient

    from llmhost.rag.embeddings.onnx import OnnxEmbedder
    from llmhost.rag.ingest import ingest_documents
    from llmhost.rag.retrieve import retrieve
    from llmhost.rag.store import VectorStore

    corpus = list(_read_jsonl(args.corpus))
    queries = {str(q["_id"]): q["text"] for q in _read_jsonl(args.queries)}
    qrels = _read_qrels(args.qrels)
    missing = sorted(set(qrels) - set(queries))
    if missing:
        raise SystemExit(f"{args.qrels}: {len(missing)} judged queries are not in {args.queries}")
    print(f"corpus {len(corpus)} documents, {len(qrels)} judged queries ({args.qrels.name})")

    embedder = OnnxEmbedder(args.model)
    with tempfile.TemporaryDirectory(prefix="llmhost-bench-") as folder:
        store = VectorStore(QdrantClient(path=folder))
        store.create_collection(COLLECTION, embedder.dimension)
        documents = [{"id": str(doc["_id"]), "text": _document_text(doc)} for doc in corpus]
        started = time.perf_counter()
        chunks = 0
        for offset in range(0, len(documents), INGEST_BATCH):
            report = ingest_documents(
                COLLECTION, documents[offset : offset + INGEST_BATCH], embedder, store
            )
            if report.rejected:
                raise SystemExit(f"ingest rejected documents: {report.rejected[:3]}")
            chunks += sum(item.chunks for item in report.indexed)
            _progress(f"indexed {offset + len(report.indexed)}/{len(documents)}")
        indexing_s = time.perf_counter() - started
        _progress("")
        print(
            f"indexing: {len(documents)} documents, {chunks} chunks in {indexing_s:.1f} s "
            f"({len(documents) / indexing_s:.1f} docs/s)"
        )

        rows: list[tuple[str, float, float, float]] = []
        last: tuple[float, float] = (0.0, 0.0)
        for label, mode in (("dense only", "dense"), ("bm25 only", "sparse"), ("hybrid", "hybrid")):

            def run(query: str, mode: Any = mode) -> tuple[list[str], float]:
                result = retrieve(
                    query,
                    COLLECTION,
                    RECALL_AT,
                    None,
                    embedder,
                    store,
                    mode=mode,
                    per_document=True,
                )
                return [hit.doc_id for hit in result.hits], sum(result.timings_ms.values())

            ndcg, recall, latency = _evaluate(run, queries, qrels)
            rows.append((label, ndcg, recall, latency))
            if mode == "hybrid":
                last = (ndcg, recall)

    print(f"{'retriever':<12} {'ndcg@10':>8} {'recall@100':>11} {'median ms':>10}")
    for label, ndcg, recall, latency in rows:
        print(f"{label:<12} {ndcg:>8.4f} {recall:>11.4f} {latency:>10.1f}")
    print(f"ndcg@10={last[0]:.4f} recall@100={last[1]:.4f}")
    return 0


def _evaluate(
    run: Callable[[str], tuple[list[str], float]],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
) -> tuple[float, float, float]:
    """Mean nDCG@10, mean recall@100 and median latency (ms) over the judged queries."""
    ndcgs: list[float] = []
    recalls: list[float] = []
    latencies: list[float] = []
    for number, (query_id, judged) in enumerate(sorted(qrels.items()), start=1):
        ranked, latency = run(queries[query_id])
        ndcgs.append(ndcg_at(ranked, judged, NDCG_AT))
        recalls.append(recall_at(ranked, judged, RECALL_AT))
        latencies.append(latency)
        if number % 50 == 0:
            _progress(f"queries {number}/{len(qrels)}")
    _progress("")
    return statistics.fmean(ndcgs), statistics.fmean(recalls), statistics.median(latencies)


def ndcg_at(ranked: list[str], judged: dict[str, int], k: int) -> float:
    """nDCG@k with gain = relevance grade and a log2(rank + 1) discount (as trec_eval)."""
    dcg = sum(judged.get(doc_id, 0) / math.log2(rank + 2) for rank, doc_id in enumerate(ranked[:k]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], judged: dict[str, int], k: int) -> float:
    relevant = {doc_id for doc_id, grade in judged.items() if grade > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def _document_text(doc: dict[str, Any]) -> str:
    # The title is the abstract's first paragraph, as a user pasting the paper would send it.
    title = (doc.get("title") or "").strip()
    text = (doc.get("text") or "").strip()
    return f"{title}\n\n{text}" if title else text


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """query id -> {corpus id: grade}; a TSV with a header row (CRLF line ends are fine)."""
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text), delimiter="\t")
    qrels: dict[str, dict[str, int]] = {}
    for number, row in enumerate(reader):
        if not row or (number == 0 and not row[-1].strip().lstrip("-").isdigit()):
            continue  # the header
        query_id, corpus_id, grade = (cell.strip() for cell in row[:3])
        qrels.setdefault(query_id, {})[corpus_id] = int(grade)
    return qrels


def _parse_args(argv: list[str]) -> argparse.Namespace:
    # make passes CORPUS=... QUERIES=... QRELS=... through; turn them into --options.
    rewritten: list[str] = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if equals and name.isupper() and name.lower() in DEFAULTS:
            if value:
                rewritten += [f"--{name.lower()}", value]
        else:
            rewritten.append(arg)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in DEFAULTS.items():
        parser.add_argument(f"--{name}", type=Path, default=default, help=f"default: {default}")
    args = parser.parse_args(rewritten)
    for name in DEFAULTS:
        path: Path = getattr(args, name)
        if not path.exists():
            hint = " (build it with `make embedding-model`)" if name == "model" else ""
            raise SystemExit(f"--{name}: {path} does not exist{hint}")
    return args


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{message:<60}", end="" if message else "\n", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
