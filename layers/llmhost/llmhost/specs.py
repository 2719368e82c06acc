"""The declarative deployment spec: what a user wants running, validated before anything exists.

``DeploymentSpec`` is the body of ``POST /v1/deployments`` and the desired state the
reconciler drives SageMaker towards. Field-level rules live on the fields; rules that
relate several fields (an engine that cannot run on a hosting kind, a minimum above a
maximum) live in ``_cross_checks`` and report the dotted path of the field to change.

Whether the model fits the hardware it names, at the catalog's sizes and the price list's
instances, is not the model's to check: those tables change between releases, and a stored
spec is read back as written. Every place that writes a spec also calls
``llmhost.sizing.issues.check_capacity`` (``llmhost.deployments``: create, update, plan); this
module imports neither the sizing package nor the price list.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmhost import limits
from llmhost.errors import FieldIssue, SpecInvalid
from llmhost.field_errors import issues_from_validation_error

# SageMaker resource names: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}. llmhost appends "-<8 hex>"
# to derive model and endpoint-config names, so a deployment name keeps 9 characters free.
NAME_PATTERN = r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,53}$"
NAME_MAX = 54
# ASCII only: "\d" and "\w" also match other scripts' digits and letters, which AWS refuses.
_SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+$", re.ASCII)
# SageMaker's ModelPackageName: a name of at most 63 characters, not ending in a hyphen,
# and an optional version of at most nine digits.
_MODEL_PACKAGE_ARN = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:model-package/"
    r"[a-zA-Z0-9][a-zA-Z0-9-]{0,62}(?<!-)(/\d{1,9})?$",
    re.ASCII,
)
_S3_URI = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$", re.ASCII)
SERVERLESS_MEMORY_MB = limits.SERVERLESS_MEMORY_MB
# SageMaker caps each container environment value (HF_MODEL_ID, HF_MODEL_REVISION) and an
# S3 model data URI at 1024 characters.
_AWS_TEXT_MAX = 1024

DeploymentName = Annotated[
    str,
    Field(
        pattern=NAME_PATTERN,
        max_length=NAME_MAX,
        description="SageMaker-style name: letters, digits and hyphens, at most 54 characters, "
        "starting and ending with a letter or digit.",
        examples=["llama3-8b"],
    ),
]


# Validation context of a spec read back from the registry. Such a spec was fully checked
# when it was written; reading it checks its shape only, not the rules that consult tables a
# later release may change (catalog, price list, AWS limits, time zones), so dropping an
# instance type or a model from those tables never makes stored deployments unreadable.
# Field-level bounds are the stored format: a release that tightens one migrates records.
STORED = {"llmhost_stored": True}


def is_stored(info: ValidationInfo) -> bool:
    """Whether this validation reads a stored record (see ``STORED``)."""
    return bool(info.context and info.context.get("llmhost_stored"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# ----------------------------------------------------------------------------- model sources


class HubSource(_Strict):
    """A model on the Hugging Face Hub, downloaded by the container at startup."""

    kind: Literal["hub"] = "hub"
    model_id: str = Field(
        max_length=_AWS_TEXT_MAX,
        description="Hub repository id, e.g. meta-llama/Llama-3.1-8B-Instruct",
        examples=["mistralai/Mistral-7B-Instruct-v0.2"],
    )
    revision: str | None = Field(
        default=None,
        max_length=_AWS_TEXT_MAX,
        description="Branch, tag or commit; pin a commit for reproducible deploys.",
    )
    token_secret_arn: str | None = Field(
        default=None,
        description="Secrets Manager secret holding a Hugging Face token (gated models).",
    )

    @field_validator("model_id")
    @classmethod
    def _hub_id(cls, value: str) -> str:
        if not _HUB_ID.match(value):
            raise PydanticCustomError(
                "hub_id",
                "must look like 'organization/model' (e.g. 'HuggingFaceH4/zephyr-7b-beta')",
            )
        return value

    @field_validator("token_secret_arn")
    @classmethod
    def _secret_arn(cls, value: str | None) -> str | None:
        if value is not None and not _SECRET_ARN.match(value):
            raise PydanticCustomError(
                "secret_arn",
                "must be a Secrets Manager secret ARN "
                "(arn:aws:secretsmanager:<region>:<account>:secret:<name>)",
            )
        return value


class S3Source(_Strict):
    """Model weights already in S3 (a model.tar.gz or an uncompressed prefix ending in '/')."""

    kind: Literal["s3"]
    uri: str = Field(max_length=_AWS_TEXT_MAX, examples=["s3://my-models/llama3-8b/"])
    model_id: str | None = Field(
        default=None,
        description="Catalog or hub id these weights correspond to, used for sizing "
        "and prompt templates.",
    )

    @field_validator("uri")
    @classmethod
    def _s3(cls, value: str) -> str:
        if not _S3_URI.match(value):
            raise PydanticCustomError("s3_uri", "must be an S3 URI like s3://bucket/prefix/")
        return value


class ModelPackageSource(_Strict):
    """A SageMaker model package, e.g. a Cohere or Llama listing from AWS Marketplace."""

    kind: Literal["model-package"]
    arn: str = Field(
        examples=["arn:aws:sagemaker:us-east-1:865070037744:model-package/cohere-command-r-v1"]
    )

    @field_validator("arn")
    @classmethod
    def _arn(cls, value: str) -> str:
        if not _MODEL_PACKAGE_ARN.match(value):
            raise PydanticCustomError(
                "model_package_arn",
                "must be a SageMaker model package ARN "
                "(arn:aws:sagemaker:<region>:<account>:model-package/<name>[/<version>])",
            )
        return value


def _kind_or(default: str) -> Any:
    """Discriminate on ``kind``, which may be omitted where a default kind exists."""

    def kind(value: Any) -> str:
        if isinstance(value, dict):
            return str(value.get("kind", default))
        return str(getattr(value, "kind", default))

    return Discriminator(kind)


ModelSource = Annotated[
    Annotated[HubSource, Tag("hub")]
    | Annotated[S3Source, Tag("s3")]
    | Annotated[ModelPackageSource, Tag("model-package")],
    _kind_or("hub"),
]

# ----------------------------------------------------------------------------------- engine

Quantization = Literal["awq", "gptq", "bitsandbytes", "bitsandbytes-nf4", "eetq", "fp8"]


class EngineOptions(_Strict):
    max_input_tokens: int | None = Field(default=None, ge=16, le=1_048_576)
    max_total_tokens: int | None = Field(default=None, ge=32, le=1_048_576)
    max_batch_prefill_tokens: int | None = Field(default=None, ge=16)
    max_batch_total_tokens: int | None = Field(default=None, ge=32)
    quantization: Quantization | None = None
    dtype: Literal["float16", "bfloat16"] | None = None
    trust_remote_code: bool = False


class Engine(_Strict):
    name: Literal["tgi", "vllm", "lmi", "hf-inference"] = "tgi"
    version: str | None = Field(
        default=None,
        pattern=r"^\d+(\.\d+){0,2}$",
        description="Container version; default is the newest one llmhost ships URIs for.",
    )
    options: EngineOptions = EngineOptions()


# ---------------------------------------------------------------------------------- hosting


class DedicatedHosting(_Strict):
    """A real-time endpoint of its own, one production variant of GPU instances."""

    kind: Literal["dedicated"] = "dedicated"
    instance_type: str | None = Field(
        default=None,
        pattern=r"^ml\.[a-z0-9-]+\.[a-z0-9]+$",
        description="SageMaker instance type; omitted means the cheapest one the model fits on.",
    )
    instance_count: int = Field(default=1, ge=1, le=64)
    num_gpus: int | None = Field(
        default=None, ge=1, le=16, description="SM_NUM_GPUS; defaults to every GPU of the instance."
    )


class SharedHosting(_Strict):
    """One inference component on a pooled GPU endpoint shared with other deployments."""

    kind: Literal["shared"]
    pool: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX, examples=["gpu-pool"])
    instance_type: str | None = Field(default=None, pattern=r"^ml\.[a-z0-9-]+\.[a-z0-9]+$")
    accelerators: int = Field(default=1, ge=1, le=16, description="GPUs per model copy.")
    # SageMaker's NumberOfCpuCoresRequired starts at a quarter core.
    cpus: float | None = Field(default=None, ge=0.25, le=192, description="CPU cores per copy.")
    memory_mb: int = Field(default=8192, ge=1024, le=2_097_152, description="Host RAM per copy.")
    copies: int = Field(default=1, ge=0, le=64, description="Initial copy count.")
    pool_min_instances: int = Field(default=1, ge=0, le=64)
    pool_max_instances: int = Field(default=2, ge=1, le=64)


class ServerlessHosting(_Strict):
    """SageMaker Serverless Inference: CPU only, 60 s and 4 MB per request, scales to zero."""

    kind: Literal["serverless"]
    memory_mb: int = Field(default=6144, description="1024 to 6144 in steps of 1024.")
    max_concurrency: int = Field(default=5, ge=1, le=200)
    provisioned_concurrency: int | None = Field(default=None, ge=1, le=200)
    # Not a real option: present so a GPU instance type gets a clear error, not "extra field".
    instance_type: str | None = Field(
        default=None, exclude=True, json_schema_extra={"deprecated": True}
    )

    @field_validator("memory_mb")
    @classmethod
    def _memory(cls, value: int) -> int:
        if value not in SERVERLESS_MEMORY_MB:
            raise PydanticCustomError(
                "serverless_memory", "must be one of 1024, 2048, 3072, 4096, 5120 or 6144 (MB)"
            )
        return value


class AsyncHosting(_Strict):
    """A SageMaker asynchronous inference endpoint: requests queue (input and output in S3,
    completion announced on SNS), long generations finish, and instances scale to zero on an
    empty queue (``scaling.min_capacity`` 0)."""

    kind: Literal["async"]
    instance_type: str | None = Field(
        default=None,
        pattern=r"^ml\.[a-z0-9-]+\.[a-z0-9]+$",
        description="SageMaker instance type; omitted means the cheapest one the model fits on.",
    )
    instance_count: int = Field(
        default=1, ge=1, le=64, description="Instances the endpoint starts with (at least 1)."
    )
    num_gpus: int | None = Field(
        default=None, ge=1, le=16, description="SM_NUM_GPUS; defaults to every GPU of the instance."
    )
    # SageMaker's ClientConfig.MaxConcurrentInvocationsPerInstance: 1 to 1000.
    max_concurrent_invocations_per_instance: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Queued requests SageMaker hands one instance at once. Omitted: what one "
        "instance runs together, from its engine's token budget (the sizing plan).",
    )


Hosting = Annotated[
    Annotated[DedicatedHosting, Tag("dedicated")]
    | Annotated[SharedHosting, Tag("shared")]
    | Annotated[ServerlessHosting, Tag("serverless")]
    | Annotated[AsyncHosting, Tag("async")],
    _kind_or("dedicated"),
]

# ---------------------------------------------------------------------------------- scaling

TargetMetric = Literal[
    "invocations-per-copy",
    "concurrent-requests-per-copy",
    "invocations-per-instance",
    "concurrent-requests-per-instance",
    # Serverless with provisioned concurrency only: the share of provisioned environments
    # in use, a fraction (target e.g. 0.5).
    "provisioned-concurrency-utilization",
]


class ScheduleRule(_Strict):
    """A recurring change: scale to a min/max window, or sleep and wake the model."""

    cron: str = Field(
        description="Six-field AWS cron expression, e.g. '0 8 ? * MON-FRI *'.",
        examples=["0 8 ? * MON-FRI *"],
    )
    timezone: str = Field(default="UTC", examples=["Europe/Berlin"])
    action: Literal["scale", "sleep", "wake"] = "scale"
    min_capacity: int | None = Field(default=None, ge=0, le=64)
    max_capacity: int | None = Field(default=None, ge=1, le=64)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        # The grammar Application Auto Scaling and EventBridge Scheduler accept. A stored
        # record is read as written: a delete must never depend on today's limits.
        problem = None if is_stored(info) else limits.cron_problem(value)
        if problem:
            raise PydanticCustomError("cron", "{problem}", {"problem": problem})
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str, info: ValidationInfo) -> str:
        if is_stored(info):
            return value  # the time zone database may change between releases
        if value not in limits.iana_time_zones():
            raise PydanticCustomError(
                "timezone", "must be an IANA time zone such as 'UTC' or 'America/New_York'"
            )
        return value

    @model_validator(mode="after")
    def _scale_needs_bounds(self) -> ScheduleRule:
        if self.action == "scale" and self.min_capacity is None and self.max_capacity is None:
            raise PydanticCustomError(
                "schedule_bounds", "a 'scale' schedule needs min_capacity, max_capacity or both"
            )
        if (
            self.min_capacity is not None
            and self.max_capacity is not None
            and self.min_capacity > self.max_capacity
        ):
            raise PydanticCustomError(
                "schedule_bounds",
                "min_capacity ({lo}) is above max_capacity ({hi})",
                {"lo": self.min_capacity, "hi": self.max_capacity},
            )
        return self


class Scaling(_Strict):
    """Capacity bounds and the policy that moves between them (applied once in service)."""

    min_capacity: int = Field(default=1, ge=0, le=64)
    max_capacity: int = Field(default=1, ge=1, le=64)
    target_metric: TargetMetric = "concurrent-requests-per-copy"
    # Omitted: derived from what one copy runs at once (its engine's token budget), see
    # llmhost.scaling.policy.CopyCapacity; the scale-out cooldown outlasts adding a copy
    # (120 s) plus detection, so copies still starting are not asked for again.
    target_value: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="The metric's target per copy (or instance). Omitted: three quarters "
        "of the requests one copy runs at once, from its engine's token budget (concurrency "
        "metrics); 8 for the invocation metrics.",
    )
    scale_in_cooldown_s: int = Field(default=300, ge=0, le=86_400)
    scale_out_cooldown_s: int = Field(default=180, ge=0, le=86_400)
    scale_to_zero: bool = False
    idle_minutes: int = Field(
        default=30,
        ge=5,
        json_schema_extra={"maximum": limits.IDLE_MINUTES_MAX},
        description="Minutes without invocations before scale to zero; at most "
        f"{limits.IDLE_MINUTES_MAX} (CloudWatch evaluates an alarm over at most one day).",
    )
    schedules: list[ScheduleRule] = Field(default_factory=list, max_length=20)

    @field_validator("idle_minutes")
    @classmethod
    def _idle_alarm_fits(cls, value: int, info: ValidationInfo) -> int:
        if value > limits.IDLE_MINUTES_MAX and not is_stored(info):
            issue = limits.idle_minutes_issue(value)
            raise PydanticCustomError("idle_minutes", "{message}", {"message": issue.message})
        return value


class GenerationDefaults(_Strict):
    max_new_tokens: int = Field(default=512, ge=1, le=32_768)
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.9, gt=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10)
    stop: list[str] = Field(default_factory=list, max_length=8)


# ------------------------------------------------------------------------------------- spec


class DeploymentSpec(_Strict):
    """Everything needed to host one model; the reconciler makes SageMaker match it."""

    name: DeploymentName
    model: ModelSource
    engine: Engine = Engine()
    hosting: Hosting = DedicatedHosting()
    scaling: Scaling = Scaling()
    generation: GenerationDefaults = GenerationDefaults()
    tags: dict[
        Annotated[str, Field(min_length=1, max_length=128)], Annotated[str, Field(max_length=256)]
    ] = Field(default_factory=dict, max_length=40)

    @field_validator("tags")
    @classmethod
    def _own_tags(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(k for k in value if k.startswith(("llmhost:", "aws:")))
        if reserved:
            raise PydanticCustomError(
                "reserved_tag",
                "tag keys starting with 'llmhost:' are set by llmhost (they mark the resources "
                "it may change) and 'aws:' by AWS; rename {keys}",
                {"keys": ", ".join(reserved)},
            )
        return value

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> DeploymentSpec:
        if is_stored(info):
            return self  # checked when it was written
        issues = cross_field_issues(self)
        if issues:
            raise PydanticCustomError(
                "spec_conflict",
                "; ".join(f"{i.field}: {i.message}" for i in issues),
                {"issues": [i.as_dict() for i in issues]},
            )
        return self

    @property
    def catalog_id(self) -> str | None:
        """The id used to look the model up in the catalog, when the source names one."""
        if isinstance(self.model, HubSource):
            return self.model.model_id
        if isinstance(self.model, S3Source):
            return self.model.model_id
        return None


def cross_field_issues(spec: DeploymentSpec) -> list[FieldIssue]:
    """Rules that relate several fields; each issue names the field a user should change.

    Capacity (does the model fit, on which instance) is ``llmhost.sizing.issues``'s."""
    issues: list[FieldIssue] = []
    hosting, engine, scaling = spec.hosting, spec.engine, spec.scaling
    opts = engine.options

    if scaling.min_capacity > scaling.max_capacity:
        issues.append(
            FieldIssue(
                "scaling.min_capacity",
                f"min_capacity ({scaling.min_capacity}) is above max_capacity "
                f"({scaling.max_capacity}); lower it or raise scaling.max_capacity",
            )
        )
    if (
        scaling.min_capacity == 0
        and not scaling.scale_to_zero
        and not isinstance(hosting, AsyncHosting)
    ):
        issues.append(
            FieldIssue(
                "scaling.min_capacity",
                "0 needs scaling.scale_to_zero: true (and idle_minutes); otherwise use 1",
            )
        )
    if (
        opts.max_input_tokens is not None
        and opts.max_total_tokens is not None
        and opts.max_input_tokens >= opts.max_total_tokens
    ):
        issues.append(
            FieldIssue(
                "engine.options.max_input_tokens",
                f"must be below max_total_tokens ({opts.max_total_tokens}) so the model can "
                "generate at least one token",
            )
        )
    if (
        opts.max_batch_prefill_tokens is not None
        and opts.max_input_tokens is not None
        and opts.max_batch_prefill_tokens < opts.max_input_tokens
    ):
        issues.append(
            FieldIssue(
                "engine.options.max_batch_prefill_tokens",
                f"must be at least max_input_tokens ({opts.max_input_tokens}) or the longest "
                "prompt can never be prefilled",
            )
        )
    if (
        opts.max_batch_total_tokens is not None
        and opts.max_total_tokens is not None
        and opts.max_batch_total_tokens < opts.max_total_tokens
    ):
        issues.append(
            FieldIssue(
                "engine.options.max_batch_total_tokens",
                f"must be at least max_total_tokens ({opts.max_total_tokens})",
            )
        )

    if isinstance(hosting, ServerlessHosting):
        if hosting.instance_type is not None:
            issues.append(
                FieldIssue(
                    "hosting.instance_type",
                    f"serverless endpoints run on CPU and take no instance type "
                    f"('{hosting.instance_type}'); remove it, or use hosting.kind 'dedicated' "
                    "or 'shared' for GPU instances",
                )
            )
        if engine.name != "hf-inference":
            issues.append(
                FieldIssue(
                    "engine.name",
                    f"'{engine.name}' needs a GPU, and serverless endpoints have none; use "
                    "engine.name 'hf-inference' for a small CPU model, or a GPU hosting kind",
                )
            )
        if (
            hosting.provisioned_concurrency is not None
            and hosting.provisioned_concurrency > hosting.max_concurrency
        ):
            issues.append(
                FieldIssue(
                    "hosting.provisioned_concurrency",
                    f"must not exceed hosting.max_concurrency ({hosting.max_concurrency})",
                )
            )
    issues.extend(_scaling_issues(spec))
    issues.extend(_async_issues(spec))
    if (
        isinstance(hosting, SharedHosting)
        and hosting.pool_min_instances > hosting.pool_max_instances
    ):
        issues.append(
            FieldIssue(
                "hosting.pool_min_instances",
                f"is above hosting.pool_max_instances ({hosting.pool_max_instances})",
            )
        )
    if isinstance(spec.model, ModelPackageSource) and engine.options != EngineOptions():
        issues.append(
            FieldIssue(
                "engine.options",
                "a model package brings its own container configuration; remove engine.options",
            )
        )
    issues.extend(limits.spec_issues(spec))
    return issues


def _async_issues(spec: DeploymentSpec) -> list[FieldIssue]:
    """An async endpoint scales on its queue: one metric, and zero by its minimum alone."""
    hosting, scaling = spec.hosting, spec.scaling
    if not isinstance(hosting, AsyncHosting):
        return []
    issues: list[FieldIssue] = []
    # The default metric stands for "the queue" (a stored spec spells every default out).
    if scaling.target_metric != Scaling.model_fields["target_metric"].default:
        issues.append(
            FieldIssue(
                "scaling.target_metric",
                f"an async endpoint scales on its queue (ApproximateBacklogSizePerInstance), "
                f"not '{scaling.target_metric}'; remove scaling.target_metric (scaling."
                "target_value sets the queued requests per instance to keep)",
            )
        )
    if scaling.scale_to_zero:
        issues.append(
            FieldIssue(
                "scaling.scale_to_zero",
                "an async endpoint scales to zero instances on an empty queue by itself; "
                "remove scaling.scale_to_zero and set scaling.min_capacity to 0",
            )
        )
    if hosting.instance_count > scaling.max_capacity:
        issues.append(
            FieldIssue(
                "hosting.instance_count",
                f"{hosting.instance_count} is above scaling.max_capacity "
                f"({scaling.max_capacity}); lower it or raise scaling.max_capacity",
            )
        )
    return issues


def _autoscaled(spec: DeploymentSpec) -> bool:
    """Whether the spec gets a scalable target (see lifecycle.desired.wanted_scaling)."""
    scaling, hosting = spec.scaling, spec.hosting
    if isinstance(hosting, ServerlessHosting) and hosting.provisioned_concurrency is None:
        return False
    return scaling.min_capacity != scaling.max_capacity or scaling.scale_to_zero


def _scaling_issues(spec: DeploymentSpec) -> list[FieldIssue]:
    """Scaling rules that depend on the hosting kind."""
    issues: list[FieldIssue] = []
    hosting, scaling = spec.hosting, spec.scaling
    utilization = scaling.target_metric == "provisioned-concurrency-utilization"
    provisioned = isinstance(hosting, ServerlessHosting) and hosting.provisioned_concurrency
    if utilization and not provisioned:
        issues.append(
            FieldIssue(
                "scaling.target_metric",
                "'provisioned-concurrency-utilization' scales a serverless endpoint's "
                "provisioned concurrency; set hosting.provisioned_concurrency on serverless "
                "hosting, or use 'concurrent-requests-per-copy'",
            )
        )
    if utilization and scaling.target_value is not None and scaling.target_value > 1:
        issues.append(
            FieldIssue(
                "scaling.target_value",
                f"{scaling.target_value} is not a utilization: with "
                "'provisioned-concurrency-utilization' it is the fraction of provisioned "
                "concurrency in use, above 0 and at most 1 (e.g. 0.5)",
            )
        )
    if isinstance(hosting, ServerlessHosting) and provisioned and _autoscaled(spec):
        if scaling.min_capacity < 1:
            issues.append(
                FieldIssue(
                    "scaling.min_capacity",
                    "provisioned concurrency autoscales between 1 and hosting.max_concurrency; "
                    "use 1 or more (on-demand capacity above it still scales to zero by itself)",
                )
            )
        if scaling.max_capacity > hosting.max_concurrency:
            issues.append(
                FieldIssue(
                    "scaling.max_capacity",
                    f"{scaling.max_capacity} exceeds hosting.max_concurrency "
                    f"({hosting.max_concurrency}); lower it or raise hosting.max_concurrency",
                )
            )
        default = Scaling()
        keeps_default = (
            scaling.target_metric == default.target_metric
            and scaling.target_value == default.target_value
        )
        if not utilization and not keeps_default:
            issues.append(
                FieldIssue(
                    "scaling.target_metric",
                    f"serverless provisioned concurrency cannot track '{scaling.target_metric}' "
                    f"at {scaling.target_value}; use 'provisioned-concurrency-utilization' with "
                    "scaling.target_value a fraction such as 0.5",
                )
            )
    if not _autoscaled(spec):
        for i, rule in enumerate(scaling.schedules):
            if rule.action == "scale":
                issues.append(
                    FieldIssue(
                        f"scaling.schedules.{i}.action",
                        "a 'scale' schedule changes autoscaling bounds, and this deployment's "
                        "capacity is fixed (scaling.min_capacity == scaling.max_capacity"
                        + (
                            ", no hosting.provisioned_concurrency"
                            if isinstance(hosting, ServerlessHosting)
                            else ""
                        )
                        + "); give it a range (raise scaling.max_capacity) or use 'sleep' and "
                        "'wake' schedules",
                    )
                )
    return issues


class DeploymentPatch(_Strict):
    """A partial update: top-level sections replace the current ones wholesale."""

    name: str | None = Field(
        default=None,
        description="Optional, and only the deployment's current name: names cannot change "
        "(create a new deployment to rename one).",
    )
    model: ModelSource | None = None
    engine: Engine | None = None
    hosting: Hosting | None = None
    scaling: Scaling | None = None
    generation: GenerationDefaults | None = None
    tags: dict[str, str] | None = None

    def apply_to(self, spec: DeploymentSpec) -> DeploymentSpec:
        """Return the spec with this patch applied, re-validated as a whole (capacity aside:
        the writer follows with ``llmhost.sizing.issues.check_capacity``)."""
        if self.name is not None and self.name != spec.name:
            raise SpecInvalid(
                [
                    FieldIssue(
                        "name",
                        f"a deployment's name cannot change ('{spec.name}' to '{self.name}'); "
                        "to rename it, create a new deployment with POST /v1/deployments and "
                        "delete this one (or leave name out of the PATCH)",
                    )
                ]
            )
        merged = spec.model_dump(mode="json")
        changes = self.model_dump(mode="json", exclude_unset=True, exclude_none=True)
        changes.pop("name", None)
        merged.update(changes)
        return parse_spec(merged)


def parse_spec(data: Any) -> DeploymentSpec:
    """Validate a spec from JSON-like data. Raises SpecInvalid naming every bad field.

    Capacity is not checked here: a spec about to be written also goes through
    ``llmhost.sizing.issues.check_capacity``."""
    try:
        return DeploymentSpec.model_validate(data)
    except ValidationError as error:
        raise SpecInvalid(issues_from_validation_error(error)) from None
