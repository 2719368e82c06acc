"""The SageMaker backend: an embedding endpoint (Hugging Face TEI, or the HF inference
toolkit's feature-extraction task), optionally an inference component on a shared endpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llmhost.rag.embeddings import (
    EmbeddingError,
    EmbeddingMisconfigured,
    EmbeddingRejected,
    EmbeddingThrottled,
    EmbeddingTimeout,
    EmbeddingUnavailable,
    check_texts,
)
from llmhost.rag.embeddings.artifact import ModelManifest, WordPieceTokenizer

# SageMaker InvokeEndpoint takes and returns at most 6 MB; stay clear of both.
MAX_REQUEST_BYTES = 5_000_000
MAX_REPLY_BYTES = 5_000_000
# Bytes per number in a JSON reply (e.g. "-0.0123456789, "), to size token-level replies.
JSON_BYTES_PER_FLOAT = 20
# TEI's default MAX_CLIENT_BATCH_SIZE: it refuses more inputs in one request.
SAGEMAKER_MAX_BATCH = 32


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
        items = [self.tokenizer.truncate(t) for t in check_texts(texts)]
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
