"""Embeddings: the exported all-MiniLM-L6-v2 run by ONNX Runtime, and the SageMaker backend.

These tests use the real model that ``make embedding-model`` exports to layers/embeddings/
model (with the source weights kept under reference/). A missing artifact fails them: it
means the build step did not run, not that there is nothing to test.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

import llmhost
from llmhost.rag.embeddings import (
    Embedder,
    EmbeddingMisconfigured,
    EmbeddingRejected,
    EmbeddingUnavailable,
)
from llmhost.rag.embeddings.artifact import REPO_MODEL_DIR
from llmhost.rag.embeddings.onnx import OnnxEmbedder, plan_batches
from llmhost.rag.embeddings.sagemaker import SageMakerEmbedder, next_batch_end, pool_reply
from llmhost.rag.embeddings.settings import embedder_from_env

MODEL_DIR = REPO_MODEL_DIR
ENDPOINT = "llmhost-embeddings"

# Long enough to pass 256 wordpieces several times over.
LONG_TEXT = " ".join(
    f"Sentence {i} says that serverless inference scales to zero when idle." for i in range(60)
)


def _require_artifact() -> None:
    if not (MODEL_DIR / "manifest.json").is_file():
        pytest.fail(
            f"{MODEL_DIR} holds no exported embedding model: run `make embedding-model` first",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    _require_artifact()
    return OnnxEmbedder(MODEL_DIR)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    _require_artifact()
    return json.loads((MODEL_DIR / "manifest.json").read_text())


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --------------------------------------------------------------------------- the ONNX model


def test_vectors_are_float32_unit_length_of_the_model_dimension(embedder: OnnxEmbedder) -> None:
    # Given texts of very different lengths, including an empty one
    texts = ["A man is eating food.", "", LONG_TEXT, "Q"]
    # When they are embedded
    vectors = embedder.embed(texts)
    # Then there is one 384-dimensional float32 unit vector per text
    assert isinstance(embedder, Embedder)
    assert embedder.dimension == 384
    assert vectors.shape == (4, 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)


def test_paraphrases_are_closer_than_unrelated_sentences(embedder: OnnxEmbedder) -> None:
    # Given sentence pairs that mean the same and sentences about something else
    food, bread, baby = embedder.embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        ]
    )
    query, answer, other = embedder.embed(
        [
            "How do I reset my password?",
            "To change a forgotten password, open the account page and choose 'reset'.",
            "The volcano erupted in 1883, darkening skies across the world.",
        ]
    )
    # Then each paraphrase scores far above the unrelated sentence
    assert cos(food, bread) > cos(food, baby) + 0.5
    assert cos(query, answer) > cos(query, other) + 0.3


def test_a_text_gets_the_same_vector_whatever_its_batch(embedder: OnnxEmbedder) -> None:
    # Given texts embedded one by one
    texts = ["A short one.", "A somewhat longer sentence about retrieval.", LONG_TEXT, "x"]
    alone = np.stack([embedder.embed([t])[0] for t in texts])
    # When the same texts are embedded together, in another order, among others
    # (so they are padded to other lengths and batched differently)
    together = embedder.embed([texts[2], "filler " * 40, texts[0], texts[3], texts[1]])
    # Then every text keeps its vector
    np.testing.assert_allclose(together[[2, 4, 0, 3]], alone, atol=1e-5)


def test_texts_longer_than_the_model_reads_are_truncated(embedder: OnnxEmbedder) -> None:
    # Given a text far past max_tokens, and the same text with another ending
    assert embedder.max_tokens == 256
    assert embedder.count_tokens(LONG_TEXT) > 3 * embedder.max_tokens
    changed_tail = LONG_TEXT + " But volcanoes, pianos and tax law are another matter."
    # When both are embedded
    original, changed = embedder.embed([LONG_TEXT, changed_tail])
    # Then the words past the limit change nothing, while words inside it do
    np.testing.assert_allclose(original, changed, atol=1e-6)
    spans = embedder.token_spans(LONG_TEXT)
    inside = LONG_TEXT[: spans[100][1]]
    assert cos(embedder.embed([inside])[0], original) < 0.999
    # And a text cut exactly at max_tokens - 2 wordpieces embeds like the whole text
    cut = LONG_TEXT[: spans[embedder.max_tokens - 3][1]]
    np.testing.assert_allclose(embedder.embed([cut])[0], original, atol=1e-5)


def test_token_spans_map_back_to_the_wordpieces(embedder: OnnxEmbedder) -> None:
    from tokenizers import Tokenizer

    # Given text with punctuation, digits, subwords and odd whitespace
    text = "Tokenization isn't trivial:\n  GPUs (ml.g5.xlarge) cost $1.41/hour,\tOK?  Unbelievable!"
    # When it is split into spans
    spans = embedder.token_spans(text)
    tokens = (
        Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
        .encode(text, add_special_tokens=False)
        .tokens
    )
    # Then each span covers exactly its wordpiece, in order, with no special tokens
    assert len(spans) == len(tokens) == embedder.count_tokens(text)
    assert "[CLS]" not in tokens and "[SEP]" not in tokens
    assert any(t.startswith("##") for t in tokens)  # the test covers subwords
    for (start, end), token in zip(spans, tokens, strict=True):
        assert text[start:end].lower() == token.removeprefix("##")
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    assert embedder.token_spans("") == [] and embedder.count_tokens("   ") == 0


def test_embed_refuses_a_bare_string(embedder: OnnxEmbedder) -> None:
    # A str is a Sequence[str] of characters: embedding each letter would be a silent bug.
    with pytest.raises(TypeError, match="not one string"):
        embedder.embed("A man is eating food.")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        embedder.embed(["fine", None])  # type: ignore[list-item]


# ------------------------------------------------------ the graph vs an independent forward


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    kinds = {"F32": np.float32, "I64": np.int64}
    return {
        name: np.frombuffer(
            raw[8 + size + meta["data_offsets"][0] : 8 + size + meta["data_offsets"][1]],
            dtype=kinds[meta["dtype"]],
        ).reshape(meta["shape"])
        for name, meta in header.items()
        if name != "__metadata__"
    }


def _numpy_minilm(
    w: dict[str, np.ndarray], config: dict[str, Any], ids: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """BertModel + mean pooling + L2 norm (sentence-transformers), straight from the paper."""
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    d = hidden // heads
    b, s = ids.shape

    def norm(x: np.ndarray, p: str) -> np.ndarray:
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        scaled = (x - mu) / np.sqrt(var + config["layer_norm_eps"])
        return scaled * w[p + ".weight"] + w[p + ".bias"]

    def dense(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    def erf(x: np.ndarray) -> np.ndarray:
        return np.vectorize(math.erf)(x)

    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:s]
    x = norm(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (
            dense(x, p + "attention.self." + n).reshape(b, s, heads, d).transpose(0, 2, 1, 3)
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        scores = np.where(mask[:, None, None, :] == 1, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, hidden)
        x = norm(dense(context, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = norm(dense(h, p + "output.dense") + x, p + "output.LayerNorm")
    pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def test_the_onnx_graph_computes_minilm_from_the_source_weights(
    embedder: OnnxEmbedder, manifest: dict[str, Any]
) -> None:
    # Given a padded batch, and the source weights rounded as the artifact stores them
    texts = ["A man is eating food.", "Photosynthesis happens in chloroplasts, mostly.", "Q"]
    ids = [embedder.tokenizer.encode_for_model([t])[0] for t in texts]
    width = max(map(len, ids))
    id_matrix = np.array([row + [0] * (width - len(row)) for row in ids])
    mask = np.array([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    weights = _read_safetensors(MODEL_DIR / manifest["reference"]["weights"])
    config = json.loads((MODEL_DIR / manifest["reference"]["config"]).read_text())
    # (only the vocabulary rows the batch uses: the whole table in float64 is 94 MB)
    vocabulary, id_matrix = np.unique(id_matrix, return_inverse=True)
    id_matrix = id_matrix.reshape(mask.shape)
    table = "embeddings.word_embeddings.weight"
    weights[table] = weights[table][vocabulary]
    if manifest["precision"] == "fp16":
        # fp16 stores the 2-D tables with the token-type row (always 0) folded into positions.
        weights = dict(weights)
        types = weights.pop("embeddings.token_type_embeddings.weight")
        weights["embeddings.position_embeddings.weight"] = (
            weights["embeddings.position_embeddings.weight"] + types[0]
        )
        weights["embeddings.token_type_embeddings.weight"] = np.zeros_like(types)
        weights = {
            k: v.astype(np.float16).astype(np.float32) if v.ndim == 2 else v
            for k, v in weights.items()
        }
    weights = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype != np.int64}
    # When the numpy forward pass and the exported model embed the same texts
    want = _numpy_minilm(weights, config, id_matrix, mask)
    got = embedder.embed(texts)
    # Then they agree to float32 precision (int8 weights only approximately)
    if manifest["precision"] == "int8":
        assert (got * want).sum(1).min() > 0.98
    else:
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_batches_group_similar_lengths_within_the_memory_cap() -> None:
    # Given texts of mixed token lengths
    lengths = [256, 5, 256, 12, 7, 256, 9, 100]
    # When batches are planned with at most 3 texts and 2 x 256^2 attention cells
    batches = plan_batches(lengths, max_batch=3, max_attention_cells=2 * 256 * 256)
    # Then every text is in exactly one batch, shortest first, within both caps
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert [[lengths[i] for i in b] for b in batches] == [[5, 7, 9], [12, 100], [256, 256], [256]]


# ------------------------------------------------------------------------ SageMaker backend


def _reply(payload: Any) -> dict[str, Any]:
    data = json.dumps(payload).encode()
    return {"Body": StreamingBody(io.BytesIO(data), len(data)), "ContentType": "application/json"}


def _request(texts: list[str], component: str | None = None) -> dict[str, Any]:
    request = {
        "EndpointName": ENDPOINT,
        "Body": json.dumps({"inputs": texts}, ensure_ascii=False).encode(),
        "ContentType": "application/json",
        "Accept": "application/json",
    }
    if component:
        request["InferenceComponentName"] = component
    return request


@pytest.fixture
def runtime() -> Any:
    return boto3.client("sagemaker-runtime", region_name="us-east-1")


def test_sagemaker_pooled_replies_are_normalised(runtime: Any) -> None:
    # Given an endpoint (an inference component) that replies with one vector per text
    embedder = SageMakerEmbedder(ENDPOINT, runtime, MODEL_DIR, "minilm-ic")
    texts = ["first text", "second text"]
    raw = np.arange(2 * 384, dtype=np.float32).reshape(2, 384) - 300.0
    with Stubber(runtime) as stub:
        stub.add_response("invoke_endpoint", _reply(raw.tolist()), _request(texts, "minilm-ic"))
        # When texts are embedded
        vectors = embedder.embed(texts)
        stub.assert_no_pending_responses()
    # Then they come back as the endpoint's vectors scaled to unit length
    np.testing.assert_allclose(vectors, raw / np.linalg.norm(raw, axis=1, keepdims=True), 1e-6)
    assert vectors.dtype == np.float32 and embedder.dimension == 384


def test_sagemaker_token_level_replies_are_mean_pooled(runtime: Any) -> None:
    # Given a feature-extraction endpoint that replies with one vector per token
    embedder = SageMakerEmbedder(ENDPOINT, runtime, MODEL_DIR, dimension=4, max_tokens=256)
    tokens_a = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]  # [tokens][dim]
    tokens_b = [[[0.0, 0.0, 2.0, 0.0]]]  # [1][tokens][dim]
    with Stubber(runtime) as stub:
        stub.add_response("invoke_endpoint", _reply([tokens_a, tokens_b]), _request(["a", "b"]))
        vectors = embedder.embed(["a", "b"])
    # Then each text's tokens are averaged, then normalised
    np.testing.assert_allclose(vectors, [[0.7071068, 0.7071068, 0, 0], [0, 0, 1, 0]], atol=1e-6)


def test_sagemaker_requests_are_batched_and_long_texts_cut(runtime: Any) -> None:
    # Given 40 texts, one far longer than the model reads, and an endpoint taking 32 a call
    embedder = SageMakerEmbedder(ENDPOINT, runtime, MODEL_DIR)
    texts = [f"text number {i}" for i in range(39)] + [LONG_TEXT]
    spans = embedder.token_spans(LONG_TEXT)
    sent = [*texts[:39], LONG_TEXT[: spans[253][1]]]
    with Stubber(runtime) as stub:
        for batch in (sent[:32], sent[32:]):
            stub.add_response(
                "invoke_endpoint", _reply([[1.0] * 384] * len(batch)), _request(batch)
            )
        # When they are embedded
        vectors = embedder.embed(texts)
        stub.assert_no_pending_responses()
    # Then two requests carried them all (the stub checked each body) and all have vectors
    assert vectors.shape == (40, 384)


def test_sagemaker_model_errors_become_typed_errors(runtime: Any) -> None:
    embedder = SageMakerEmbedder(ENDPOINT, runtime, MODEL_DIR)
    with Stubber(runtime) as stub:
        # Given the container failing, then refusing the input, then a missing endpoint
        stub.add_client_error(
            "invoke_endpoint",
            "ModelError",
            "Received server error (500) from primary",
            400,
            modeled_fields={"OriginalStatusCode": 500, "OriginalMessage": "CUDA out of memory"},
        )
        stub.add_client_error(
            "invoke_endpoint",
            "ModelError",
            "Received client error (413) from primary",
            424,
            modeled_fields={"OriginalStatusCode": 413, "OriginalMessage": "payload too large"},
        )
        stub.add_client_error(
            "invoke_endpoint",
            "ValidationError",
            f"Endpoint {ENDPOINT} of account 123456789012 not found.",
            400,
        )
        # Then each maps to an llmhost error with a status and a message that says why
        with pytest.raises(EmbeddingUnavailable) as failed:
            embedder.embed(["x"])
        assert failed.value.status == 503 and "CUDA out of memory" in failed.value.message
        with pytest.raises(EmbeddingRejected) as rejected:
            embedder.embed(["x"])
        assert rejected.value.status == 422 and "413" in rejected.value.message
        with pytest.raises(EmbeddingUnavailable, match="EMBEDDING_ENDPOINT_NAME"):
            embedder.embed(["x"])


def test_sagemaker_reply_of_the_wrong_size_is_a_configuration_error(runtime: Any) -> None:
    # Given an endpoint serving another model (768 dimensions, not 384)
    embedder = SageMakerEmbedder(ENDPOINT, runtime, MODEL_DIR)
    with Stubber(runtime) as stub:
        stub.add_response("invoke_endpoint", _reply([[0.1] * 768]), _request(["x"]))
        # Then the error names the mismatch instead of storing wrong vectors
        with pytest.raises(EmbeddingMisconfigured, match="384"):
            embedder.embed(["x"])


def test_pool_reply_and_batch_limits_are_strict() -> None:
    with pytest.raises(ValueError, match="expected 2 embeddings"):
        pool_reply([[1.0, 2.0]], 2, 2)
    with pytest.raises(ValueError, match="NaN"):
        pool_reply([[float("nan"), 1.0]], 1, 2)
    np.testing.assert_allclose(pool_reply({"embeddings": [[3.0, 4.0]]}, 1, 2)[0], [[0.6, 0.8]])
    # Request size: three 2 MB texts need three requests under 5 MB; one oversized text
    # still goes (alone); a token budget closes a batch early.
    assert next_batch_end([2_000_000] * 3, [1] * 3, 0, max_texts=32) == 2
    assert next_batch_end([9_000_000, 1], [1, 1], 0, max_texts=32) == 1
    assert next_batch_end([10] * 5, [300] * 5, 1, max_texts=32, max_reply_tokens=651) == 3


# ---------------------------------------------------------------------------------- wiring


def test_settings_pick_the_backend(runtime: Any, tmp_path: Path) -> None:
    _require_artifact()
    # Default: ONNX from the given folder
    onnx = embedder_from_env({"EMBEDDING_MODEL_DIR": str(MODEL_DIR), "EMBEDDING_THREADS": "1"})
    assert isinstance(onnx, OnnxEmbedder) and onnx.threads == 1
    # SageMaker, with its inference component
    remote = embedder_from_env(
        {
            "EMBEDDING_BACKEND": "sagemaker",
            "EMBEDDING_ENDPOINT_NAME": ENDPOINT,
            "EMBEDDING_INFERENCE_COMPONENT": "minilm-ic",
            "EMBEDDING_MODEL_DIR": str(MODEL_DIR),
        },
        runtime_client=runtime,
    )
    assert isinstance(remote, SageMakerEmbedder) and remote.inference_component == "minilm-ic"
    # Mistakes name the variable and the fix
    with pytest.raises(EmbeddingMisconfigured, match="make embedding-model"):
        embedder_from_env({"EMBEDDING_MODEL_DIR": str(tmp_path / "nothing")})
    with pytest.raises(EmbeddingMisconfigured, match="EMBEDDING_ENDPOINT_NAME"):
        embedder_from_env({"EMBEDDING_BACKEND": "sagemaker"})
    with pytest.raises(EmbeddingMisconfigured, match="EMBEDDING_BACKEND"):
        embedder_from_env({"EMBEDDING_BACKEND": "openai"})


def test_nothing_heavy_loads_at_import_or_construction() -> None:
    _require_artifact()
    # Given a fresh interpreter that imports the module and builds an embedder
    code = (
        "import sys\n"
        "from llmhost.rag.embeddings.onnx import OnnxEmbedder\n"
        f"OnnxEmbedder({str(MODEL_DIR)!r})\n"
        "print(sorted(m for m in ('onnxruntime', 'tokenizers', 'boto3') if m in sys.modules))"
    )
    # (the llmhost this test imported, whichever checkout that is)
    env = {**os.environ, "PYTHONPATH": str(Path(llmhost.__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    # Then neither ONNX Runtime, the tokenizer nor boto3 was loaded yet
    assert out.stdout.strip() == "[]"
