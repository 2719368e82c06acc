"""The SageMaker resources a spec asks for, with deterministic names (pure code).

Names carry a short hash of everything that shapes the resource, so a changed spec gets
new model and endpoint-config names (SageMaker cannot modify them in place), an unchanged
spec always maps to the same names (so retries are idempotent), and leftovers of older
generations are recognisable by pattern and can be collected after a crash.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from llmhost.specs import (
    AsyncHosting,
    DedicatedHosting,
    DeploymentSpec,
    HubSource,
    ServerlessHosting,
    SharedHosting,
)

if TYPE_CHECKING:
    from llmhost.scaling.policy import ScalingPolicy
    from llmhost.sizing.plan import Plan


def wanted_schedules(
    spec: DeploymentSpec,
) -> tuple[tuple[str, str, str, int | None, int | None], ...]:
    """The spec's 'scale' schedules as Application Auto Scaling scheduled actions.

    Sleep and wake rules become EventBridge Scheduler schedules (``wanted_sleep_wake``).
    """
    return tuple(
        (
            f"llmhost-{spec.name}-schedule-{i}",
            f"cron({rule.cron})",
            rule.timezone,
            rule.min_capacity,
            rule.max_capacity,
        )
        for i, rule in enumerate(spec.scaling.schedules)
        if rule.action == "scale"
    )


def wanted_scaling(spec: DeploymentSpec, plan: Plan | None = None) -> ScalingPolicy | None:
    """The autoscaling a spec asks for, or None when its capacity is fixed.

    ``plan``: the spec's sizing plan, whose token budget gives a copy's capacity (the
    default target, and the overload alarm for an engine that refuses past its queue). Pass
    it for anything deployed or compared with what is deployed; without it the benchmark's
    copy is assumed (enough to know whether there is a policy at all).

    A fixed min == max without scale to zero needs no policy. Serverless endpoints scale
    their on-demand capacity themselves; only their provisioned concurrency is autoscaled
    (``sagemaker:variant:DesiredProvisionedConcurrency``), and only when the hosting asks
    for some. Their target metric is always provisioned concurrency utilization: a spec
    that keeps the default per-copy metric tracks it at ``PROVISIONED_UTILIZATION_TARGET``.
    """
    scaling = spec.scaling
    if scaling.min_capacity == scaling.max_capacity and not scaling.scale_to_zero:
        return None
    from llmhost import engines
    from llmhost.scaling.policy import BENCHMARK_COPY, async_policy, policy_from_spec

    if isinstance(spec.hosting, AsyncHosting):
        from llmhost.sizing.plan import async_concurrency

        concurrency = (
            spec.hosting.max_concurrent_invocations_per_instance or BENCHMARK_COPY.concurrency
            if plan is None
            else async_concurrency(spec, plan)
        )
        return async_policy(scaling, concurrency)

    copy = BENCHMARK_COPY if plan is None else engines.copy_capacity_of(spec, plan)
    if isinstance(spec.hosting, ServerlessHosting):
        if spec.hosting.provisioned_concurrency is None:
            return None
        if scaling.target_metric != "provisioned-concurrency-utilization":
            # specs.py rejects any other explicit metric for serverless: this is the default.
            scaling = scaling.model_copy(
                update={
                    "target_metric": "provisioned-concurrency-utilization",
                    "target_value": PROVISIONED_UTILIZATION_TARGET,
                }
            )
        return policy_from_spec(scaling, copy)

    policy = policy_from_spec(scaling, copy)
    per_copy = policy.dimension.startswith("sagemaker:inference-component")
    if per_copy != (spec.hosting.kind == "shared"):
        # The metric names the other hosting kind's dimension: use this kind's.
        metric = {
            "invocations-per-copy": "invocations-per-instance",
            "concurrent-requests-per-copy": "concurrent-requests-per-instance",
            "invocations-per-instance": "invocations-per-copy",
            "concurrent-requests-per-instance": "concurrent-requests-per-copy",
        }[scaling.target_metric]
        policy = policy_from_spec(scaling.model_copy(update={"target_metric": metric}), copy)
    return policy


# Half of the provisioned environments busy, as in AWS's example for serverless endpoints:
# requests above provisioned concurrency spill over to on-demand capacity with cold starts,
# so the target leaves room for a burst while new environments are provisioned.
PROVISIONED_UTILIZATION_TARGET = 0.5


@dataclass(frozen=True)
class SleepWakeSchedule:
    """One EventBridge Scheduler schedule that sleeps or wakes a deployment.

    ``name`` is ``<deployment>-<8 hex>``, the hash covering cron, time zone and action: a
    changed rule is a new schedule (the old one is deleted), and ``generation_pattern``
    finds every schedule of a deployment in llmhost's schedule group (at most 63 chars,
    within Scheduler's 64).
    """

    name: str
    deployment: str
    expression: str  # "cron(<six fields>)"
    timezone: str  # IANA name
    action: Literal["sleep", "wake"]

    def target_input(self) -> str:
        """The event the scaling function receives (contract event 3), as JSON text."""
        return json.dumps(
            {
                "source": "llmhost.schedule",
                "deployment": self.deployment,
                "action": self.action,
                "schedule": self.name,
            }
        )


@dataclass(frozen=True)
class ScheduleTarget:
    """Where sleep/wake schedules live and what they invoke (the reconcile function's
    settings). An empty field means that setting is not configured."""

    group: str = ""
    function_arn: str = ""
    role_arn: str = ""
    # Optional: where Scheduler parks a run it could not deliver (the hook's queue).
    dead_letter_arn: str = ""

    @property
    def missing(self) -> tuple[str, ...]:
        """The environment variables still needed before schedules can be created."""
        settings = {
            "SCHEDULE_GROUP": self.group,
            "SCALING_FUNCTION_ARN": self.function_arn,
            "SCHEDULER_ROLE_ARN": self.role_arn,
        }
        return tuple(name for name, value in settings.items() if not value)


def wanted_sleep_wake(spec: DeploymentSpec) -> tuple[SleepWakeSchedule, ...]:
    """The spec's 'sleep' and 'wake' rules as Scheduler schedules, sorted by name.

    Identical rules collapse into one schedule. Independent of autoscaling: a fixed-capacity
    endpoint with a nightly sleep window is the classic use.
    """
    schedules: dict[str, SleepWakeSchedule] = {}
    for rule in spec.scaling.schedules:
        if rule.action == "scale":
            continue
        name = f"{spec.name}-{short_hash([rule.action, rule.cron, rule.timezone])}"
        schedules[name] = SleepWakeSchedule(
            name=name,
            deployment=spec.name,
            expression=f"cron({rule.cron})",
            timezone=rule.timezone,
            action=rule.action,
        )
    return tuple(schedules[name] for name in sorted(schedules))


VARIANT = "AllTraffic"
# Generous startup windows: large models take many minutes to download and load.
DOWNLOAD_TIMEOUT_S = 1800
STARTUP_TIMEOUT_S = 1800

HostingKind = Literal["dedicated", "shared", "serverless", "async"]


@dataclass(frozen=True)
class AsyncTarget:
    """Where asynchronous endpoints put results and announce them (the reconcile function's
    settings; an empty field is not configured): the stack's jobs bucket and its two SNS
    topics."""

    bucket: str = ""
    success_topic: str = ""
    error_topic: str = ""

    @property
    def missing(self) -> tuple[str, ...]:
        """The environment variables still needed before an async endpoint can be created."""
        settings = {
            "JOBS_BUCKET": self.bucket,
            "ASYNC_SUCCESS_TOPIC_ARN": self.success_topic,
            "ASYNC_ERROR_TOPIC_ARN": self.error_topic,
        }
        return tuple(name for name, value in settings.items() if not value)

    def inference_config(self, max_concurrent: int) -> dict[str, Any]:
        """CreateEndpointConfig's AsyncInferenceConfig: results under ``async/output/``,
        failures under ``async/failure/``, each announced on its topic with the response
        inline (SageMaker includes it up to 128 KB: most chat answers need no S3 read)."""
        return {
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": max_concurrent},
            "OutputConfig": {
                "S3OutputPath": f"s3://{self.bucket}/{ASYNC_OUTPUT_PREFIX}",
                "S3FailurePath": f"s3://{self.bucket}/{ASYNC_FAILURE_PREFIX}",
                "NotificationConfig": {
                    "SuccessTopic": self.success_topic,
                    "ErrorTopic": self.error_topic,
                    "IncludeInferenceResponseIn": [
                        "SUCCESS_NOTIFICATION_TOPIC",
                        "ERROR_NOTIFICATION_TOPIC",
                    ],
                },
            },
        }


ASYNC_INPUT_PREFIX = "async/input/"
ASYNC_OUTPUT_PREFIX = "async/output/"
ASYNC_FAILURE_PREFIX = "async/failure/"


def short_hash(value: Any) -> str:
    """Eight hex digits of a stable hash of JSON-able data."""
    data = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:8]


def generation_pattern(base: str) -> re.Pattern[str]:
    """Names llmhost derives from ``base``: the base, a hyphen and eight hex digits."""
    return re.compile(rf"^{re.escape(base)}-[0-9a-f]{{8}}$")


@dataclass(frozen=True)
class DesiredResources:
    """Names and request bodies (secrets excluded) of what a spec needs in SageMaker."""

    deployment: str
    kind: HostingKind
    model_name: str
    container: dict[str, Any]
    config_name: str
    config_body: dict[str, Any]
    endpoint_name: str
    component_name: str | None = None
    component_spec: dict[str, Any] = field(default_factory=dict)
    copies: int = 1
    token_secret_arn: str | None = None
    scaling: ScalingPolicy | None = None
    # Application Auto Scaling scheduled actions: (name, cron, timezone, min, max).
    schedules: tuple[tuple[str, str, str, int | None, int | None], ...] = ()
    # EventBridge Scheduler schedules for sleep/wake rules, and where they go.
    sleep_wake: tuple[SleepWakeSchedule, ...] = ()
    schedule_target: ScheduleTarget = field(default_factory=ScheduleTarget)
    # Asynchronous endpoints only: where results go (settings missing: nothing is created).
    async_target: AsyncTarget = field(default_factory=AsyncTarget)

    @property
    def scaling_hash(self) -> str | None:
        if self.scaling is None:
            return None
        return short_hash([repr(self.scaling), list(self.schedules)])

    @property
    def metric_dimensions(self) -> dict[str, str]:
        """CloudWatch dimensions of this deployment's SageMaker metrics."""
        if self.component_name:
            return {"InferenceComponentName": self.component_name}
        if self.kind == "async":
            # SageMaker's async metrics (the backlog ones) carry the endpoint only.
            return {"EndpointName": self.endpoint_name}
        return {"EndpointName": self.endpoint_name, "VariantName": VARIANT}

    @property
    def is_shared(self) -> bool:
        return self.kind == "shared"

    @property
    def scaling_dimension(self) -> str:
        """The Application Auto Scaling dimension of this deployment's capacity."""
        if self.component_name:
            return "sagemaker:inference-component:DesiredCopyCount"
        if self.kind == "serverless":
            return "sagemaker:variant:DesiredProvisionedConcurrency"
        return "sagemaker:variant:DesiredInstanceCount"

    @property
    def scaling_resource_id(self) -> str:
        """The Application Auto Scaling resource id of this deployment's capacity."""
        if self.component_name:
            return f"inference-component/{self.component_name}"
        return f"endpoint/{self.endpoint_name}/variant/{VARIANT}"


def desired_resources(
    spec: DeploymentSpec,
    plan: Plan,
    role_arn: str,
    container: dict[str, Any],
    schedule_target: ScheduleTarget | None = None,
    async_target: AsyncTarget | None = None,
) -> DesiredResources:
    """Derive names and bodies from a spec and its sizing plan.

    ``container`` is the CreateModel PrimaryContainer without secrets: the token is read
    from Secrets Manager only when the model is created, and never hashed or stored.
    ``schedule_target`` says where sleep/wake schedules go (None: not configured);
    ``async_target`` where an async endpoint's results go (None: not configured).
    """
    sleep_wake, target = wanted_sleep_wake(spec), schedule_target or ScheduleTarget()
    name = spec.name
    token_arn = spec.model.token_secret_arn if isinstance(spec.model, HubSource) else None
    model_name = f"{name}-{short_hash([container, token_arn, role_arn])}"
    hosting = spec.hosting

    if isinstance(hosting, SharedHosting):
        pool_variant: dict[str, Any] = {
            "VariantName": VARIANT,
            "InstanceType": plan.instance_type,
            "InitialInstanceCount": max(1, hosting.pool_min_instances),
            "ManagedInstanceScaling": {
                "Status": "ENABLED",
                "MinInstanceCount": hosting.pool_min_instances,
                "MaxInstanceCount": hosting.pool_max_instances,
            },
            "RoutingConfig": {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"},
        }
        # The pool's config depends only on the instance type: every deployment in the pool
        # derives the same name, whichever of them creates it first.
        config_name = f"{hosting.pool}-{short_hash([plan.instance_type, role_arn])}"
        compute: dict[str, Any] = {
            "NumberOfAcceleratorDevicesRequired": float(hosting.accelerators),
            "MinMemoryRequiredInMb": hosting.memory_mb,
        }
        if hosting.cpus is not None:
            compute["NumberOfCpuCoresRequired"] = float(hosting.cpus)
        return DesiredResources(
            deployment=name,
            kind="shared",
            model_name=model_name,
            container=container,
            config_name=config_name,
            config_body={
                "EndpointConfigName": config_name,
                "ExecutionRoleArn": role_arn,
                "ProductionVariants": [pool_variant],
            },
            endpoint_name=hosting.pool,
            component_name=name,
            component_spec={
                "ModelName": model_name,
                "ComputeResourceRequirements": compute,
                "StartupParameters": {
                    "ModelDataDownloadTimeoutInSeconds": DOWNLOAD_TIMEOUT_S,
                    "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_TIMEOUT_S,
                },
            },
            copies=hosting.copies,
            token_secret_arn=token_arn,
            scaling=wanted_scaling(spec, plan),
            schedules=wanted_schedules(spec),
            sleep_wake=sleep_wake,
            schedule_target=target,
        )

    if isinstance(hosting, ServerlessHosting):
        serverless: dict[str, Any] = {
            "MemorySizeInMB": hosting.memory_mb,
            "MaxConcurrency": hosting.max_concurrency,
        }
        if hosting.provisioned_concurrency:
            serverless["ProvisionedConcurrency"] = hosting.provisioned_concurrency
        variant: dict[str, Any] = {
            "VariantName": VARIANT,
            "ModelName": model_name,
            "ServerlessConfig": serverless,
        }
        kind: HostingKind = "serverless"
    elif isinstance(hosting, AsyncHosting):
        variant = {
            "VariantName": VARIANT,
            "ModelName": model_name,
            "InstanceType": plan.instance_type,
            "InitialInstanceCount": hosting.instance_count,
            "ModelDataDownloadTimeoutInSeconds": DOWNLOAD_TIMEOUT_S,
            "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_TIMEOUT_S,
        }
        kind = "async"
    else:
        variant = {
            "VariantName": VARIANT,
            "ModelName": model_name,
            "InstanceType": plan.instance_type,
            "InitialInstanceCount": hosting.instance_count,
            "ModelDataDownloadTimeoutInSeconds": DOWNLOAD_TIMEOUT_S,
            "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_TIMEOUT_S,
        }
        kind = "dedicated"
    config_body: dict[str, Any] = {"ProductionVariants": [variant]}
    if kind == "async":
        from llmhost.sizing.plan import async_concurrency

        config_body["AsyncInferenceConfig"] = (async_target or AsyncTarget()).inference_config(
            async_concurrency(spec, plan)
        )
        config_name = f"{name}-{short_hash(config_body)}"
    else:
        config_name = f"{name}-{short_hash(variant)}"
    return DesiredResources(
        deployment=name,
        kind=kind,
        model_name=model_name,
        container=container,
        config_name=config_name,
        config_body={"EndpointConfigName": config_name, **config_body},
        endpoint_name=name,
        token_secret_arn=token_arn,
        scaling=wanted_scaling(spec, plan),
        schedules=wanted_schedules(spec),
        sleep_wake=sleep_wake,
        schedule_target=target,
        async_target=async_target or AsyncTarget(),
    )


def teardown_resources(
    name: str,
    hosting: DedicatedHosting | SharedHosting | ServerlessHosting | AsyncHosting,
    schedule_target: ScheduleTarget | None = None,
) -> DesiredResources:
    """What a delete needs to find and remove a deployment's resources: names only.

    A delete must never depend on the spec being buildable (an engine version whose image a
    later release dropped, an instance type gone from the catalog, a region missing from the
    image table): every name here derives from the deployment's name, its hosting kind and
    pool, and the observer matches the generation-hashed names by pattern. No bodies, no
    scaling policy; the hosting kind alone gives the scalable dimension.
    """
    pool = hosting.pool if isinstance(hosting, SharedHosting) else None
    return DesiredResources(
        deployment=name,
        kind=hosting.kind,
        model_name="",
        container={},
        config_name="",
        config_body={},
        endpoint_name=pool or name,
        component_name=name if pool else None,
        schedule_target=schedule_target or ScheduleTarget(),
    )
