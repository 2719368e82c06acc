"""The plan for a valid spec: instance type, GPUs, token limits and cost (pure).

Models missing from ``llmhost.catalog`` are not sized: nothing is assumed about them, and
the plan says so in its notes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from llmhost import catalog, engines, instances
from llmhost.catalog import CatalogModel
from llmhost.instances import HOURS_PER_MONTH, InstanceType
from llmhost.sizing.fit import (
    DEFAULT_PREFILL_TOKENS,
    TOKEN_ROUNDING,
    Fit,
    RequestedTokens,
    cheapest_fit,
    copies_per_instance,
    default_parallel_degree,
    fit_on,
    host_fit,
    largest_gpu_instance,
    requested_degree,
    requested_tokens,
    sizing_of,
)
from llmhost.specs import (
    AsyncHosting,
    DedicatedHosting,
    DeploymentSpec,
    HubSource,
    ModelPackageSource,
    ServerlessHosting,
    SharedHosting,
)

# Serverless Inference, us-east-1: on-demand duration is $0.0000200 per second per GB of
# memory (1 GB = 1024 MB); provisioned concurrency is billed per GB-second while it is
# provisioned. Both from the SageMaker pricing page (see instances.PRICE_SOURCE); the
# provisioned-concurrency rate is the less certain of the two.
SERVERLESS_PRICE_PER_GB_SECOND = 0.0000200
SERVERLESS_PROVISIONED_PRICE_PER_GB_SECOND = 0.0000048

# Used when the model's size is unknown and the spec names no instance type.
DEFAULT_UNKNOWN_INSTANCE = "ml.g5.2xlarge"

HostingKind = Literal["dedicated", "shared", "serverless", "async"]
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


# ------------------------------------------------------------------------- token limits


def _limits(spec: DeploymentSpec, tokens: RequestedTokens, fit: Fit | None) -> TokenLimits:
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


# ---------------------------------------------------------------------------------- plan


def plan(spec: DeploymentSpec) -> Plan:
    """Decide instance type, GPUs, token limits and cost for a valid spec.

    Never raises for a spec that passed validation: when something cannot be estimated
    (an unknown model), the plan says so in ``notes`` and leaves the engine to decide.
    """
    model = catalog.lookup(spec.catalog_id)
    tokens = requested_tokens(spec, model)
    notes = _model_notes(spec, model)
    if isinstance(spec.hosting, ServerlessHosting):
        return _serverless_plan(spec, model, tokens, notes)

    hosting = spec.hosting
    degree = requested_degree(hosting)
    fit: Fit | None = None
    if model is not None:
        sizing = sizing_of(spec, model, tokens)
        if hosting.instance_type is not None and instances.get(hosting.instance_type):
            instance = instances.get(hosting.instance_type)
            assert instance is not None
            fit = fit_on(sizing, instance, degree)
        else:
            fit = cheapest_fit(sizing, degree)
            if fit is None:
                largest = largest_gpu_instance()
                fit = fit_on(sizing, largest, None)
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


def _describe(fit: Fit) -> str:
    assert fit.instance is not None
    gpus = f", {fit.devices} GPU(s)" if fit.devices else ""
    return f"{fit.instance.describe()}{gpus}"


def _memory_estimate(fit: Fit, limits: TokenLimits) -> MemoryEstimate:
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
        per_instance = max(1, copies_per_instance(hosting, instance)) if instance else 1
        count = math.ceil(hosting.copies / per_instance)
        low = math.ceil(scaling.min_capacity / per_instance)
        high = math.ceil(max(scaling.max_capacity, hosting.copies) / per_instance)
        basis = (
            f"pool instances needed for this model's copies ({per_instance} per instance) at "
            f"{instances.PRICE_REGION} on-demand prices; the pool's own minimum of "
            f"{hosting.pool_min_instances} instance(s) is shared by all its deployments"
        )
    elif isinstance(hosting, AsyncHosting):
        count = hosting.instance_count
        low = scaling.min_capacity
        high = max(scaling.max_capacity, hosting.instance_count)
        basis = f"{instances.PRICE_REGION} on-demand asynchronous inference prices"
        if low == 0:
            notes.append(
                "at zero instances the endpoint keeps its queue and costs nothing; the first "
                "queued request brings an instance up (minutes), so jobs wait that long"
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
    spec: DeploymentSpec, model: CatalogModel | None, tokens: RequestedTokens, notes: list[str]
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
        sizing = sizing_of(spec, model, tokens)
        fit = host_fit(
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


def async_concurrency(spec: DeploymentSpec, plan: Plan) -> int:
    """MaxConcurrentInvocationsPerInstance of an async deployment: the spec's, or what one
    instance runs together from its engine's token budget (1 to 1000, SageMaker's bounds)."""
    hosting = spec.hosting
    assert isinstance(hosting, AsyncHosting)
    if hosting.max_concurrent_invocations_per_instance is not None:
        return hosting.max_concurrent_invocations_per_instance
    return max(1, min(1000, engines.copy_capacity_of(spec, plan).concurrency))
