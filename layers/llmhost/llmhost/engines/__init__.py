"""Inference engines: what each one can run, and how a spec becomes its container.

TGI is the default; vLLM (the AWS vLLM container for SageMaker), LMI (DJL Serving with a
vLLM backend) and the Hugging Face inference toolkit (CPU-friendly, for small models) are
alternatives. ``ENGINE_TRAITS`` records the differences that decide whether a spec can run
at all; ``llmhost.engines.containers`` turns a spec into the container definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llmhost.errors import FieldIssue

if TYPE_CHECKING:
    from llmhost.catalog import CatalogModel
    from llmhost.scaling.policy import CopyCapacity
    from llmhost.sizing.plan import Plan
    from llmhost.specs import DeploymentSpec


@dataclass(frozen=True)
class EngineTraits:
    """What one engine supports.

    ``quantizations`` maps llmhost's quantization names to the engine's own spelling;
    a name missing from it is unsupported. ``shards`` says whether the engine splits a
    model across GPUs (tensor parallelism); ``precision_bytes`` is the bytes per parameter
    the engine loads unquantized weights in when no dtype is forced. ``bounded_queue``: the
    engine refuses a request (429) once a set number are running or queued, so its refusals
    measure overload; the others queue without bound.
    """

    name: str
    needs_gpu: bool
    shards: bool
    serves_seq2seq: bool
    dtype_with_quantization: bool
    continuous_batching: bool
    precision_bytes: float = 2.0
    bounded_queue: bool = False
    quantizations: Mapping[str, str] = field(default_factory=dict)


_VLLM_QUANT = {"awq": "awq", "gptq": "gptq", "fp8": "fp8", "bitsandbytes-nf4": "bitsandbytes"}

ENGINE_TRAITS: Mapping[str, EngineTraits] = {
    "tgi": EngineTraits(
        name="tgi",
        needs_gpu=True,
        shards=True,
        serves_seq2seq=True,
        # TGI's launcher refuses --dtype together with --quantize.
        dtype_with_quantization=False,
        continuous_batching=True,
        quantizations={
            q: q for q in ("awq", "gptq", "bitsandbytes", "bitsandbytes-nf4", "eetq", "fp8")
        },
        # --max-concurrent-requests (MAX_CONCURRENT_REQUESTS): past it TGI answers 429.
        bounded_queue=True,
    ),
    "vllm": EngineTraits(
        name="vllm",
        needs_gpu=True,
        shards=True,
        serves_seq2seq=False,
        dtype_with_quantization=True,
        continuous_batching=True,
        quantizations=_VLLM_QUANT,
    ),
    "lmi": EngineTraits(
        name="lmi",
        needs_gpu=True,
        shards=True,
        serves_seq2seq=False,  # llmhost runs LMI with its vLLM backend
        dtype_with_quantization=True,
        continuous_batching=True,
        quantizations=_VLLM_QUANT,
    ),
    "hf-inference": EngineTraits(
        name="hf-inference",
        needs_gpu=False,
        shards=False,
        serves_seq2seq=True,
        dtype_with_quantization=False,
        continuous_batching=False,
        # The toolkit calls transformers.pipeline() without a dtype: weights load as float32.
        precision_bytes=4.0,
    ),
}


def traits(engine: str) -> EngineTraits:
    """Traits of an engine named in a spec ('tgi', 'vllm', 'lmi', 'hf-inference')."""
    return ENGINE_TRAITS[engine]


def copy_capacity_of(spec: DeploymentSpec, plan: Plan) -> CopyCapacity:
    """What one copy (or instance) of ``spec`` holds at once, from its sizing plan's tokens.

    The deployed scaling policy's default target and, for an engine with a bounded queue,
    its queue limit (TGI's ``MAX_CONCURRENT_REQUESTS``) both come from this one value, so
    the alarm that reads refusals and the engine that refuses agree.
    """
    from llmhost.scaling.policy import copy_capacity

    tokens = plan.tokens
    return copy_capacity(
        tokens.max_batch_total_tokens,
        tokens.max_total_tokens,
        refuses=traits(spec.engine.name).bounded_queue,
    )


def option_issues(spec: DeploymentSpec, model: CatalogModel | None) -> list[FieldIssue]:
    """Engine options (and model architectures) the chosen engine cannot run.

    Pure; ``model`` is the catalog entry for the spec's model, or None when unknown.
    """
    engine = spec.engine
    info = traits(engine.name)
    opts = engine.options
    issues: list[FieldIssue] = []

    if opts.quantization is not None and opts.quantization not in info.quantizations:
        if info.quantizations:
            supported = ", ".join(f"'{q}'" for q in info.quantizations)
            fix = f"use one of {supported}, or engine.name 'tgi'"
        else:
            fix = "remove it, or use engine.name 'tgi' on a GPU hosting kind"
        issues.append(
            FieldIssue(
                "engine.options.quantization",
                f"{engine.name} cannot load '{opts.quantization}' weights; {fix}",
            )
        )
    if (
        opts.dtype is not None
        and opts.quantization is not None
        and not info.dtype_with_quantization
    ):
        issues.append(
            FieldIssue(
                "engine.options.dtype",
                f"{engine.name} cannot force a dtype on a quantized model; remove "
                "engine.options.dtype or engine.options.quantization",
            )
        )
    elif opts.dtype is not None and engine.name == "hf-inference":
        issues.append(
            FieldIssue(
                "engine.options.dtype",
                "hf-inference always loads float32 weights and takes no dtype; remove it, "
                "or use engine.name 'tgi' for float16/bfloat16",
            )
        )
    if model is not None and model.seq2seq and not info.serves_seq2seq:
        issues.append(
            FieldIssue(
                "engine.name",
                f"{engine.name} cannot serve {model.id}, an encoder-decoder (seq2seq) model; "
                "use engine.name 'tgi', or 'hf-inference' for CPU",
            )
        )
    return issues
