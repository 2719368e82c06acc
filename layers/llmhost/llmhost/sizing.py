"""How much memory a model needs, which instance it fits on, its token limits and cost (pure).

The estimate, per GPU of a tensor-parallel group of ``n`` GPUs:

    weights   = params * bytes per param (by dtype or quantization) / n
    runtime   = OVERHEAD_FIXED_GIB + OVERHEAD_FRACTION * weights    (CUDA context,
                activations, CUDA graphs, allocator slack)
    KV cache  = 2 (K and V) * layers * KV heads * head size * 2 bytes * tokens, split over
                the GPUs by KV head (a model with fewer KV heads than GPUs repeats them)
    fits when weights + runtime + KV cache ≤ USABLE_GPU_FRACTION * GPU memory

"Tokens" is ``engine.options.max_batch_total_tokens`` when set, else enough for
``DEFAULT_CONCURRENCY`` full-length sequences. What memory is left after weights and
runtime becomes the planned ``max_batch_total_tokens``. Engines measure the real numbers
at startup; this estimate only has to pick an instance that will work, and to refuse,
before anything is created, a deployment that cannot.

Models missing from ``llmhost.catalog`` are not sized: nothing is assumed about them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from llmhost import catalog, engines, instances
from llmhost.catalog import CatalogModel
from llmhost.errors import FieldIssue
from llmhost.instances import HOURS_PER_MONTH, InstanceType
from llmhost.specs import (
    DedicatedHosting,
    DeploymentSpec,
    HubSource,
    ModelPackageSource,
    ServerlessHosting,
    SharedHosting,
)

GIB = 1024**3

# Fraction of a GPU's marketed memory a model may plan to use: CUDA reports a little less
# than the marketed size, and vLLM's default gpu_memory_utilization is the same 0.9.
USABLE_GPU_FRACTION = 0.90
# Same margin on host RAM for CPU serving (the OS and model server need some).
USABLE_HOST_FRACTION = 0.90
OVERHEAD_FIXED_GIB = 1.5
OVERHEAD_FRACTION = 0.10
# Python, PyTorch and the model server on a CPU host or a serverless container.
CPU_RUNTIME_GIB = 1.0

# Bytes per parameter once loaded. 4-bit formats carry group scales and zero points and
# keep embeddings and the output layer in 16 bits: about 12% on top of half a byte.
WEIGHT_BYTES: dict[str | None, float] = {
    None: 2.0,
    "fp8": 1.0,
    "eetq": 1.0,
    "bitsandbytes": 1.0,
    "awq": 0.56,
    "gptq": 0.56,
    "bitsandbytes-nf4": 0.56,
}
# The KV cache stays in 16 bits whatever the weights are quantized to.
KV_BYTES = 2

DEFAULT_MAX_TOTAL_TOKENS = 8192
# Full-length sequences the KV cache must hold for a continuous-batching engine to count
# as fitting; engines without batching serve one request at a time.
DEFAULT_CONCURRENCY = 2
# TGI's own default prefill budget per batch.
DEFAULT_PREFILL_TOKENS = 4096
# Batch token budgets are rounded down to a multiple of this (a paged-attention block size
# multiple; also keeps the numbers readable).
TOKEN_ROUNDING = 256

# Serverless Inference, us-east-1: on-demand duration is $0.0000200 per second per GB of
# memory (1 GB = 1024 MB); provisioned concurrency is billed per GB-second while it is
# provisioned. Both from the SageMaker pricing page (see instances.PRICE_SOURCE); the
# provisioned-concurrency rate is the less certain of the two.
SERVERLESS_PRICE_PER_GB_SECOND = 0.0000200
SERVERLESS_PROVISIONED_PRICE_PER_GB_SECOND = 0.0000048

# Used when the model's size is unknown and the spec names no instance type.
DEFAULT_UNKNOWN_INSTANCE = "ml.g5.2xlarge"

HostingKind = Literal["dedicated", "shared", "serverless"]
Device = Literal["gpu", "cpu", "serverless"]


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated memory of one model replica, in GiB, summed over the devices it uses.

    ``kv_cache_gib`` is for the planned ``max_batch_total_tokens``; ``available_gib`` is
    the usable memory of those devices (GPU memory * USABLE_GPU_FRACTION on GPUs).
    """

    device: Device
    devices: int
    precision: str
    weights_gib: float
    kv_cache_gib: float
    overhead_gib: float
    total_gib: float
    available_gib: float


@dataclass(frozen=True)
class TokenLimits:
    """Token limits per request and per batch; None means "left to the engine"."""

    max_input_tokens: int | None
    max_total_tokens: int | None
    max_batch_prefill_tokens: int | None
    max_batch_total_tokens: int | None


@dataclass(frozen=True)
class Cost:
    """USD per hour and per month (730 h) at the minimum and maximum scaling capacity."""

    hourly_min: float
    hourly_max: float
    monthly_min: float
    monthly_max: float
    basis: str


@dataclass(frozen=True)
class Plan:
    """Where and how a spec will run: instance, GPUs, memory, token limits and cost.

    ``instance_type`` is None for serverless; ``num_gpus`` is 0 on CPU; ``memory`` is None
    when the model is not in the catalog. ``notes`` are warnings for people.
    """

    deployment: str
    kind: HostingKind
    engine: str
    model: str | None
    instance_type: str | None
    instance_count: int
    num_gpus: int
    memory: MemoryEstimate | None
    tokens: TokenLimits
    cost: Cost
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (lists for tuples)."""
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """The plan ``as_dict`` wrote (a deployment record keeps the plan it was built with)."""
        memory = data.get("memory")
        return cls(
            **{
                **data,
                "memory": MemoryEstimate(**memory) if memory else None,
                "tokens": TokenLimits(**data["tokens"]),
                "cost": Cost(**data["cost"]),
                "notes": tuple(data.get("notes", ())),
            }
        )


# ------------------------------------------------------------------------- memory math


def weight_bytes_per_param(engine: str, quantization: str | None) -> float:
    """Bytes per parameter an engine loads weights in, given a quantization (or None)."""
    info = engines.traits(engine)
    if quantization is None:
        return info.precision_bytes
    return WEIGHT_BYTES[quantization]


def precision_name(engine: str, quantization: str | None, dtype: str | None) -> str:
    """Human name of the weight precision, e.g. 'float16' or 'awq (4-bit)'."""
    if quantization is not None:
        bits = 8 if WEIGHT_BYTES[quantization] >= 1 else 4
        return f"{quantization} ({bits}-bit)"
    if engines.traits(engine).precision_bytes == 4.0:
        return "float32"
    return dtype or "float16"


def weights_gib(model: CatalogModel, bytes_per_param: float) -> float:
    """GiB of weights: every parameter, including all experts of a mixture of experts."""
    return model.params_b * 1e9 * bytes_per_param / GIB


def kv_gib_per_token(model: CatalogModel, element_bytes: float = KV_BYTES) -> float:
    """GiB of KV cache one token occupies across all layers (before tensor parallelism).

    For encoder-decoder models the decoder caches cross-attention keys and values for
    each input token and self-attention ones for each output token: per token of
    max_total_tokens (input + output) that is the same one set of decoder layers.
    """
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * element_bytes / GIB


def valid_parallel_degree(model: CatalogModel | None, degree: int) -> bool:
    """Whether ``degree`` GPUs can shard the model: it must divide the attention heads,
    and KV heads must split evenly or be repeated evenly."""
    if degree < 1:
        return False
    if model is None:
        return True
    kv = model.num_kv_heads
    return model.num_attention_heads % degree == 0 and (kv % degree == 0 or degree % kv == 0)


def default_parallel_degree(model: CatalogModel | None, gpu_count: int) -> int:
    """The largest power of two ≤ ``gpu_count`` the model can be sharded over (≥ 1)."""
    degree = 1
    while degree * 2 <= gpu_count and valid_parallel_degree(model, degree * 2):
        degree *= 2
    return degree


@dataclass(frozen=True)
class _Fit:
    """One model on one instance with ``devices`` GPUs (0: CPU), for ``required`` tokens."""

    instance: InstanceType | None
    devices: int
    precision: str
    weights_gib: float
    overhead_gib: float
    kv_per_token_gib: float  # summed over devices, including repeated KV heads
    available_gib: float
    free_tokens: int
    required_tokens: int

    @property
    def fits(self) -> bool:
        return self.free_tokens >= self.required_tokens

    @property
    def weights_fit(self) -> bool:
        return self.free_tokens > 0

    @property
    def required_gib(self) -> float:
        return self.weights_gib + self.overhead_gib + self.kv_per_token_gib * self.required_tokens


def _gpu_fit(
    model: CatalogModel,
    instance: InstanceType,
    degree: int,
    bytes_per_param: float,
    kv_element_bytes: float,
    required_tokens: int,
    precision: str,
) -> _Fit:
    weights = weights_gib(model, bytes_per_param)
    per_gpu_weights = weights / degree
    per_gpu_overhead = OVERHEAD_FIXED_GIB + OVERHEAD_FRACTION * per_gpu_weights
    # Each GPU holds ceil(kv_heads / degree) of the KV heads.
    shard = math.ceil(model.num_kv_heads / degree) / model.num_kv_heads
    per_gpu_kv_token = kv_gib_per_token(model, kv_element_bytes) * shard
    usable = instance.gpu_memory_gib * USABLE_GPU_FRACTION
    free = usable - per_gpu_weights - per_gpu_overhead
    return _Fit(
        instance=instance,
        devices=degree,
        precision=precision,
        weights_gib=weights,
        overhead_gib=per_gpu_overhead * degree,
        kv_per_token_gib=per_gpu_kv_token * degree,
        available_gib=usable * degree,
        free_tokens=max(0, math.floor(free / per_gpu_kv_token)) if free > 0 else 0,
        required_tokens=required_tokens,
    )


def _host_fit(
    model: CatalogModel,
    memory_gib: float,
    instance: InstanceType | None,
    bytes_per_param: float,
    required_tokens: int,
    precision: str,
) -> _Fit:
    weights = weights_gib(model, bytes_per_param)
    kv_token = kv_gib_per_token(model, bytes_per_param)
    free = memory_gib - weights - CPU_RUNTIME_GIB
    return _Fit(
        instance=instance,
        devices=0,
        precision=precision,
        weights_gib=weights,
        overhead_gib=CPU_RUNTIME_GIB,
        kv_per_token_gib=kv_token,
        available_gib=memory_gib,
        free_tokens=max(0, math.floor(free / kv_token)) if free > 0 else 0,
        required_tokens=required_tokens,
    )


# ------------------------------------------------------------------------- token limits


@dataclass(frozen=True)
class _Tokens:
    max_input: int | None
    max_total: int | None
    required_batch: int | None  # KV tokens a fit must hold; None when the model is unknown


def _requested_tokens(spec: DeploymentSpec, model: CatalogModel | None) -> _Tokens:
    """Per-request limits from the spec, defaulted from the model's context length."""
    opts = spec.engine.options
    max_new = spec.generation.max_new_tokens
    max_input, max_total = opts.max_input_tokens, opts.max_total_tokens

    if model is None:
        if max_total is None and max_input is not None:
            max_total = max_input + max_new
        if max_input is None and max_total is not None:
            max_input = max_total - _output_reserve(max_total, max_new)
    elif model.seq2seq:
        # The decoder's output does not share the encoder's context window.
        max_input = max_input or model.context_length
        max_total = max_total or max_input + max_new
    else:
        if max_total is None:
            wanted = max(DEFAULT_MAX_TOTAL_TOKENS, (max_input or 0) + max_new)
            max_total = min(model.context_length, wanted)
        if max_input is None:
            max_input = max_total - _output_reserve(max_total, max_new)

    concurrency = DEFAULT_CONCURRENCY if engines.traits(spec.engine.name).continuous_batching else 1
    if opts.max_batch_total_tokens is not None:
        required: int | None = opts.max_batch_total_tokens
    elif max_total is not None:
        required = max_total * concurrency
    else:
        required = None
    return _Tokens(max_input, max_total, required)


def _output_reserve(max_total: int, max_new: int) -> int:
    """Tokens kept free for the answer: the generation default or a quarter of the window,
    whichever is larger, but never more than half, so prompts (RAG context) get the rest."""
    return min(max(max_new, max_total // 4), max_total // 2)


def _limits(spec: DeploymentSpec, tokens: _Tokens, fit: _Fit | None) -> TokenLimits:
    opts = spec.engine.options
    if not engines.traits(spec.engine.name).continuous_batching:
        return TokenLimits(tokens.max_input, tokens.max_total, None, None)
    batch_total = opts.max_batch_total_tokens
    if batch_total is None and fit is not None and tokens.max_total is not None:
        rounded = (fit.free_tokens // TOKEN_ROUNDING) * TOKEN_ROUNDING
        batch_total = max(tokens.max_total, rounded)
    prefill = opts.max_batch_prefill_tokens
    if prefill is None and tokens.max_input is not None:
        prefill = max(tokens.max_input, DEFAULT_PREFILL_TOKENS)
        if batch_total is not None:
            prefill = min(prefill, batch_total)
    return TokenLimits(tokens.max_input, tokens.max_total, prefill, batch_total)


# ------------------------------------------------------------------------ choosing hardware


@dataclass(frozen=True)
class _Sizing:
    """Everything the fit depends on, derived once from a spec and its catalog model."""

    model: CatalogModel
    engine: str
    bytes_per_param: float
    kv_element_bytes: float
    precision: str
    required_tokens: int
    dtype: str | None = None
    quantization: str | None = None
    shared_copy: SharedHosting | None = None  # a copy's host memory and CPU needs

    def runs_on(self, instance: InstanceType) -> bool:
        """Whether the instance can run the model at all, memory aside: GPU support for
        the precision, and room on the host for one copy of a shared deployment."""
        if self.shared_copy is not None and _copies_per_instance(self.shared_copy, instance) < 1:
            return False
        if not instance.is_gpu:
            return True
        if self.dtype == "bfloat16" and not instance.supports_bfloat16:
            return False
        return not (self.quantization == "fp8" and not instance.supports_fp8)

    def on_gpu(self, instance: InstanceType, degree: int) -> _Fit:
        return _gpu_fit(
            self.model,
            instance,
            degree,
            self.bytes_per_param,
            self.kv_element_bytes,
            self.required_tokens,
            self.precision,
        )

    def on_host(self, instance: InstanceType) -> _Fit:
        usable = instance.memory_gib * USABLE_HOST_FRACTION
        return _host_fit(
            self.model, usable, instance, self.bytes_per_param, self.required_tokens, self.precision
        )

    def with_quantization(self, quantization: str) -> _Sizing:
        return replace(
            self,
            bytes_per_param=WEIGHT_BYTES[quantization],
            kv_element_bytes=KV_BYTES,
            precision=precision_name(self.engine, quantization, None),
            dtype=None,
            quantization=quantization,
        )


def _sizing(spec: DeploymentSpec, model: CatalogModel, tokens: _Tokens) -> _Sizing:
    opts = spec.engine.options
    per_param = weight_bytes_per_param(spec.engine.name, opts.quantization)
    return _Sizing(
        model=model,
        engine=spec.engine.name,
        bytes_per_param=per_param,
        kv_element_bytes=KV_BYTES if per_param <= 2 else per_param,
        precision=precision_name(spec.engine.name, opts.quantization, opts.dtype),
        required_tokens=tokens.required_batch or model.context_length,
        dtype=opts.dtype,
        quantization=opts.quantization,
        shared_copy=spec.hosting if isinstance(spec.hosting, SharedHosting) else None,
    )


def _fit_on(sizing: _Sizing, instance: InstanceType, degree: int | None) -> _Fit:
    """The fit on a given instance; ``degree`` None means the default parallel degree."""
    if not instance.is_gpu:
        return sizing.on_host(instance)
    if not engines.traits(sizing.engine).shards:
        return sizing.on_gpu(instance, 1)
    if degree is None:
        degree = default_parallel_degree(sizing.model, instance.gpu_count)
    return sizing.on_gpu(instance, degree)


def _cheapest_fit(sizing: _Sizing, degree: int | None) -> _Fit | None:
    """The cheapest known instance the model fits on (None if none does).

    ``degree`` fixes the GPUs per replica (shared accelerators, or hosting.num_gpus);
    CPU instances are candidates only for engines that run on CPU.
    """
    info = engines.traits(sizing.engine)
    candidates = list(instances.gpu_instances())
    if not info.needs_gpu and degree is None:
        candidates += instances.cpu_instances()
    fits: list[tuple[float, int, int, _Fit]] = []
    for instance in candidates:
        if (degree is not None and instance.gpu_count < degree) or not sizing.runs_on(instance):
            continue
        fit = _fit_on(sizing, instance, degree)
        if fit.fits:
            # Cheapest first; at equal price fewer GPUs, then more room for the KV cache.
            fits.append((instance.price_per_hour, instance.gpu_count, -fit.free_tokens, fit))
    if not fits:
        return None
    return min(fits, key=lambda row: row[:3])[3]


def _largest_gpu_instance() -> InstanceType:
    return max(instances.gpu_instances(), key=lambda t: (t.total_gpu_memory_gib, -t.price_per_hour))


# ------------------------------------------------------------------------ capacity issues


def capacity_issues(spec: DeploymentSpec) -> list[FieldIssue]:
    """Reasons the spec cannot run as written on the hardware it names (or on any).

    Covers engine support for the options and model, instance types, GPU counts, context
    length, GPU and serverless memory, and shared-pool capacity. Each issue names the
    field to change and a concrete fix. Pure; called from ``specs.cross_field_issues``.
    """
    model = catalog.lookup(spec.catalog_id)
    issues = _image_issues(spec) + engines.option_issues(spec, model)
    hosting = spec.hosting
    if isinstance(hosting, ServerlessHosting):
        return issues + _serverless_issues(spec, model)

    instance: InstanceType | None = None
    if hosting.instance_type is not None:
        instance = instances.get(hosting.instance_type)
        if instance is None:
            return [*issues, _unknown_instance_issue(hosting.instance_type)]
        if engines.traits(spec.engine.name).needs_gpu and not instance.is_gpu:
            return [
                *issues,
                FieldIssue(
                    "hosting.instance_type",
                    f"{spec.engine.name} needs a GPU and {instance.name} has none; use a GPU "
                    f"type such as {_cheap_gpu_examples()}, or engine.name 'hf-inference' "
                    "for a small model on CPU",
                ),
            ]

    degree = _requested_degree(hosting)
    issues += _hardware_issues(spec, instance, degree)
    if instance is not None:
        issues += _precision_issues(spec, instance)
    if model is None:
        return issues
    issues += _context_issues(spec, model)
    if degree is not None and not valid_parallel_degree(model, degree):
        field = (
            "hosting.num_gpus" if isinstance(hosting, DedicatedHosting) else "hosting.accelerators"
        )
        issues.append(
            FieldIssue(
                field,
                f"{model.id} cannot be sharded over {degree} GPUs: the GPU count must divide "
                f"its {model.num_attention_heads} attention heads and {model.num_kv_heads} KV "
                f"heads; use {default_parallel_degree(model, degree)}",
            )
        )
    if issues:
        return issues  # memory math on a spec with other errors would only add noise

    tokens = _requested_tokens(spec, model)
    sizing = _sizing(spec, model, tokens)
    if instance is not None:
        issues += _memory_issues_on(spec, sizing, instance, degree)
    else:
        best = _cheapest_fit(sizing, degree)
        if best is None:
            issues.append(_nothing_fits_issue(spec, sizing, degree))
        elif best.instance is not None:
            issues += _precision_issues(spec, best.instance)
    if not issues and isinstance(hosting, SharedHosting):
        issues += _pool_issues(spec, sizing, instance, degree)
    return issues


def _requested_degree(hosting: DedicatedHosting | SharedHosting) -> int | None:
    if isinstance(hosting, SharedHosting):
        return hosting.accelerators
    return hosting.num_gpus


def _image_issues(spec: DeploymentSpec) -> list[FieldIssue]:
    """engine.version must name a container image llmhost ships (a model package brings its
    own). Checked for every processor the engine may run on: the instance is not chosen yet."""
    from llmhost import images

    if isinstance(spec.model, ModelPackageSource):
        return []
    engine = spec.engine
    processors: tuple[images.Processor, ...] = ("gpu",)
    if engine.name == "hf-inference":
        processors = ("cpu",) if isinstance(spec.hosting, ServerlessHosting) else ("cpu", "gpu")
    for processor in processors:
        try:
            images.resolve_version(engine.name, engine.version, processor)
        except images.ImageNotAvailable as missing:
            return [FieldIssue("engine.version", missing.message)]
    return []


def _unknown_instance_issue(name: str) -> FieldIssue:
    family = name.rsplit(".", 1)[0]
    same_family = [t.name for t in instances.all_instances() if t.family == family]
    if same_family:
        known = ", ".join(same_family)
        hint = f"known {family} sizes: {known}"
    else:
        families = sorted({t.family for t in instances.all_instances()})
        hint = f"known families: {', '.join(families)} (e.g. {_cheap_gpu_examples()})"
    return FieldIssue(
        "hosting.instance_type",
        f"'{name}' is not an instance type llmhost can size or price; {hint}; or omit "
        "hosting.instance_type to get the cheapest one the model fits on",
    )


def _cheap_gpu_examples() -> str:
    return ", ".join(("ml.g5.xlarge", "ml.g6.xlarge", "ml.g5.12xlarge", "ml.p4d.24xlarge"))


def _hardware_issues(
    spec: DeploymentSpec, instance: InstanceType | None, degree: int | None
) -> list[FieldIssue]:
    hosting = spec.hosting
    issues: list[FieldIssue] = []
    if instance is None:
        return issues
    if isinstance(hosting, DedicatedHosting) and degree is not None and degree > instance.gpu_count:
        issues.append(
            FieldIssue(
                "hosting.num_gpus",
                f"{instance.name} has {instance.gpu_count} GPU(s), not {degree}; lower "
                "hosting.num_gpus or choose an instance type with more GPUs "
                "(ml.g5.12xlarge has 4, ml.g5.48xlarge and ml.p4d.24xlarge have 8)",
            )
        )
    if isinstance(hosting, SharedHosting):
        if hosting.accelerators > instance.gpu_count:
            issues.append(
                FieldIssue(
                    "hosting.accelerators",
                    f"each copy asks for {hosting.accelerators} GPU(s) but a pool instance "
                    f"({instance.name}) has {instance.gpu_count}; lower hosting.accelerators "
                    "or use a pool instance type with more GPUs",
                )
            )
        host_mb = instance.memory_gib * 1024
        if hosting.memory_mb > host_mb:
            issues.append(
                FieldIssue(
                    "hosting.memory_mb",
                    f"each copy asks for {hosting.memory_mb} MB of host memory but "
                    f"{instance.name} has {host_mb} MB; lower it",
                )
            )
        if hosting.cpus is not None and hosting.cpus > instance.vcpus:
            issues.append(
                FieldIssue(
                    "hosting.cpus",
                    f"each copy asks for {hosting.cpus:g} CPU cores but {instance.name} has "
                    f"{instance.vcpus}; lower it",
                )
            )
    return issues


def _context_issues(spec: DeploymentSpec, model: CatalogModel) -> list[FieldIssue]:
    opts = spec.engine.options
    issues: list[FieldIssue] = []
    if model.seq2seq:
        return issues  # encoder input and decoder output have separate windows
    ctx = model.context_length
    if opts.max_total_tokens is not None and opts.max_total_tokens > ctx:
        issues.append(
            FieldIssue(
                "engine.options.max_total_tokens",
                f"{opts.max_total_tokens} is above {model.id}'s context length of {ctx} "
                f"tokens; use at most {ctx}",
            )
        )
    if opts.max_input_tokens is not None and opts.max_input_tokens >= ctx:
        issues.append(
            FieldIssue(
                "engine.options.max_input_tokens",
                f"{opts.max_input_tokens} leaves no room to generate within {model.id}'s "
                f"context length of {ctx} tokens; use at most {ctx - 1}, e.g. "
                f"{ctx - _output_reserve(ctx, spec.generation.max_new_tokens)}",
            )
        )
    return issues


def _memory_issues_on(
    spec: DeploymentSpec, sizing: _Sizing, instance: InstanceType, degree: int | None
) -> list[FieldIssue]:
    if degree is not None and degree > instance.gpu_count:
        return []  # already reported as a GPU-count issue
    fit = _fit_on(sizing, instance, degree)
    if fit.fits:
        return []
    model = sizing.model
    opts = spec.engine.options
    if fit.weights_fit and opts.max_batch_total_tokens is not None:
        room = (fit.free_tokens // TOKEN_ROUNDING) * TOKEN_ROUNDING
        hint = (
            f"lower it to {room} or less"
            if room >= (opts.max_total_tokens or 1)
            else ("lower it and engine.options.max_total_tokens")
        )
        return [
            FieldIssue(
                "engine.options.max_batch_total_tokens",
                f"{opts.max_batch_total_tokens} tokens of KV cache need "
                f"{fit.kv_per_token_gib * opts.max_batch_total_tokens:.1f} GiB but only room for "
                f"{fit.free_tokens} tokens is left on {instance.name} after {model.id}'s "
                f"weights; {hint}",
            )
        ]

    where = (
        f"{instance.name} has {instance.total_gpu_memory_gib} GiB"
        if instance.is_gpu
        else (f"{instance.name} has {instance.memory_gib} GiB of RAM")
    )
    if instance.is_gpu and fit.devices < instance.gpu_count:
        where += f" ({fit.devices} of its {instance.gpu_count} GPUs used)"
    needs = (
        f"{model.id} needs ~{fit.required_gib:.0f} GiB of {'GPU ' if instance.is_gpu else ''}"
        f"memory in {fit.precision} (weights {fit.weights_gib:.1f} GiB, KV cache "
        f"{fit.kv_per_token_gib * fit.required_tokens:.1f} GiB for {fit.required_tokens} "
        f"tokens, runtime {fit.overhead_gib:.1f} GiB) but {where}, "
        f"{fit.available_gib:.1f} usable"
    )
    field = "hosting.instance_type"
    fixes: list[str] = []
    if (
        isinstance(spec.hosting, DedicatedHosting)
        and degree is not None
        and degree < instance.gpu_count
    ):
        more = default_parallel_degree(model, instance.gpu_count)
        if more > degree and sizing.on_gpu(instance, more).fits:
            field = "hosting.num_gpus"
            fixes.append(f"set hosting.num_gpus to {more}")
    if isinstance(spec.hosting, SharedHosting):
        per_copy = _min_fitting_degree(sizing, instance)
        if per_copy is not None:
            field = "hosting.accelerators"
            fixes.append(f"set hosting.accelerators to {per_copy}")
    fixes += _alternatives(
        spec, sizing, degree if isinstance(spec.hosting, SharedHosting) else None
    )
    return [FieldIssue(field, f"{needs}; {' or '.join(fixes) if fixes else _no_fix(sizing)}")]


def _min_fitting_degree(sizing: _Sizing, instance: InstanceType) -> int | None:
    degree = 2
    while degree <= instance.gpu_count:
        if valid_parallel_degree(sizing.model, degree) and sizing.on_gpu(instance, degree).fits:
            return degree
        degree *= 2
    return None


def _alternatives(spec: DeploymentSpec, sizing: _Sizing, degree: int | None) -> list[str]:
    """'use <cheapest instance that fits>' and, for 16-bit weights, a 4-bit option."""
    fixes: list[str] = []
    best = _cheapest_fit(sizing, degree)
    if best is not None and best.instance is not None:
        fixes.append(f"use {best.instance.describe()}")
    info = engines.traits(spec.engine.name)
    if spec.engine.options.quantization is None and "awq" in info.quantizations:
        quantized = _cheapest_fit(sizing.with_quantization("awq"), degree)
        if quantized is not None and quantized.instance is not None:
            fixes.append(
                "engine.options.quantization 'awq' (with an AWQ checkpoint of the model) on "
                f"{quantized.instance.describe()}"
            )
    return fixes


def _no_fix(sizing: _Sizing) -> str:
    return (
        "no instance type llmhost knows fits it; lower engine.options.max_total_tokens "
        "or use a smaller model"
    )


def _nothing_fits_issue(spec: DeploymentSpec, sizing: _Sizing, degree: int | None) -> FieldIssue:
    largest = _largest_gpu_instance()
    fixed = degree if isinstance(spec.hosting, SharedHosting) else None
    fit = _fit_on(sizing, largest, fixed if fixed and fixed <= largest.gpu_count else None)
    fixes = _alternatives(spec, sizing, fixed)
    opts = spec.engine.options
    # Name the field whose change helps most: more GPUs per copy, then the token budget
    # the user raised, then the precision.
    more = _min_fitting_degree(sizing, largest) if fixed else None
    if more is not None:
        field = "hosting.accelerators"
        fixes.insert(0, f"raise hosting.accelerators to {more}")
    elif fit.weights_fit and opts.max_batch_total_tokens is not None:
        field = "engine.options.max_batch_total_tokens"
        fixes.insert(0, f"lower it to {fit.free_tokens // TOKEN_ROUNDING * TOKEN_ROUNDING}")
    elif fit.weights_fit and opts.max_total_tokens is not None:
        field = "engine.options.max_total_tokens"
        fixes.insert(0, "lower it")
    elif fixed:
        field = "hosting.accelerators"
    else:
        field = "engine.options.quantization"
    if not fixes:
        fixes = [_no_fix(sizing)]
    return FieldIssue(
        field,
        f"no instance type llmhost knows fits {sizing.model.id} in {sizing.precision}: it "
        f"needs ~{fit.required_gib:.0f} GiB and the largest, {largest.describe()}, has "
        f"{fit.available_gib:.0f} GiB usable on {fit.devices} GPU(s); {' or '.join(fixes)}",
    )


def _precision_issues(spec: DeploymentSpec, instance: InstanceType) -> list[FieldIssue]:
    opts = spec.engine.options
    issues: list[FieldIssue] = []
    if not instance.is_gpu:
        return issues
    if opts.dtype == "bfloat16" and not instance.supports_bfloat16:
        issues.append(
            FieldIssue(
                "engine.options.dtype",
                f"{instance.name}'s {instance.gpu_model} GPUs have no bfloat16 support; use "
                "'float16' or an ml.g5, ml.g6 or newer instance type",
            )
        )
    if opts.quantization == "fp8" and not instance.supports_fp8:
        issues.append(
            FieldIssue(
                "engine.options.quantization",
                f"fp8 needs an Ampere or newer GPU and {instance.name} has "
                f"{instance.gpu_model}; use 'awq', 'gptq' or 'eetq', or an ml.g6 or newer "
                "instance type",
            )
        )
    return issues


def _copies_per_instance(hosting: SharedHosting, instance: InstanceType) -> int:
    by_gpu = instance.gpu_count // hosting.accelerators
    by_memory = (instance.memory_gib * 1024) // hosting.memory_mb
    by_cpu = int(instance.vcpus // hosting.cpus) if hosting.cpus else by_gpu
    return int(max(0, min(by_gpu, by_memory, by_cpu)))


def _pool_issues(
    spec: DeploymentSpec, sizing: _Sizing, instance: InstanceType | None, degree: int | None
) -> list[FieldIssue]:
    hosting = spec.hosting
    assert isinstance(hosting, SharedHosting)
    if instance is None:
        best = _cheapest_fit(sizing, degree)
        instance = best.instance if best else None
    if instance is None:
        return []
    per_instance = _copies_per_instance(hosting, instance)
    if per_instance == 0:
        return []  # accelerators/memory/cpus above the instance are reported elsewhere
    wanted = max(spec.scaling.max_capacity, hosting.copies)
    needed = math.ceil(wanted / per_instance)
    if needed <= hosting.pool_max_instances:
        return []
    return [
        FieldIssue(
            "hosting.pool_max_instances",
            f"{wanted} copies at {per_instance} per {instance.name} need {needed} pool "
            f"instances but the pool may grow to {hosting.pool_max_instances}; raise "
            f"hosting.pool_max_instances to {needed} or lower scaling.max_capacity",
        )
    ]


def _serverless_issues(spec: DeploymentSpec, model: CatalogModel | None) -> list[FieldIssue]:
    hosting = spec.hosting
    assert isinstance(hosting, ServerlessHosting)
    if model is None or spec.engine.name != "hf-inference":
        return []  # unknown size, or already rejected for needing a GPU
    issues = _context_issues(spec, model)
    tokens = _requested_tokens(spec, model)
    sizing = _sizing(spec, model, tokens)
    fit = _host_fit(
        model,
        hosting.memory_mb / 1024,
        None,
        sizing.bytes_per_param,
        sizing.required_tokens,
        sizing.precision,
    )
    if fit.fits:
        return issues
    needed_mb = math.ceil(fit.required_gib * 1024)
    bigger = next((mb for mb in _serverless_sizes() if mb >= needed_mb), None)
    fix = (
        f"raise hosting.memory_mb to {bigger}"
        if bigger is not None
        else "serverless endpoints have at most 6144 MB: use a smaller model, or hosting.kind "
        "'dedicated' (e.g. on ml.m5.2xlarge or a GPU instance type)"
    )
    issues.append(
        FieldIssue(
            "hosting.memory_mb",
            f"{model.id} needs ~{needed_mb} MB in {fit.precision} (weights "
            f"{fit.weights_gib * 1024:.0f} MB + runtime {CPU_RUNTIME_GIB * 1024:.0f} MB) but "
            f"the endpoint has {hosting.memory_mb} MB; {fix}",
        )
    )
    return issues


def _serverless_sizes() -> tuple[int, ...]:
    from llmhost.specs import SERVERLESS_MEMORY_MB

    return SERVERLESS_MEMORY_MB


# ---------------------------------------------------------------------------------- plan


def plan(spec: DeploymentSpec) -> Plan:
    """Decide instance type, GPUs, token limits and cost for a valid spec.

    Never raises for a spec that passed validation: when something cannot be estimated
    (an unknown model), the plan says so in ``notes`` and leaves the engine to decide.
    """
    model = catalog.lookup(spec.catalog_id)
    tokens = _requested_tokens(spec, model)
    notes = _model_notes(spec, model)
    if isinstance(spec.hosting, ServerlessHosting):
        return _serverless_plan(spec, model, tokens, notes)

    hosting = spec.hosting
    degree = _requested_degree(hosting)
    fit: _Fit | None = None
    if model is not None:
        sizing = _sizing(spec, model, tokens)
        if hosting.instance_type is not None and instances.get(hosting.instance_type):
            instance = instances.get(hosting.instance_type)
            assert instance is not None
            fit = _fit_on(sizing, instance, degree)
        else:
            fit = _cheapest_fit(sizing, degree)
            if fit is None:
                largest = _largest_gpu_instance()
                fit = _fit_on(sizing, largest, None)
                notes.append(
                    f"{model.id} fits on no known instance type; planned on the largest, "
                    f"{largest.name}, which will fail to load it"
                )
            else:
                notes.append(f"chose {_describe(fit)}, the cheapest instance type it fits on")
        instance = fit.instance
        num_gpus = fit.devices
    else:
        name = hosting.instance_type or DEFAULT_UNKNOWN_INSTANCE
        instance = instances.get(name)
        gpus = instance.gpu_count if instance else (degree or 1)
        if not engines.traits(spec.engine.name).shards:
            gpus = min(gpus, 1)
        num_gpus = degree or default_parallel_degree(None, gpus)
        if hosting.instance_type is None:
            notes.append(
                f"planned on {name} by default because the model's size is unknown; set "
                "hosting.instance_type to choose"
            )
    assert instance is not None or hosting.instance_type is not None
    instance_name = instance.name if instance else str(hosting.instance_type)

    if isinstance(hosting, SharedHosting):
        num_gpus = hosting.accelerators
        if hosting.instance_type is None:
            notes.append(
                f"the pool instance type was chosen for this model ({instance_name}); set "
                f"hosting.instance_type so every deployment in pool '{hosting.pool}' agrees"
            )
    elif instance is not None and instance.is_gpu and 0 < num_gpus < instance.gpu_count:
        if not engines.traits(spec.engine.name).shards:
            why = f"{spec.engine.name} runs a model on one GPU"
        elif degree is not None:
            why = "as hosting.num_gpus asks"
        elif model is not None:
            why = (
                f"{model.id}'s {model.num_attention_heads} attention heads do not split "
                "evenly over more"
            )
        else:
            why = "tensor parallelism needs a power of two"
        notes.append(f"uses {num_gpus} of {instance_name}'s {instance.gpu_count} GPUs: {why}")
    if instance is not None and not instance.is_gpu:
        num_gpus = 0

    limits = _limits(spec, tokens, fit)
    notes += _token_notes(spec, limits)
    memory = _memory_estimate(fit, limits) if fit is not None else None
    cost, count = _instance_cost(spec, instance, notes)
    return Plan(
        deployment=spec.name,
        kind=hosting.kind,
        engine=spec.engine.name,
        model=model.id if model else None,
        instance_type=instance_name,
        instance_count=count,
        num_gpus=num_gpus,
        memory=memory,
        tokens=limits,
        cost=cost,
        notes=tuple(notes),
    )


def _describe(fit: _Fit) -> str:
    assert fit.instance is not None
    gpus = f", {fit.devices} GPU(s)" if fit.devices else ""
    return f"{fit.instance.describe()}{gpus}"


def _memory_estimate(fit: _Fit, limits: TokenLimits) -> MemoryEstimate:
    tokens = limits.max_batch_total_tokens or fit.required_tokens
    kv = fit.kv_per_token_gib * tokens
    device: Device = "gpu" if fit.devices else ("cpu" if fit.instance else "serverless")
    return MemoryEstimate(
        device=device,
        devices=fit.devices,
        precision=fit.precision,
        weights_gib=round(fit.weights_gib, 2),
        kv_cache_gib=round(kv, 2),
        overhead_gib=round(fit.overhead_gib, 2),
        total_gib=round(fit.weights_gib + fit.overhead_gib + kv, 2),
        available_gib=round(fit.available_gib, 2),
    )


def _instance_cost(
    spec: DeploymentSpec, instance: InstanceType | None, notes: list[str]
) -> tuple[Cost, int]:
    hosting = spec.hosting
    scaling = spec.scaling
    price = instance.price_per_hour if instance else 0.0
    if instance is None:
        notes.append("the instance type has no known price: costs show $0")
    if isinstance(hosting, SharedHosting):
        per_instance = max(1, _copies_per_instance(hosting, instance)) if instance else 1
        count = math.ceil(hosting.copies / per_instance)
        low = math.ceil(scaling.min_capacity / per_instance)
        high = math.ceil(max(scaling.max_capacity, hosting.copies) / per_instance)
        basis = (
            f"pool instances needed for this model's copies ({per_instance} per instance) at "
            f"{instances.PRICE_REGION} on-demand prices; the pool's own minimum of "
            f"{hosting.pool_min_instances} instance(s) is shared by all its deployments"
        )
    else:
        assert isinstance(hosting, DedicatedHosting)
        count = hosting.instance_count
        low = scaling.min_capacity
        high = max(scaling.max_capacity, hosting.instance_count)
        basis = f"{instances.PRICE_REGION} on-demand real-time inference prices"
        if low == 0:
            notes.append(
                "at zero capacity the endpoint is deleted (sleeping) and costs nothing; "
                "waking it takes 10-30 minutes"
            )
    return _cost(price * low, price * high, basis), count


def _cost(hourly_min: float, hourly_max: float, basis: str) -> Cost:
    return Cost(
        hourly_min=round(hourly_min, 4),
        hourly_max=round(hourly_max, 4),
        monthly_min=round(hourly_min * HOURS_PER_MONTH, 2),
        monthly_max=round(hourly_max * HOURS_PER_MONTH, 2),
        basis=basis,
    )


def _serverless_plan(
    spec: DeploymentSpec, model: CatalogModel | None, tokens: _Tokens, notes: list[str]
) -> Plan:
    hosting = spec.hosting
    assert isinstance(hosting, ServerlessHosting)
    gb = hosting.memory_mb / 1024
    provisioned = hosting.provisioned_concurrency or 0
    per_hour_pc = provisioned * gb * SERVERLESS_PROVISIONED_PRICE_PER_GB_SECOND * 3600
    per_hour_busy = hosting.max_concurrency * gb * SERVERLESS_PRICE_PER_GB_SECOND * 3600
    cost = _cost(
        per_hour_pc,
        per_hour_pc + per_hour_busy,
        f"serverless: ${SERVERLESS_PRICE_PER_GB_SECOND:.7f} per GB-second of inference "
        f"and ${SERVERLESS_PROVISIONED_PRICE_PER_GB_SECOND:.7f} per GB-second of "
        f"provisioned concurrency ({instances.PRICE_REGION}); the maximum assumes all "
        f"{hosting.max_concurrency} concurrent slots busy all hour",
    )
    notes.append(
        "serverless endpoints cost nothing while idle"
        + (" apart from provisioned concurrency" if provisioned else "")
        + "; the first request after idling waits for a cold start, and requests are "
        "limited to 60 s and 4 MB"
    )
    memory = None
    if model is not None:
        sizing = _sizing(spec, model, tokens)
        fit = _host_fit(
            model, gb, None, sizing.bytes_per_param, sizing.required_tokens, sizing.precision
        )
        memory = _memory_estimate(fit, TokenLimits(None, None, None, None))
    limits = _limits(spec, tokens, None)
    notes += _token_notes(spec, limits)
    return Plan(
        deployment=spec.name,
        kind="serverless",
        engine=spec.engine.name,
        model=model.id if model else None,
        instance_type=None,
        instance_count=0,
        num_gpus=0,
        memory=memory,
        tokens=limits,
        cost=cost,
        notes=tuple(notes),
    )


def _model_notes(spec: DeploymentSpec, model: CatalogModel | None) -> list[str]:
    notes: list[str] = []
    if model is None:
        if isinstance(spec.model, ModelPackageSource):
            notes.append(
                "a model package brings its own container: sizing assumed nothing; check "
                "the listing's supported instance types"
            )
        else:
            notes.append(
                f"'{spec.catalog_id or spec.model.kind}' is not in llmhost's catalog: sizing "
                "assumed nothing about its memory, and token limits are left to the engine "
                "unless engine.options sets them"
            )
        return notes
    if model.gated and isinstance(spec.model, HubSource) and spec.model.token_secret_arn is None:
        notes.append(
            f"{model.hf_id} is gated on the Hugging Face Hub: set model.token_secret_arn to a "
            "secret holding a token whose account accepted its licence, or the download fails"
        )
    if model.license.startswith("cc-by-nc"):
        notes.append(f"{model.id} is licensed {model.license}: not for commercial use")
    if model.is_moe:
        notes.append(
            f"{model.id} is a mixture of experts: all {model.params_b:g}B parameters must fit "
            f"in memory, though each token only runs through {model.active_params_b:g}B"
        )
    return notes


def _token_notes(spec: DeploymentSpec, limits: TokenLimits) -> list[str]:
    if limits.max_input_tokens is None or limits.max_total_tokens is None:
        return []
    room = limits.max_total_tokens - limits.max_input_tokens
    max_new = spec.generation.max_new_tokens
    if max_new > room:
        return [
            f"generation.max_new_tokens ({max_new}) is above the {room} tokens left after a "
            "full-length prompt; answers to the longest prompts will be cut short"
        ]
    return []
