"""Memory and fit arithmetic: how much memory a model needs and which instance it fits on (pure).

The estimate, per GPU of a tensor-parallel group of ``n`` GPUs:

    weights   = params * bytes per param (by dtype or quantization) / n
    runtime   = OVERHEAD_FIXED_GIB + OVERHEAD_FRACTION * weights    (CUDA context,
                activations, CUDA graphs, allocator slack)
    KV cache  = 2 (K and V) * layers * KV heads * head size * 2 bytes * tokens, split over
                the GPUs by KV head (a model with fewer KV heads than GPUs repeats them)
    fits when weights + runtime + KV cache ≤ USABLE_GPU_FRACTION * GPU memory

"Tokens" is ``engine.options.max_batch_total_tokens`` when set, else enough for
``DEFAULT_CONCURRENCY`` full-length sequences. What memory is left after weights and
runtime becomes the planned ``max_batch_total_tokens`` (``llmhost.sizing.plan``). Engines
measure the real numbers at startup; this estimate only has to pick an instance that will
work, and to refuse, before anything is created, a deployment that cannot
(``llmhost.sizing.issues``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from llmhost import engines, instances
from llmhost.catalog import CatalogModel
from llmhost.instances import InstanceType
from llmhost.specs import AsyncHosting, DedicatedHosting, DeploymentSpec, SharedHosting

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
class Fit:
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


def gpu_fit(
    model: CatalogModel,
    instance: InstanceType,
    degree: int,
    bytes_per_param: float,
    kv_element_bytes: float,
    required_tokens: int,
    precision: str,
) -> Fit:
    """The model sharded over ``degree`` of the instance's GPUs."""
    weights = weights_gib(model, bytes_per_param)
    per_gpu_weights = weights / degree
    per_gpu_overhead = OVERHEAD_FIXED_GIB + OVERHEAD_FRACTION * per_gpu_weights
    # Each GPU holds ceil(kv_heads / degree) of the KV heads.
    shard = math.ceil(model.num_kv_heads / degree) / model.num_kv_heads
    per_gpu_kv_token = kv_gib_per_token(model, kv_element_bytes) * shard
    usable = instance.gpu_memory_gib * USABLE_GPU_FRACTION
    free = usable - per_gpu_weights - per_gpu_overhead
    return Fit(
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


def host_fit(
    model: CatalogModel,
    memory_gib: float,
    instance: InstanceType | None,
    bytes_per_param: float,
    required_tokens: int,
    precision: str,
) -> Fit:
    """The model in ``memory_gib`` of host RAM (a CPU instance or a serverless container)."""
    weights = weights_gib(model, bytes_per_param)
    kv_token = kv_gib_per_token(model, bytes_per_param)
    free = memory_gib - weights - CPU_RUNTIME_GIB
    return Fit(
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


# --------------------------------------------------------------------- tokens to hold


@dataclass(frozen=True)
class RequestedTokens:
    max_input: int | None
    max_total: int | None
    required_batch: int | None  # KV tokens a fit must hold; None when the model is unknown


def requested_tokens(spec: DeploymentSpec, model: CatalogModel | None) -> RequestedTokens:
    """Per-request limits from the spec, defaulted from the model's context length."""
    opts = spec.engine.options
    max_new = spec.generation.max_new_tokens
    max_input, max_total = opts.max_input_tokens, opts.max_total_tokens

    if model is None:
        if max_total is None and max_input is not None:
            max_total = max_input + max_new
        if max_input is None and max_total is not None:
            max_input = max_total - output_reserve(max_total, max_new)
    elif model.seq2seq:
        # The decoder's output does not share the encoder's context window.
        max_input = max_input or model.context_length
        max_total = max_total or max_input + max_new
    else:
        if max_total is None:
            wanted = max(DEFAULT_MAX_TOTAL_TOKENS, (max_input or 0) + max_new)
            max_total = min(model.context_length, wanted)
        if max_input is None:
            max_input = max_total - output_reserve(max_total, max_new)

    concurrency = DEFAULT_CONCURRENCY if engines.traits(spec.engine.name).continuous_batching else 1
    if opts.max_batch_total_tokens is not None:
        required: int | None = opts.max_batch_total_tokens
    elif max_total is not None:
        required = max_total * concurrency
    else:
        required = None
    return RequestedTokens(max_input, max_total, required)


def output_reserve(max_total: int, max_new: int) -> int:
    """Tokens kept free for the answer: the generation default or a quarter of the window,
    whichever is larger, but never more than half, so prompts (RAG context) get the rest."""
    return min(max(max_new, max_total // 4), max_total // 2)


# ------------------------------------------------------------------------ choosing hardware


@dataclass(frozen=True)
class Sizing:
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
        if self.shared_copy is not None and copies_per_instance(self.shared_copy, instance) < 1:
            return False
        if not instance.is_gpu:
            return True
        if self.dtype == "bfloat16" and not instance.supports_bfloat16:
            return False
        return not (self.quantization == "fp8" and not instance.supports_fp8)

    def on_gpu(self, instance: InstanceType, degree: int) -> Fit:
        return gpu_fit(
            self.model,
            instance,
            degree,
            self.bytes_per_param,
            self.kv_element_bytes,
            self.required_tokens,
            self.precision,
        )

    def on_host(self, instance: InstanceType) -> Fit:
        usable = instance.memory_gib * USABLE_HOST_FRACTION
        return host_fit(
            self.model, usable, instance, self.bytes_per_param, self.required_tokens, self.precision
        )

    def with_quantization(self, quantization: str) -> Sizing:
        return replace(
            self,
            bytes_per_param=WEIGHT_BYTES[quantization],
            kv_element_bytes=KV_BYTES,
            precision=precision_name(self.engine, quantization, None),
            dtype=None,
            quantization=quantization,
        )


def sizing_of(spec: DeploymentSpec, model: CatalogModel, tokens: RequestedTokens) -> Sizing:
    """What the fit of ``spec`` depends on, for its catalog ``model``."""
    opts = spec.engine.options
    per_param = weight_bytes_per_param(spec.engine.name, opts.quantization)
    return Sizing(
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


def fit_on(sizing: Sizing, instance: InstanceType, degree: int | None) -> Fit:
    """The fit on a given instance; ``degree`` None means the default parallel degree."""
    if not instance.is_gpu:
        return sizing.on_host(instance)
    if not engines.traits(sizing.engine).shards:
        return sizing.on_gpu(instance, 1)
    if degree is None:
        degree = default_parallel_degree(sizing.model, instance.gpu_count)
    return sizing.on_gpu(instance, degree)


def cheapest_fit(sizing: Sizing, degree: int | None) -> Fit | None:
    """The cheapest known instance the model fits on (None if none does).

    ``degree`` fixes the GPUs per replica (shared accelerators, or hosting.num_gpus);
    CPU instances are candidates only for engines that run on CPU.
    """
    info = engines.traits(sizing.engine)
    candidates = list(instances.gpu_instances())
    if not info.needs_gpu and degree is None:
        candidates += instances.cpu_instances()
    fits: list[tuple[float, int, int, Fit]] = []
    for instance in candidates:
        if (degree is not None and instance.gpu_count < degree) or not sizing.runs_on(instance):
            continue
        fit = fit_on(sizing, instance, degree)
        if fit.fits:
            # Cheapest first; at equal price fewer GPUs, then more room for the KV cache.
            fits.append((instance.price_per_hour, instance.gpu_count, -fit.free_tokens, fit))
    if not fits:
        return None
    return min(fits, key=lambda row: row[:3])[3]


def largest_gpu_instance() -> InstanceType:
    """The known GPU instance with the most GPU memory (the cheaper one at a tie)."""
    return max(instances.gpu_instances(), key=lambda t: (t.total_gpu_memory_gib, -t.price_per_hour))


def requested_degree(hosting: DedicatedHosting | SharedHosting | AsyncHosting) -> int | None:
    """GPUs per replica the spec fixes (None: the default for the instance)."""
    if isinstance(hosting, SharedHosting):
        return hosting.accelerators
    return hosting.num_gpus


def min_fitting_degree(sizing: Sizing, instance: InstanceType) -> int | None:
    """The fewest GPUs (2, 4, ...) of ``instance`` one replica fits on; None if none."""
    degree = 2
    while degree <= instance.gpu_count:
        if valid_parallel_degree(sizing.model, degree) and sizing.on_gpu(instance, degree).fits:
            return degree
        degree *= 2
    return None


def copies_per_instance(hosting: SharedHosting, instance: InstanceType) -> int:
    """Copies of a shared deployment one pool instance holds, by GPUs, memory and CPUs."""
    by_gpu = instance.gpu_count // hosting.accelerators
    by_memory = (instance.memory_gib * 1024) // hosting.memory_mb
    by_cpu = int(instance.vcpus // hosting.cpus) if hosting.cpus else by_gpu
    return int(max(0, min(by_gpu, by_memory, by_cpu)))
