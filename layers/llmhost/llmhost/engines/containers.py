"""Turn a spec and its sizing plan into the SageMaker CreateModel ``PrimaryContainer`` (pure).

Each engine reads its configuration from environment variables with its own names:

- TGI (Hugging Face LLM DLC): ``HF_MODEL_ID``, ``SM_NUM_GPUS``, ``MAX_*_TOKENS``,
  ``HF_MODEL_QUANTIZE``... The SageMaker entrypoint maps them onto the launcher's flags.
- vLLM (AWS vLLM DLC for SageMaker): every ``SM_VLLM_<FLAG>`` becomes ``--<flag>`` of
  ``vllm serve`` (``SM_VLLM_MAX_MODEL_LEN=4096`` → ``--max-model-len 4096``; ``true``
  becomes a bare flag).
- LMI (DJL Serving): ``HF_MODEL_ID`` plus ``OPTION_<KEY>`` for ``option.<key>`` of
  serving.properties, run here with its vLLM backend (``OPTION_ROLLING_BATCH=vllm``).
- hf-inference (HF inference toolkit): ``HF_MODEL_ID`` and ``HF_TASK``.

All values are strings, as CreateModel requires. A token passed in lands in the
environment only on the copy sent to SageMaker; ``redacted`` hides it for logs and history.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from llmhost import catalog, engines, images
from llmhost.specs import DeploymentSpec, HubSource, ModelPackageSource, S3Source

if TYPE_CHECKING:
    from llmhost.sizing.plan import Plan

# Where SageMaker puts model data from ModelDataUrl / ModelDataSource in the container.
MODEL_DIR = "/opt/ml/model"
# Environment variables that hold secrets; ``redacted`` masks them.
SECRET_ENV_KEYS = frozenset({"HF_TOKEN", "HF_API_TOKEN", "HUGGING_FACE_HUB_TOKEN"})
REDACTED = "***"

_LMI_DTYPE = {"float16": "fp16", "bfloat16": "bf16"}


def container_definition(
    spec: DeploymentSpec, plan: Plan, region: str, hf_token: str | None = None
) -> dict[str, Any]:
    """The ``PrimaryContainer`` for CreateModel: image, model data and environment.

    ``plan`` is ``llmhost.sizing.plan.plan(spec)``; ``region`` picks the image (raises
    ``llmhost.images.ImageNotAvailable`` naming known versions/regions when missing);
    ``hf_token`` is the Hugging Face token for gated models, added as ``HF_TOKEN`` (pass
    None when building the container for hashing or storage). A model package returns
    ``{"ModelPackageName": arn}``: the package defines its own image and environment.
    """
    source = spec.model
    if isinstance(source, ModelPackageSource):
        return {"ModelPackageName": source.arn}

    engine = spec.engine.name
    processor: images.Processor = "gpu" if plan.num_gpus > 0 else "cpu"
    container: dict[str, Any] = {
        "Image": images.image_uri(engine, spec.engine.version, region, processor=processor)
    }
    model_ref = source.model_id if isinstance(source, HubSource) else MODEL_DIR
    if isinstance(source, S3Source):
        container.update(_s3_model_data(source.uri))

    build = {
        "tgi": _tgi_env,
        "vllm": _vllm_env,
        "lmi": _lmi_env,
        "hf-inference": _hf_inference_env,
    }[engine]
    env = build(spec, plan, model_ref)
    if hf_token:
        env["HF_TOKEN"] = hf_token
        if engine == "hf-inference":
            # Older toolkit releases read only HF_API_TOKEN.
            env["HF_API_TOKEN"] = hf_token
    container["Environment"] = {key: str(value) for key, value in env.items()}
    return container


def redacted(container: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a container definition with secret environment values masked."""
    masked = copy.deepcopy(container)
    env = masked.get("Environment")
    if isinstance(env, dict):
        for key in env:
            if key in SECRET_ENV_KEYS:
                env[key] = REDACTED
    return masked


def _s3_model_data(uri: str) -> dict[str, Any]:
    if uri.endswith(".tar.gz"):
        return {"ModelDataUrl": uri}
    # An uncompressed prefix: SageMaker copies every object under it into MODEL_DIR. The
    # prefix must end with '/' or it would also match sibling keys ('llama3-8b-old/...').
    prefix = uri if uri.endswith("/") else f"{uri}/"
    return {
        "ModelDataSource": {
            "S3DataSource": {
                "S3Uri": prefix,
                "S3DataType": "S3Prefix",
                "CompressionType": "None",
            }
        }
    }


def _revision(spec: DeploymentSpec) -> str | None:
    return spec.model.revision if isinstance(spec.model, HubSource) else None


def _put(env: dict[str, str], key: str, value: object) -> None:
    if value is not None:
        env[key] = str(value)


def _tgi_env(spec: DeploymentSpec, plan: Plan, model_ref: str) -> dict[str, str]:
    opts = spec.engine.options
    tokens = plan.tokens
    env: dict[str, str] = {"HF_MODEL_ID": model_ref, "SM_NUM_GPUS": str(max(1, plan.num_gpus))}
    _put(env, "HF_MODEL_REVISION", _revision(spec))
    _put(env, "MAX_INPUT_TOKENS", tokens.max_input_tokens)
    _put(env, "MAX_TOTAL_TOKENS", tokens.max_total_tokens)
    _put(env, "MAX_BATCH_PREFILL_TOKENS", tokens.max_batch_prefill_tokens)
    _put(env, "MAX_BATCH_TOTAL_TOKENS", tokens.max_batch_total_tokens)
    # A copy holds this many requests (running and queued), then answers 429: the scaling
    # policy's overload alarm reads those refusals, and its target assumes the same copy.
    _put(env, "MAX_CONCURRENT_REQUESTS", engines.copy_capacity_of(spec, plan).queue_limit)
    if opts.quantization is not None:
        env["HF_MODEL_QUANTIZE"] = engines.traits("tgi").quantizations[opts.quantization]
    _put(env, "DTYPE", opts.dtype)
    if opts.trust_remote_code:
        env["HF_MODEL_TRUST_REMOTE_CODE"] = "true"
    return env


def _vllm_env(spec: DeploymentSpec, plan: Plan, model_ref: str) -> dict[str, str]:
    opts = spec.engine.options
    tokens = plan.tokens
    env: dict[str, str] = {
        "SM_VLLM_MODEL": model_ref,
        "SM_VLLM_TENSOR_PARALLEL_SIZE": str(max(1, plan.num_gpus)),
    }
    _put(env, "SM_VLLM_REVISION", _revision(spec))
    _put(env, "SM_VLLM_MAX_MODEL_LEN", tokens.max_total_tokens)
    # vLLM's per-step token budget plays the role of TGI's prefill budget. Only passed when
    # the spec sets it: vLLM's own default suits its scheduler and version better than the
    # planner's TGI-shaped one.
    _put(env, "SM_VLLM_MAX_NUM_BATCHED_TOKENS", opts.max_batch_prefill_tokens)
    if opts.quantization is not None:
        env["SM_VLLM_QUANTIZATION"] = engines.traits("vllm").quantizations[opts.quantization]
    _put(env, "SM_VLLM_DTYPE", opts.dtype)
    if opts.trust_remote_code:
        env["SM_VLLM_TRUST_REMOTE_CODE"] = "true"
    return env


def _lmi_env(spec: DeploymentSpec, plan: Plan, model_ref: str) -> dict[str, str]:
    opts = spec.engine.options
    tokens = plan.tokens
    env: dict[str, str] = {
        "HF_MODEL_ID": model_ref,
        "OPTION_ROLLING_BATCH": "vllm",
        "OPTION_TENSOR_PARALLEL_DEGREE": str(max(1, plan.num_gpus)),
    }
    _put(env, "OPTION_REVISION", _revision(spec))
    _put(env, "OPTION_MAX_MODEL_LEN", tokens.max_total_tokens)
    _put(env, "OPTION_MAX_ROLLING_BATCH_PREFILL_TOKENS", opts.max_batch_prefill_tokens)
    if opts.quantization is not None:
        env["OPTION_QUANTIZE"] = engines.traits("lmi").quantizations[opts.quantization]
    if opts.dtype is not None:
        env["OPTION_DTYPE"] = _LMI_DTYPE[opts.dtype]
    if opts.trust_remote_code:
        env["OPTION_TRUST_REMOTE_CODE"] = "true"
    return env


def _hf_inference_env(spec: DeploymentSpec, plan: Plan, model_ref: str) -> dict[str, str]:
    model = catalog.lookup(spec.catalog_id)
    env: dict[str, str] = {
        "HF_TASK": model.task if model else "text-generation",
        # The toolkit's model server starts one worker per vCPU by default, each with its
        # own copy of the model: on a memory-capped serverless endpoint that alone OOMs.
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
    }
    if model_ref != MODEL_DIR:
        # With S3 model data the toolkit loads MODEL_DIR by itself; HF_MODEL_ID would make
        # it download from the Hub instead.
        env["HF_MODEL_ID"] = model_ref
    _put(env, "HF_MODEL_REVISION", _revision(spec))
    if spec.engine.options.trust_remote_code:
        env["HF_TRUST_REMOTE_CODE"] = "True"
    return env
