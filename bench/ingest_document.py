"""Time to ingest one large document locally: chunk, embed (ONNX on this CPU), store.

The API accepts documents of up to 1 MB; the ingest CLI sizes its request timeouts from this
figure. Embedded Qdrant in a temporary folder, the real all-MiniLM-L6-v2 artifact. Prints
``bytes=<n> chunks=<n> seconds=<x>``.

    python bench/ingest_document.py [--kb 950]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

from qdrant_client import QdrantClient

from llmhost.rag.embeddings.artifact import REPO_MODEL_DIR
from llmhost.rag.embeddings.onnx import OnnxEmbedder
from llmhost.rag.ingest import ingest_documents
from llmhost.rag.store import VectorStore

WORDS = [
    "the",
    "reconciler",
    "never",
    "waits",
    "for",
    "an",
    "endpoint",
    "inside",
    "a",
    "lambda",
    "sagemaker",
    "creates",
    "models",
    "in",
    "ten",
    "to",
    "thirty",
    "minutes",
    "qdrant",
    "stores",
    "dense",
    "and",
    "sparse",
    "vectors",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=int, default=950)
    args = parser.parse_args()
    rng = random.Random(1)
    size = args.kb * 1000
    text = " ".join(rng.choice(WORDS) for _ in range(size // 5))[:size]
    embedder = OnnxEmbedder(REPO_MODEL_DIR)
    embedder.load()
    with tempfile.TemporaryDirectory() as folder:
        store = VectorStore(QdrantClient(path=folder), serialize=True)
        store.create_collection("bench", embedder.dimension)
        started = time.perf_counter()
        report = ingest_documents("bench", [{"id": "big", "text": text}], embedder, store)
        seconds = time.perf_counter() - started
        store.close()
    chunks = report.indexed[0].chunks if report.indexed else 0
    print(f"bytes={len(text.encode())} chunks={chunks} seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
