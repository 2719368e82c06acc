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

Nothing is read at import. The tokenizer loads on first use (~30 ms), the ONNX session on
the first ``embed`` (~0.3 s): build one embedder per process and keep it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from llmhost.errors import LlmhostError

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

# Where the embedding layer puts the artifact in Lambda (layers are unpacked under /opt).
LAMBDA_MODEL_DIR = Path("/opt/llmhost-embedding")
# The exporter's output in a checkout: layers/embeddings/model beside this package's layer.
REPO_MODEL_DIR = Path(__file__).resolve().parents[3] / "embeddings" / "model"
BUILD_HINT = "run `make embedding-model` to build it"

# Texts per ONNX run, and a cap on batch * seq^2 (the attention scores: 12 heads of seq x seq
# floats per text). Measured on one CPU thread, small batches are fastest: 256-token texts
# one at a time ran 10.5/s against 8.4/s in batches of 32 (the activations stay in cache);
# short queries peak around 8 per run (111/s, against 97/s alone and 86/s by 32).
MAX_BATCH = 8
MAX_ATTENTION_CELLS = 256 * 256

# SageMaker InvokeEndpoint takes and returns at most 6 MB; stay clear of both.
MAX_REQUEST_BYTES = 5_000_000
MAX_REPLY_BYTES = 5_000_000
# Bytes per number in a JSON reply (e.g. "-0.0123456789, "), to size token-level replies.
JSON_BYTES_PER_FLOAT = 20
# TEI's default MAX_CLIENT_BATCH_SIZE: it refuses more inputs in one request.
SAGEMAKER_MAX_BATCH = 32


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


# ---------------------------------------------------------------------------------- artifact


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


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("embed() takes a sequence of texts, not one string: embed([text])")
    out = list(texts)
    for index, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
    return out


# -------------------------------------------------------------------------------------- onnx


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
        items = _check_texts(texts)
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


# --------------------------------------------------------------------------------- sagemaker


def pool_reply(reply: Any, count: int, dimension: int) -> tuple[np.ndarray, bool]:
    """Unit vectors from an embedding endpoint's JSON reply, and whether it was pooled.

    Accepts a list with one item per input, each a vector (TEI, sentence-embeddings), a
    [tokens][dim] matrix or a [1][tokens][dim] tensor (feature-extraction: mean-pooled
    here, as sentence-transformers pools), or ``{"embeddings": ...}`` around either.
    Raises ValueError naming what is wrong.
    """
    if isinstance(reply, dict) and "embeddings" in reply:
        reply = reply["embeddings"]
    if not isinstance(reply, list):
        raise ValueError(f"expected a JSON list, got {type(reply).__name__}")
    if len(reply) != count:
        raise ValueError(f"expected {count} embeddings, got {len(reply)}")
    vectors = np.empty((count, dimension), dtype=np.float32)
    pooled = True
    for index, item in enumerate(reply):
        try:
            array = np.asarray(item, dtype=np.float32)
        except (ValueError, TypeError):
            raise ValueError(f"item {index} is not a numeric array") from None
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim == 2 and array.shape[0] > 0:
            array = array.mean(axis=0)
            pooled = False
        if array.ndim != 1 or array.shape[0] != dimension:
            raise ValueError(
                f"item {index} has shape {list(np.shape(item))}; expected [{dimension}] or "
                f"[tokens, {dimension}]"
            )
        vectors[index] = array
    if not np.isfinite(vectors).all():
        raise ValueError("the reply holds NaN or infinite values")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12), pooled


def next_batch_end(
    request_bytes: Sequence[int],
    tokens: Sequence[int],
    start: int,
    *,
    max_texts: int,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_reply_tokens: int | None = None,
) -> int:
    """End (exclusive) of the request that starts at text ``start``: at most ``max_texts``
    texts, request JSON under ``max_request_bytes``, and (when the reply may be per token)
    at most ``max_reply_tokens`` tokens. Always at least one text."""
    end = start
    size = len('{"inputs": []}')
    total_tokens = 0
    while end < len(request_bytes) and end - start < max_texts:
        size += request_bytes[end] + 2
        total_tokens += tokens[end]
        over_reply = max_reply_tokens is not None and total_tokens > max_reply_tokens
        if end > start and (size > max_request_bytes or over_reply):
            break
        end += 1
    return end


class SageMakerEmbedder:
    """Embeddings from a SageMaker endpoint (TEI, or the HF toolkit's feature extraction).

    ``runtime_client`` is a boto3 ``sagemaker-runtime`` client; ``tokenizer_dir`` holds the
    endpoint model's tokenizer.json (for chunking and client-side truncation) and, unless
    ``dimension`` and ``max_tokens`` are given, a manifest.json that states them. Requests
    carry ``{"inputs": [...]}`` with at most ``max_batch`` texts and stay under
    SageMaker's 6 MB limits; replies are mean-pooled if per token, then L2-normalised.
    Errors: EmbeddingUnavailable (503, or EmbeddingTimeout 504), EmbeddingRejected (422),
    EmbeddingMisconfigured (wrong endpoint or settings).
    """

    def __init__(
        self,
        endpoint_name: str,
        runtime_client: Any,
        tokenizer_dir: str | Path,
        inference_component: str | None = None,
        *,
        dimension: int | None = None,
        max_tokens: int | None = None,
        max_batch: int = SAGEMAKER_MAX_BATCH,
    ) -> None:
        tokenizer_dir = Path(tokenizer_dir)
        if dimension is None or max_tokens is None:
            manifest = ModelManifest.read(tokenizer_dir)
            dimension = dimension or manifest.dimension
            max_tokens = max_tokens or manifest.max_seq_len
        if not (tokenizer_dir / "tokenizer.json").is_file():
            raise EmbeddingMisconfigured(
                f"{tokenizer_dir / 'tokenizer.json'} is missing: the SageMaker backend needs "
                "the endpoint model's tokenizer.json there (EMBEDDING_MODEL_DIR)"
            )
        self.endpoint_name = endpoint_name
        self.inference_component = inference_component
        self._client = runtime_client
        self._dimension = dimension
        self._max_tokens = max_tokens
        self.max_batch = max_batch
        self.tokenizer = WordPieceTokenizer(tokenizer_dir / "tokenizer.json", max_tokens)
        # Until a reply shows pooled vectors, assume one vector per token may come back.
        self._pooled_replies = False

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
        """(len(texts), dimension) float32 unit vectors, in input order (see the class)."""
        # Truncated here, so the endpoint never refuses a long text and both backends
        # embed the same words.
        items = [self.tokenizer.truncate(t) for t in _check_texts(texts)]
        out = np.empty((len(items), self._dimension), dtype=np.float32)
        request_bytes = [len(json.dumps(t, ensure_ascii=False).encode()) for t in items]
        tokens = [self.tokenizer.count(t) + 2 for t in items]
        start = 0
        while start < len(items):
            reply_tokens = None
            if not self._pooled_replies:
                reply_tokens = MAX_REPLY_BYTES // (self._dimension * JSON_BYTES_PER_FLOAT)
            end = next_batch_end(
                request_bytes,
                tokens,
                start,
                max_texts=self.max_batch,
                max_reply_tokens=reply_tokens,
            )
            out[start:end] = self._invoke(items[start:end])
            start = end
        return out

    def _invoke(self, texts: list[str]) -> np.ndarray:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            ReadTimeoutError,
        )
        from botocore.exceptions import ConnectionError as BotocoreConnectionError

        request: dict[str, Any] = {
            "EndpointName": self.endpoint_name,
            "Body": json.dumps({"inputs": texts}, ensure_ascii=False).encode(),
            "ContentType": "application/json",
            "Accept": "application/json",
        }
        if self.inference_component:
            request["InferenceComponentName"] = self.inference_component
        try:
            body = self._client.invoke_endpoint(**request)["Body"].read()
        except ClientError as error:
            raise self._map_error(error.response) from None
        except (ReadTimeoutError, ConnectTimeoutError) as error:
            raise EmbeddingTimeout(
                f"the embedding endpoint '{self.endpoint_name}' did not answer in time "
                f"({error.__class__.__name__}); retry, or send fewer texts per request",
                retry_after=1,
            ) from None
        except (BotocoreConnectionError, BotoCoreError) as error:
            # Connection failures, and a reply that broke off while being read.
            raise EmbeddingUnavailable(
                f"cannot reach SageMaker for the embedding endpoint '{self.endpoint_name}' "
                f"({error.__class__.__name__}); retry"
            ) from None
        try:
            vectors, pooled = pool_reply(json.loads(body), len(texts), self._dimension)
        except ValueError as error:
            raise EmbeddingMisconfigured(
                f"the endpoint '{self.endpoint_name}' did not reply with {self._dimension}-"
                f"dimensional embeddings ({error}); check EMBEDDING_ENDPOINT_NAME and that "
                "it serves the model whose tokenizer is in EMBEDDING_MODEL_DIR"
            ) from None
        self._pooled_replies = pooled
        return vectors

    def _map_error(self, response: Mapping[str, Any]) -> EmbeddingError:
        return map_invoke_error(response, self.endpoint_name, self.inference_component)


def map_invoke_error(
    response: Mapping[str, Any], endpoint: str, component: str | None = None
) -> EmbeddingError:
    """The typed error for a failed InvokeEndpoint (``ClientError.response``)."""
    error = response.get("Error", {})
    code = str(error.get("Code", ""))
    message = str(error.get("Message", ""))
    target = f"'{endpoint}'" + (f" (inference component '{component}')" if component else "")
    if code == "ModelError":
        status = int(response.get("OriginalStatusCode") or error.get("OriginalStatusCode") or 0)
        original = str(response.get("OriginalMessage") or error.get("OriginalMessage") or message)
        if 400 <= status < 500 and status not in (408, 429):
            return EmbeddingRejected(
                f"the embedding endpoint {target} refused the input ({status}: {original})"
            )
        return EmbeddingUnavailable(
            f"the embedding model behind {target} failed ({status or 'no status'}: "
            f"{original}); retry, and check its CloudWatch logs if it persists",
            retry_after=2,
        )
    lowered = message.lower()
    if code == "ValidationError" and "capacity" in lowered:
        return EmbeddingUnavailable(
            f"the embedding endpoint {target} has no capacity now (scaled to zero or "
            "scaling out); retry in a minute",
            retry_after=60,
        )
    if code == "ValidationError" and "not found" in lowered:
        return EmbeddingUnavailable(
            f"the embedding endpoint {target} does not exist ({message}); check "
            "EMBEDDING_ENDPOINT_NAME, or deploy the endpoint",
            retry_after=60,
        )
    if code in {"ModelNotReadyException", "ServiceUnavailable"}:
        return EmbeddingUnavailable(
            f"the embedding endpoint {target} is not ready ({code}); retry shortly",
            retry_after=30,
        )
    if code in {"ThrottlingException", "ThrottledException", "TooManyRequestsException"}:
        return EmbeddingThrottled(
            f"SageMaker is throttling calls to the embedding endpoint {target} ({code}); retry "
            "after 2 s",
            retry_after=2,
        )
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in {"InternalFailure", "InternalDependencyException"} or (
        isinstance(status, int) and status >= 500
    ):
        return EmbeddingUnavailable(
            f"SageMaker could not serve the embedding endpoint {target} now ({code}); retry",
            retry_after=2,
        )
    return EmbeddingMisconfigured(
        f"SageMaker refused the call to the embedding endpoint {target} ({code}: {message}); "
        "check EMBEDDING_ENDPOINT_NAME, EMBEDDING_INFERENCE_COMPONENT and the function's "
        "sagemaker:InvokeEndpoint permission"
    )


# ---------------------------------------------------------------------------------- settings


class EmbeddingSettings(BaseModel):
    """The embedding part of a function's environment (upper-case variable names)."""

    embedding_backend: Literal["onnx", "sagemaker"] = "onnx"
    embedding_model_dir: Path | None = None
    embedding_endpoint_name: str | None = Field(default=None, min_length=1, max_length=63)
    embedding_inference_component: str | None = Field(default=None, min_length=1)
    embedding_threads: int | None = Field(default=None, ge=1, le=64)
    embedding_dimension: int | None = Field(default=None, ge=1)
    embedding_max_tokens: int | None = Field(default=None, ge=8)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EmbeddingSettings:
        """Read and validate; raises EmbeddingMisconfigured naming the bad variables."""
        env = os.environ if environ is None else environ
        values = {
            name: env[name.upper()]
            for name in cls.model_fields
            if env.get(name.upper(), "").strip()
        }
        try:
            settings = cls.model_validate(values)
        except ValidationError as error:
            bad = "; ".join(
                f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors()
            )
            raise EmbeddingMisconfigured(f"the embedding settings are invalid: {bad}") from None
        if settings.embedding_backend == "sagemaker" and not settings.embedding_endpoint_name:
            raise EmbeddingMisconfigured(
                "EMBEDDING_BACKEND=sagemaker needs EMBEDDING_ENDPOINT_NAME (the endpoint that "
                "serves the embedding model)"
            )
        return settings

    def model_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """EMBEDDING_MODEL_DIR, else the layer's folder in Lambda, else the checkout's."""
        if self.embedding_model_dir is not None:
            return self.embedding_model_dir
        env = os.environ if environ is None else environ
        if LAMBDA_MODEL_DIR.is_dir() or env.get("AWS_LAMBDA_FUNCTION_NAME"):
            return LAMBDA_MODEL_DIR
        return REPO_MODEL_DIR


def embedder_from_env(
    environ: Mapping[str, str] | None = None, runtime_client: Any = None
) -> Embedder:
    """The embedder the environment selects (call once per process and keep it).

    ``runtime_client`` defaults to llmhost.aws's ``sagemaker-runtime`` client and is only
    used by the SageMaker backend. Raises EmbeddingMisconfigured with the fix.
    """
    settings = EmbeddingSettings.from_env(environ)
    model_dir = settings.model_dir(environ)
    if settings.embedding_backend == "onnx":
        return OnnxEmbedder(model_dir, threads=settings.embedding_threads)
    if runtime_client is None:
        from llmhost import aws

        runtime_client = aws.client("sagemaker-runtime")
    assert settings.embedding_endpoint_name is not None  # checked by from_env
    return SageMakerEmbedder(
        settings.embedding_endpoint_name,
        runtime_client,
        model_dir,
        settings.embedding_inference_component,
        dimension=settings.embedding_dimension,
        max_tokens=settings.embedding_max_tokens,
    )
