"""Sentence embeddings for retrieval: all-MiniLM-L6-v2 on the function's CPU, or SageMaker.

Two backends behind one ``Embedder`` protocol, chosen by ``EMBEDDING_BACKEND``:

- ``onnx`` (default): the model that ``make embedding-model`` exports
  (layers/tools/export_embedding_model.py), run by ONNX Runtime on the function's CPU. The
  embedding layer mounts it at ``/opt/llmhost-embedding``.
- ``sagemaker``: an embedding endpoint (Hugging Face TEI, or the HF inference toolkit's
  feature-extraction task), optionally an inference component on a shared endpoint.

Both return float32 unit vectors (cosine similarity is a dot product) and tokenize with the
model's WordPiece tokenizer, which also gives the chunker its token boundaries.

Token units: ``count_tokens`` and ``token_spans`` count content wordpieces, without the
[CLS]/[SEP] pair the model adds; ``max_tokens`` is what the model reads *including* that
pair (256 for all-MiniLM-L6-v2). A text of up to ``max_tokens - 2`` wordpieces is embedded
whole; a longer one is embedded from its first ``max_tokens - 2`` wordpieces.

This package holds the protocol and its errors; ``artifact`` the exported model on disk and
its tokenizer, ``onnx`` and ``sagemaker`` the backends, ``settings`` the environment that
picks one (``embedder_from_env``).

Nothing is read at import. The tokenizer loads on first use (~30 ms), the ONNX session on
the first ``embed`` (~0.3 s): build one embedder per process and keep it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from llmhost.errors import LlmhostError

if TYPE_CHECKING:
    import numpy as np


# ------------------------------------------------------------------------------------ errors


class EmbeddingError(LlmhostError):
    """Embeddings could not be computed."""

    code = "embedding_error"
    status = 500


class EmbeddingMisconfigured(EmbeddingError):
    """The deployment is wrong (model files missing, bad settings, an endpoint that answers
    with something other than embeddings): retrying will not help, fixing the config will."""

    code = "embedding_misconfigured"
    status = 500


class EmbeddingUnavailable(EmbeddingError):
    """The embedding endpoint cannot answer now; ``retry_after`` seconds is a fair wait."""

    code = "embedding_unavailable"
    status = 503

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EmbeddingTimeout(EmbeddingUnavailable):
    code = "embedding_timeout"
    status = 504


class EmbeddingThrottled(EmbeddingUnavailable):
    """SageMaker throttled the call to the embedding endpoint."""

    code = "embedding_throttled"
    status = 429


class EmbeddingRejected(EmbeddingError):
    """The embedding endpoint refused the input itself (its 4xx)."""

    code = "embedding_rejected"
    status = 422


# ---------------------------------------------------------------------------------- protocol


@runtime_checkable
class Embedder(Protocol):
    """What ingestion and retrieval need from an embedding model."""

    @property
    def dimension(self) -> int:
        """Length of each vector."""
        ...

    @property
    def max_tokens(self) -> int:
        """Wordpieces the model reads, [CLS] and [SEP] included."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dimension) float32 unit vectors, in the order given."""
        ...

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character offsets of each wordpiece of ``text``, no special tokens."""
        ...

    def count_tokens(self, text: str) -> int:
        """Wordpieces in ``text``, special tokens excluded (== len(token_spans(text)))."""
        ...


def check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list, or TypeError: the argument check of ``Embedder.embed``."""
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not one string: embed([text])")
    out = list(texts)
    for index, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
    return out
