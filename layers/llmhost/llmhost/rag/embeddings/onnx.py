"""The ONNX backend: the exported model run by ONNX Runtime on the function's CPU.

The session loads on the first ``embed`` (~0.3 s) or on ``load()``; texts are batched by
length to waste little on padding.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llmhost.rag.embeddings import EmbeddingMisconfigured, check_texts
from llmhost.rag.embeddings.artifact import BUILD_HINT, ModelManifest, WordPieceTokenizer

if TYPE_CHECKING:
    import onnxruntime

# Texts per ONNX run, and a cap on batch * seq^2 (the attention scores: 12 heads of seq x seq
# floats per text). Measured on one CPU thread, small batches are fastest: 256-token texts
# one at a time ran 10.5/s against 8.4/s in batches of 32 (the activations stay in cache);
# short queries peak around 8 per run (111/s, against 97/s alone and 86/s by 32).
MAX_BATCH = 8
MAX_ATTENTION_CELLS = 256 * 256


def plan_batches(
    lengths: Sequence[int],
    max_batch: int = MAX_BATCH,
    max_attention_cells: int = MAX_ATTENTION_CELLS,
) -> list[list[int]]:
    """Group text indices into batches of similar length (shortest first) to waste little
    on padding: at most ``max_batch`` texts and ``batch * longest**2 <= max_attention_cells``
    (a text too long for that alone still gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # ascending order: the newcomer is the longest
        if current and (
            len(current) >= max_batch or (len(current) + 1) * longest**2 > max_attention_cells
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def _pad(encodings: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(ids) for ids in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)  # 0 is [PAD]
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    for row, tokens in enumerate(encodings):
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
    return ids, mask


def default_threads(environ: Mapping[str, str] | None = None) -> int:
    """ONNX Runtime threads worth using here: the CPUs this process may run on, and in
    Lambda the vCPUs its memory buys (one per 1,769 MB, at most 6). Lambda shows more CPUs
    than that to small functions; threads beyond the quota only contend."""
    env = os.environ if environ is None else environ
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    memory_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    if memory_mb.isdigit():
        available = min(available, max(1, round(int(memory_mb) / 1769)))
    return max(1, min(available, 8))


class OnnxEmbedder:
    """all-MiniLM-L6-v2 (or another exported mean-pooled BERT) on CPU with ONNX Runtime.

    ``model_dir`` holds model.onnx, tokenizer.json and manifest.json as written by
    ``make embedding-model``; the constructor reads only the manifest and raises
    EmbeddingMisconfigured if the folder is not such an artifact. ``threads`` is ONNX
    Runtime's intra-op thread count (default: ``default_threads()``). Thread-safe.
    """

    def __init__(self, model_dir: str | Path, threads: int | None = None) -> None:
        self.model_dir = Path(model_dir)
        manifest = ModelManifest.read(self.model_dir)
        for name in ("model.onnx", "tokenizer.json"):
            if not (self.model_dir / name).is_file():
                raise EmbeddingMisconfigured(f"{self.model_dir / name} is missing: {BUILD_HINT}")
        self.manifest = manifest
        self._dimension = manifest.dimension
        self._max_tokens = manifest.max_seq_len
        self.threads = threads or default_threads()
        self.tokenizer = WordPieceTokenizer(self.model_dir / "tokenizer.json", manifest.max_seq_len)
        self._lock = threading.Lock()
        self._session: onnxruntime.InferenceSession | None = None

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.tokenizer.spans(text)

    def count_tokens(self, text: str) -> int:
        return self.tokenizer.count(text)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32 unit vectors, in input order.

        Texts past ``max_tokens`` are truncated; an empty text still gets a vector (that of
        [CLS][SEP]). A text's vector does not depend on the other texts of the call.
        Raises TypeError for non-strings, EmbeddingMisconfigured if the model cannot load.
        """
        items = check_texts(texts)
        out = np.empty((len(items), self._dimension), dtype=np.float32)
        if not items:
            return out
        encodings = self.tokenizer.encode_for_model(items)
        session = self._load()
        # int8 models quantise activations with one scale per run: batching texts together
        # would make each vector depend on its neighbours (by up to 0.03 per component).
        max_batch = 1 if self.manifest.precision == "int8" else MAX_BATCH
        for batch in plan_batches([len(ids) for ids in encodings], max_batch=max_batch):
            ids, mask = _pad([encodings[i] for i in batch])
            (vectors,) = session.run(
                ["sentence_embedding"], {"input_ids": ids, "attention_mask": mask}
            )
            out[batch] = vectors
        return out

    def load(self) -> None:
        """Load the tokenizer and the ONNX session now (e.g. during a Lambda init phase)."""
        self.tokenizer.count("")
        self._load()

    def _load(self) -> onnxruntime.InferenceSession:
        with self._lock:
            if self._session is None:
                self._session = self._open_session()
            return self._session

    def _open_session(self) -> onnxruntime.InferenceSession:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle worker threads would spin between calls, stealing the vCPU from the handler.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        path = self.model_dir / "model.onnx"
        try:
            return onnxruntime.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise EmbeddingMisconfigured(
                f"cannot load {path} ({error.__class__.__name__}: {error}); {BUILD_HINT}"
            ) from None
