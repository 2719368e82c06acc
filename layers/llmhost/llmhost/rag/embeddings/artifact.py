"""The exported embedding model on disk: where it is, its manifest and its WordPiece tokenizer.

Both backends tokenize with the model's own tokenizer.json (the SageMaker one for chunking
and client-side truncation); the ONNX backend also runs model.onnx from the same folder.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmhost.rag.embeddings import EmbeddingMisconfigured

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# Where the embedding layer puts the artifact in Lambda (layers are unpacked under /opt).
LAMBDA_MODEL_DIR = Path("/opt/llmhost-embedding")
# The exporter's output in a checkout: layers/embeddings/model beside this package's layer.
REPO_MODEL_DIR = Path(__file__).resolve().parents[4] / "embeddings" / "model"
BUILD_HINT = "run `make embedding-model` to build it"


@dataclass(frozen=True)
class ModelManifest:
    """manifest.json of an exported model (see layers/tools/export_embedding_model.py)."""

    dimension: int
    max_seq_len: int
    precision: str
    source: str

    @classmethod
    def read(cls, model_dir: Path) -> ModelManifest:
        """Raises EmbeddingMisconfigured when the folder is not a usable artifact."""
        path = model_dir / "manifest.json"
        if not model_dir.is_dir():
            raise EmbeddingMisconfigured(
                f"the embedding model folder {model_dir} does not exist: {BUILD_HINT}, or set "
                "EMBEDDING_MODEL_DIR (in Lambda, attach the embedding layer)"
            )
        try:
            data = json.loads(path.read_text())
            manifest = cls(
                dimension=int(data["dim"]),
                max_seq_len=int(data["max_seq_len"]),
                precision=str(data.get("precision", "fp32")),
                source=str(data.get("source", "unknown")),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise EmbeddingMisconfigured(
                f"{path} is missing or unreadable ({error.__class__.__name__}: {error}): "
                f"{BUILD_HINT}"
            ) from None
        if data.get("pooling", "mean") != "mean" or data.get("normalize", True) is not True:
            raise EmbeddingMisconfigured(
                f"{path}: expected pooling 'mean' with normalize true; {BUILD_HINT}"
            )
        return manifest


class WordPieceTokenizer:
    """The model's tokenizer (tokenizer.json), loaded on first use.

    Two instances of the same tokenizer: one truncating at ``max_seq_len`` with special
    tokens, for the model; one with no limit and no special tokens, for offsets and counts
    of whole documents.
    """

    def __init__(self, path: Path, max_seq_len: int) -> None:
        self.path = path
        self.max_seq_len = max_seq_len
        self._lock = threading.Lock()
        self._loaded: tuple[Tokenizer, Tokenizer] | None = None

    def _load(self) -> tuple[Tokenizer, Tokenizer]:
        with self._lock:
            if self._loaded is None:
                from tokenizers import Tokenizer

                try:
                    for_model = Tokenizer.from_file(str(self.path))
                    whole = Tokenizer.from_file(str(self.path))
                except Exception as error:  # tokenizers raises a bare Exception
                    raise EmbeddingMisconfigured(
                        f"cannot load the tokenizer {self.path} ({error}): {BUILD_HINT}"
                    ) from None
                for_model.enable_truncation(max_length=self.max_seq_len)
                for_model.no_padding()  # batches are padded after sorting by length
                whole.no_truncation()
                whole.no_padding()
                self._loaded = (for_model, whole)
            return self._loaded

    def encode_for_model(self, texts: list[str]) -> list[list[int]]:
        """Token ids with [CLS]/[SEP], truncated to ``max_seq_len``, one list per text."""
        for_model, _ = self._load()
        return [e.ids for e in for_model.encode_batch(texts)]

    def spans(self, text: str) -> list[tuple[int, int]]:
        _, whole = self._load()
        return [(int(s), int(e)) for s, e in whole.encode(text, add_special_tokens=False).offsets]

    def count(self, text: str) -> int:
        _, whole = self._load()
        return len(whole.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str) -> str:
        """``text`` cut after the last wordpiece the model reads (unchanged if it fits)."""
        spans = self.spans(text)
        keep = self.max_seq_len - 2
        return text if len(spans) <= keep else text[: spans[keep - 1][1]]
