"""Why a spec cannot run as written, in words a user can act on (pure).

Each ``FieldIssue`` names the field to change and a concrete fix: engine support for the
options and model, container images, instance types, GPU counts, context length, GPU and
serverless memory, and shared-pool capacity. The arithmetic is ``llmhost.sizing.fit``.
"""

from __future__ import annotations

import math

from llmhost import catalog, engines, instances
from llmhost.catalog import CatalogModel
from llmhost.errors import FieldIssue, SpecInvalid
from llmhost.field_errors import one_per_field
from llmhost.instances import InstanceType
from llmhost.sizing.fit import (
    CPU_RUNTIME_GIB,
    TOKEN_ROUNDING,
    Sizing,
    cheapest_fit,
    copies_per_instance,
    default_parallel_degree,
    fit_on,
    host_fit,
    largest_gpu_instance,
    min_fitting_degree,
    output_reserve,
    requested_degree,
    requested_tokens,
    sizing_of,
    valid_parallel_degree,
)
from llmhost.specs import (
    AsyncHosting,
    DedicatedHosting,
    DeploymentSpec,
    ModelPackageSource,
    ServerlessHosting,
    SharedHosting,
)


def check_capacity(spec: DeploymentSpec) -> None:
    """Refuse a spec about to be written that cannot run as written (``capacity_issues``).

    Called wherever a spec is written: create, update and plan a deployment. Never on a
    stored spec read back: it was checked when written, and a later release's catalog or
    price list must not make it unreadable. Raises SpecInvalid, one issue per field.
    """
    issues = capacity_issues(spec)
    if issues:
        raise SpecInvalid(one_per_field(issues))


def capacity_issues(spec: DeploymentSpec) -> list[FieldIssue]:
    """Reasons the spec cannot run as written on the hardware it names (or on any).

    Covers engine support for the options and model, instance types, GPU counts, context
    length, GPU and serverless memory, and shared-pool capacity. Each issue names the
    field to change and a concrete fix. Pure; see ``check_capacity`` for who calls it.
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

    degree = requested_degree(hosting)
    issues += _hardware_issues(spec, instance, degree)
    if instance is not None:
        issues += _precision_issues(spec, instance)
    if model is None:
        return issues
    issues += _context_issues(spec, model)
    if degree is not None and not valid_parallel_degree(model, degree):
        field = (
            "hosting.num_gpus"
            if isinstance(hosting, DedicatedHosting | AsyncHosting)
            else "hosting.accelerators"
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

    tokens = requested_tokens(spec, model)
    sizing = sizing_of(spec, model, tokens)
    if instance is not None:
        issues += _memory_issues_on(spec, sizing, instance, degree)
    else:
        best = cheapest_fit(sizing, degree)
        if best is None:
            issues.append(_nothing_fits_issue(spec, sizing, degree))
        elif best.instance is not None:
            issues += _precision_issues(spec, best.instance)
    if not issues and isinstance(hosting, SharedHosting):
        issues += _pool_issues(spec, sizing, instance, degree)
    return issues


def _image_issues(spec: DeploymentSpec, region: str | None = None) -> list[FieldIssue]:
    """engine.version must name a container image llmhost ships (a model package brings its
    own), listed for ``region`` when one is given. Checked for every processor the engine may
    run on: the instance is not chosen yet."""
    from llmhost import images

    if isinstance(spec.model, ModelPackageSource):
        return []
    engine = spec.engine
    processors: tuple[images.Processor, ...] = ("gpu",)
    if engine.name == "hf-inference":
        processors = ("cpu",) if isinstance(spec.hosting, ServerlessHosting) else ("cpu", "gpu")
    for processor in processors:
        try:
            if region is None:
                images.resolve_version(engine.name, engine.version, processor)
            else:
                images.image_uri(engine.name, engine.version, region, processor=processor)
        except images.ImageNotAvailable as missing:
            return [FieldIssue("engine.version", missing.message)]
    return []


def region_issues(spec: DeploymentSpec, region: str) -> list[FieldIssue]:
    """What keeps ``spec`` from being deployed in ``region`` (the stack's): its engine's
    image must be listed there. The spec's own checks know no region; the API adds these."""
    return _image_issues(spec, region)


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
    if (
        isinstance(hosting, DedicatedHosting | AsyncHosting)
        and degree is not None
        and degree > instance.gpu_count
    ):
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
                f"{ctx - output_reserve(ctx, spec.generation.max_new_tokens)}",
            )
        )
    return issues


def _memory_issues_on(
    spec: DeploymentSpec, sizing: Sizing, instance: InstanceType, degree: int | None
) -> list[FieldIssue]:
    if degree is not None and degree > instance.gpu_count:
        return []  # already reported as a GPU-count issue
    fit = fit_on(sizing, instance, degree)
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
        isinstance(spec.hosting, DedicatedHosting | AsyncHosting)
        and degree is not None
        and degree < instance.gpu_count
    ):
        more = default_parallel_degree(model, instance.gpu_count)
        if more > degree and sizing.on_gpu(instance, more).fits:
            field = "hosting.num_gpus"
            fixes.append(f"set hosting.num_gpus to {more}")
    if isinstance(spec.hosting, SharedHosting):
        per_copy = min_fitting_degree(sizing, instance)
        if per_copy is not None:
            field = "hosting.accelerators"
            fixes.append(f"set hosting.accelerators to {per_copy}")
    fixes += _alternatives(
        spec, sizing, degree if isinstance(spec.hosting, SharedHosting) else None
    )
    return [FieldIssue(field, f"{needs}; {' or '.join(fixes) if fixes else _no_fix(sizing)}")]


def _alternatives(spec: DeploymentSpec, sizing: Sizing, degree: int | None) -> list[str]:
    """'use <cheapest instance that fits>' and, for 16-bit weights, a 4-bit option."""
    fixes: list[str] = []
    best = cheapest_fit(sizing, degree)
    if best is not None and best.instance is not None:
        fixes.append(f"use {best.instance.describe()}")
    info = engines.traits(spec.engine.name)
    if spec.engine.options.quantization is None and "awq" in info.quantizations:
        quantized = cheapest_fit(sizing.with_quantization("awq"), degree)
        if quantized is not None and quantized.instance is not None:
            fixes.append(
                "engine.options.quantization 'awq' (with an AWQ checkpoint of the model) on "
                f"{quantized.instance.describe()}"
            )
    return fixes


def _no_fix(sizing: Sizing) -> str:
    return (
        "no instance type llmhost knows fits it; lower engine.options.max_total_tokens "
        "or use a smaller model"
    )


def _nothing_fits_issue(spec: DeploymentSpec, sizing: Sizing, degree: int | None) -> FieldIssue:
    largest = largest_gpu_instance()
    fixed = degree if isinstance(spec.hosting, SharedHosting) else None
    fit = fit_on(sizing, largest, fixed if fixed and fixed <= largest.gpu_count else None)
    fixes = _alternatives(spec, sizing, fixed)
    opts = spec.engine.options
    # Name the field whose change helps most: more GPUs per copy, then the token budget
    # the user raised, then the precision.
    more = min_fitting_degree(sizing, largest) if fixed else None
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


def _pool_issues(
    spec: DeploymentSpec, sizing: Sizing, instance: InstanceType | None, degree: int | None
) -> list[FieldIssue]:
    hosting = spec.hosting
    assert isinstance(hosting, SharedHosting)
    if instance is None:
        best = cheapest_fit(sizing, degree)
        instance = best.instance if best else None
    if instance is None:
        return []
    per_instance = copies_per_instance(hosting, instance)
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
    tokens = requested_tokens(spec, model)
    sizing = sizing_of(spec, model, tokens)
    fit = host_fit(
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
