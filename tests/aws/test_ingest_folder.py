"""Ingesting a folder (``llmhost ingest``'s rules, through ``python -m
llmhost_local.ingest_folder``'s lines) against the serving function (its API Gateway events,
embedded Qdrant)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qdrant_client import QdrantClient

from llmhost import runtime
from llmhost.rag.store import VectorStore
from llmhost_cli import ingest as rules
from llmhost_cli.client import Reply
from llmhost_local import ingest_folder
from llmhost_local.cloud import load_handler
from llmhost_local.events import LambdaContext, api_gateway_event


@pytest.fixture
def api(
    tmp_path: Path, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[dict[str, Any]]]:
    """Every request the CLI sends, answered by the serving function's handler."""
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    runtime.override(store=VectorStore(client), embedder=embedder)
    serve = load_handler("serve", "llmhost-serve")
    sent: list[dict[str, Any]] = []

    def post(client: Any, collection: str, batch: rules.Batch, timeout_s: float) -> Reply:
        path = f"/v1/collections/{collection}/documents"
        raw = json.dumps({"documents": batch.documents}).encode()
        sent.append({"path": path, "documents": batch.documents, "timeout_s": timeout_s})
        event = api_gateway_event("POST", path, {"Content-Type": "application/json"}, raw, "me")
        response = serve.handler(event, LambdaContext("llmhost-serve"))
        headers = {k: v[0] for k, v in (response.get("multiValueHeaders") or {}).items()}
        return Reply(response["statusCode"], json.loads(response["body"]), headers)

    monkeypatch.setattr(rules, "post_batch", post)
    yield sent
    client.close()


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_ids_are_paths_relative_to_the_folder(api: list[dict[str, Any]], tmp_path: Path) -> None:
    # Given a folder with a nested file, given by an absolute path
    docs = write(
        tmp_path / "docs", {"guides/sleep.md": "Sleep deletes the endpoint.", "a.txt": "A."}
    )
    # When it is ingested
    assert ingest_folder.main([str(docs.resolve()), "--collection", "kb"]) == 0
    # Then each document is named by its path under the folder, not by where the folder is
    ids = [d["id"] for request in api for d in request["documents"]]
    assert ids == ["a.txt", "guides/sleep.md"]
    assert runtime.store().document_chunks("kb", "guides/sleep.md") == 1
    assert [d["metadata"]["source"] for d in api[0]["documents"]] == ["a.txt", "guides/sleep.md"]


def test_rejected_documents_are_named_by_file_and_line(
    api: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a .jsonl file whose third line is a document with empty text, and a good file
    lines = [
        json.dumps({"id": "p1", "text": "Tides follow the moon."}),
        json.dumps({"id": "p2", "text": "Waves carry energy."}),
        json.dumps({"id": "p3", "text": "  "}),
    ]
    docs = write(tmp_path / "docs", {"notes/ocean.jsonl": "\n".join(lines), "z.md": "Zebras."})
    # When it is ingested
    assert ingest_folder.main([str(docs), "--collection", "kb"]) == 1
    out, err = capsys.readouterr()
    # Then the rejection names the file and line, not the batch position
    assert "rejected notes/ocean.jsonl line 3 (text): is empty" in err
    assert "documents[" not in err
    # And a progress line per batch says files, documents, chunks and elapsed time
    assert "batch 1/1: 2 files, 3/4 documents, 3 chunks in " in out
    assert "elapsed" in out and "indexed 3 documents (3 chunks) into 'kb'" in out


def test_batches_are_cut_by_bytes_and_big_ones_get_time(
    api: list[dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(rules, "MAX_BATCH_BYTES", 300)
    # Given small files, and one ten times larger than a batch may carry
    files = {f"s{i}.txt": f"Short note {i} on rivers and their deltas. " * 2 for i in range(6)}
    files["big.txt"] = "Rivers carve valleys. " * 150  # ~3 KB
    docs = write(tmp_path / "docs", files)
    assert ingest_folder.main([str(docs), "--collection", "kb"]) == 0
    # Then no batch carries more than the byte budget, except a document that is alone
    for request in api:
        size = sum(len(d["text"].encode()) for d in request["documents"])
        assert size <= 300 or len(request["documents"]) == 1
    assert len(api) > 2
    # And each request's timeout grows with the text it carries
    big = next(r for r in api if r["documents"][0]["id"] == "big.txt")
    small = next(r for r in api if r["documents"][0]["id"] != "big.txt")
    assert big["timeout_s"] > small["timeout_s"] >= rules.BASE_TIMEOUT_S
    # And before the big one is sent (it may take minutes), a line says it is on its way
    out = capsys.readouterr().out
    sending = "sending big.txt (3 KB) alone; embedding it takes a while (waiting up to "
    assert sending in out
    assert out.index(sending) < out.index("1/1 documents")


def test_the_largest_document_the_api_accepts_gets_more_than_two_minutes() -> None:
    # 950 KB took 126 s to embed and store on a laptop CPU, and 530 s on two busy cores
    batch = rules.Batch()
    batch.add({"id": "big", "text": "x"}, "big.txt", "big.txt", 950_000)
    assert batch.timeout_s >= 1.5 * 530


def test_a_run_where_every_document_is_rejected_creates_no_collection(
    api: list[dict[str, Any]], tmp_path: Path
) -> None:
    docs = write(tmp_path / "docs", {"bad.jsonl": '{"id": "x"}\n{"text": "no id"}\n'})
    assert ingest_folder.main([str(docs), "--collection", "empty"]) == 1
    assert not runtime.store().exists("empty")
