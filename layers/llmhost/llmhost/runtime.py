"""Per-function settings (validated from the environment at first use) and wiring.

Handlers ask for their dependencies here; nothing is read or built at import time. Tests
and the local runner replace the defaults with ``override``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator

from llmhost import aws

if TYPE_CHECKING:
    from llmhost.batches.runners import ModelState
    from llmhost.batches.service import Batches
    from llmhost.clock import CloudClock
    from llmhost.deployments import Deployments
    from llmhost.jobs.service import Jobs
    from llmhost.jobs.store import JobStore
    from llmhost.lifecycle.desired import DesiredResources
    from llmhost.lifecycle.reconciler import Reconciler
    from llmhost.lifecycle.registry import Registry
    from llmhost.observe import RequestObserver
    from llmhost.rag.collections import Collections
    from llmhost.rag.embeddings import Embedder
    from llmhost.rag.store import VectorStore
    from llmhost.scaling.capacity_guard import CapacityGuard
    from llmhost.scaling.hook import ScalingHook
    from llmhost.serving.hold import HoldPolicy
    from llmhost.serving.service import ServingService
    from llmhost.serving.wake import WakeDispatcher
    from llmhost.sizing.plan import Plan
    from llmhost.specs import DeploymentSpec
    from llmhost.traces.export import StreamTraceExporter
    from llmhost.traces.recorder import TraceRecorder
    from llmhost.traces.store import TraceStore
    from llmhost.usage.capacity import CapacityRecorder
    from llmhost.usage.report import UsageReports
    from llmhost.usage.store import UsageStore

Settings = TypeVar("Settings", bound=BaseModel)


class SettingsError(RuntimeError):
    """The function's environment is incomplete: a deployment problem, not a user error."""


class ApiSettings(BaseModel):
    """What every function needs to reach the registry."""

    registry_table_name: str = Field(min_length=3)
    # HistoryLimit: entries kept per deployment, by every writer.
    history_limit: int = Field(default=50, ge=5, le=500)


class StackSettings(BaseModel):
    """Whose resources these are: the CloudFormation stack's name (template.yaml sets it for
    every function; the local runner uses ``llmhost.lifecycle.ownership.LOCAL_STACK``)."""

    llmhost_stack_name: str = Field(min_length=1, max_length=128)


class SecretsSettings(BaseModel):
    """The name prefix of the secrets a spec may name as its token (template: SecretsPrefix)."""

    secrets_prefix: str = Field(min_length=1, max_length=256)


def secrets_prefix() -> str:
    return _from_env(SecretsSettings).secrets_prefix


def stack_name() -> str:
    """The stack whose ``llmhost:stack`` tag marks the SageMaker resources llmhost may change."""
    return _from_env(StackSettings).llmhost_stack_name


class ReconcileSettings(BaseModel):
    registry_table_name: str = Field(min_length=3)
    sagemaker_execution_role_arn: str = Field(pattern=r"^arn:aws[a-z-]*:iam::\d{12}:role/.+$")
    # EventBridge Scheduler for sleep/wake rules. Unset (or empty): such rules are not
    # scheduled and the deployment's status says which setting is missing.
    schedule_group: str | None = None
    scaling_function_arn: str | None = None
    scheduler_role_arn: str | None = None
    schedule_dead_letter_arn: str | None = None
    # Asynchronous endpoints: the jobs bucket (results) and the two SNS topics. Unset: an
    # async deployment fails with the missing settings named.
    jobs_bucket: str | None = None
    async_success_topic_arn: str | None = None
    async_error_topic_arn: str | None = None


def _from_env(model: type[Settings]) -> Settings:
    values = {
        name: os.environ[name.upper()] for name in model.model_fields if name.upper() in os.environ
    }
    try:
        return model.model_validate(values)
    except ValidationError as error:
        missing = ", ".join(".".join(map(str, e["loc"])).upper() for e in error.errors())
        raise SettingsError(f"the function's environment is invalid: {missing}") from None


_overrides: dict[str, Any] = {}


def override(**deps: Any) -> None:
    """Replace dependencies (``registry=...``, ``reconciler=...``) until ``reset()``."""
    _overrides.update(deps)


def reset() -> None:
    _overrides.clear()
    for cached in (_registry, _reconciler, _serving_service, _embedder, _store, _trace_recorder):
        cached.cache_clear()


def refresh() -> None:
    """Forget the built dependencies that hold an AWS client or a server connection, so the
    next use builds them on ``llmhost.aws``'s current clients (after a SnapStart restore:
    ``llmhost.snapstart``). Kept: overrides, an embedder that runs a local model (no
    connection: the ONNX session the snapshot is for), and Qdrant's embedded local mode (no
    server; its folder stays open)."""
    for cached in (_registry, _reconciler, _serving_service, _trace_recorder):
        cached.cache_clear()
    if _embedder.cache_info().currsize and getattr(_embedder(), "load", None) is None:
        _embedder.cache_clear()  # an endpoint's embedder holds a sagemaker-runtime client
    if _store.cache_info().currsize and os.environ.get("QDRANT_URL", "").strip():
        # A server client (store_from_env's own test): its connection pool goes with it.
        _store().close()
        _store.cache_clear()


@cache
def _registry() -> Registry:
    from llmhost.lifecycle.registry import Registry

    settings = _from_env(ApiSettings)
    return Registry(
        aws.client("dynamodb"), settings.registry_table_name, history_limit=settings.history_limit
    )


def registry() -> Registry:
    overridden: Registry | None = _overrides.get("registry")
    return overridden or _registry()


def deployments() -> Deployments:
    """The deployment operations over the registry, reading the GPU cap, SageMaker's
    endpoints and the token secrets when an operation needs them. Built per call (cheap)."""
    overridden: Deployments | None = _overrides.get("deployments")
    if overridden is not None:
        return overridden
    from llmhost.deployments import Deployments

    return Deployments(registry())


@cache
def _reconciler() -> Reconciler:
    from llmhost.lifecycle.applier import SageMakerApplier
    from llmhost.lifecycle.desired import AsyncTarget, ScheduleTarget
    from llmhost.lifecycle.observer import SageMakerObserver
    from llmhost.lifecycle.reconciler import Reconciler, resolve_desired

    settings = _from_env(ReconcileSettings)
    region = aws.region()
    role = settings.sagemaker_execution_role_arn
    sagemaker = aws.client("sagemaker")
    stack = stack_name()
    schedules = ScheduleTarget(
        group=settings.schedule_group or "",
        function_arn=settings.scaling_function_arn or "",
        role_arn=settings.scheduler_role_arn or "",
        dead_letter_arn=settings.schedule_dead_letter_arn or "",
    )

    async_target = AsyncTarget(
        bucket=settings.jobs_bucket or "",
        success_topic=settings.async_success_topic_arn or "",
        error_topic=settings.async_error_topic_arn or "",
    )

    def resolve(spec: DeploymentSpec, plan: Plan | None = None) -> DesiredResources:
        return resolve_desired(spec, region, role, schedules, plan, async_target)

    return Reconciler(
        registry=registry(),
        observer=SageMakerObserver(
            sagemaker,
            aws.lazy("application-autoscaling"),
            aws.lazy("cloudwatch"),
            aws.lazy("scheduler"),
            stack=stack,
        ),
        applier=SageMakerApplier(
            sagemaker,
            aws.lazy("application-autoscaling"),
            aws.lazy("cloudwatch"),
            role_arn=role,
            read_secret=read_secret,
            scheduler=aws.lazy("scheduler"),
            # Built on first use: most reconciles never apply scaling.
            guardrail=capacity_guard,
            stack=stack,
        ),
        resolve=resolve,
        schedule_target=schedules,
    )


def reconciler() -> Reconciler:
    overridden: Reconciler | None = _overrides.get("reconciler")
    return overridden or _reconciler()


# How long a model's token secret is reused (Powertools Parameters' max_age): the reconciler
# creating several models in one batch reads it once, and a rotated token reaches the next
# model created a minute later at most.
TOKEN_MAX_AGE_S = 60


def read_secret(arn: str) -> str:
    """The string value of a Secrets Manager secret (kept TOKEN_MAX_AGE_S). Raises
    SageMakerRejected if unreadable."""
    from botocore.exceptions import ClientError

    from llmhost.errors import SageMakerRejected

    try:
        return str(aws.secret(arn, max_age=TOKEN_MAX_AGE_S))
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise SageMakerRejected(
            f"cannot read the token secret {arn} ({code}); check that it exists and that "
            "its name starts with the stack's SecretsPrefix"
        ) from None


class TraceExportSettings(BaseModel):
    """The trace export function's environment (template: OtlpEndpoint, OtlpHeadersSecretArn).

    ``otlp_endpoint`` is the full OTLP/HTTP traces URL (https://host/v1/traces); the headers
    secret, when set, holds a JSON object of request headers (an Authorization, an API key)."""

    otlp_endpoint: str = Field(pattern=r"^https?://[^\s/?#]+\S*$", max_length=2048)
    otlp_headers_secret_arn: str | None = None
    # Each export request's budget, the exporter's own retries of 429/502/503/504 included.
    otlp_timeout_s: float = Field(default=10.0, gt=0, le=300)
    llmhost_stack_name: str | None = None

    @field_validator("otlp_headers_secret_arn", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return value or None


def trace_exporter() -> StreamTraceExporter:
    """The trace export function's exporter, built from its settings: the headers secret is
    read here, once per call (the function keeps what this returns for its environment)."""
    overridden: StreamTraceExporter | None = _overrides.get("trace_exporter")
    if overridden is not None:
        return overridden
    from llmhost.traces.export import headers_from_secret, stream_trace_exporter
    from llmhost.traces.store import view_from_item

    settings = _from_env(TraceExportSettings)
    headers: dict[str, str] = {}
    if settings.otlp_headers_secret_arn:
        arn = settings.otlp_headers_secret_arn
        headers = headers_from_secret(aws.secret(arn, max_age=3600, transform="json"), arn)
    return stream_trace_exporter(
        settings.otlp_endpoint,
        headers,
        stack=settings.llmhost_stack_name,
        timeout_s=settings.otlp_timeout_s,
        view_from_item=view_from_item,
    )


class ServingSettings(BaseModel):
    registry_table_name: str = Field(min_length=3)
    # API Gateway cuts requests at 29 s: two attempts of 12 s fit; the stream function,
    # behind a function URL, may wait longer between tokens.
    serving_timeout_s: float = Field(default=12.0, gt=0, le=900)
    serving_max_attempts: int = Field(default=2, ge=1, le=5)
    stream_url: str | None = None
    api_keys_secret_arn: str | None = None
    # The scaling function a request for a zero-copy model wakes (async invoke); unset: the
    # registry's WakeRequested entry only, and AWS's no-capacity alarm adds the copy.
    scaling_function_name: str | None = None
    # How long (cloud seconds) a process serves from its view of the registry before reading
    # it again: a warm environment reads it at most once per this, not once per request.
    route_cache_s: float = Field(default=10.0, gt=0, le=86400)
    # The stream function's timeout (template: StreamTimeout): the longest it holds a request
    # for a cold model (with time kept for the answer: ``llmhost.serving.hold``), sooner when
    # the Lambda Web Adapter's context header says the invocation ends sooner.
    stream_timeout_s: float = Field(default=300.0, ge=1, le=900)
    # Seconds between the SSE comments a held stream sends while the model wakes.
    hold_keepalive_s: float = Field(default=10.0, gt=0, le=60)


def serving_settings() -> ServingSettings:
    overridden: ServingSettings | None = _overrides.get("serving_settings")
    return overridden or _from_env(ServingSettings)


def hold_policy() -> HoldPolicy:
    """How serving holds a request for a cold model (``Prefer: wait``, a streaming chat)."""
    from llmhost.serving.hold import HoldPolicy

    settings = serving_settings()
    return HoldPolicy(
        answer_s=settings.serving_timeout_s,
        clock=clock(),
        keepalive_s=settings.hold_keepalive_s,
        request_limit_s=settings.stream_timeout_s,
    )


def clock() -> CloudClock:
    """The cloud's clock: AWS's own unless overridden (the local runner compresses it as
    its stand-ins' time is)."""
    from llmhost.clock import REAL

    overridden: CloudClock | None = _overrides.get("clock")
    return overridden or REAL


def wake_dispatcher() -> WakeDispatcher:
    """How serving hands a wake to the scaling function: the ``wake_dispatcher`` override,
    else an async Lambda invoke of SCALING_FUNCTION_NAME, else nothing. Built per call: only
    the one request that wins a wake asks for it."""
    from llmhost.serving.wake import LambdaWakeDispatcher, NoWakeDispatch, lambda_client

    if "wake_dispatcher" in _overrides:
        overridden: WakeDispatcher = _overrides["wake_dispatcher"]
        return overridden
    name = serving_settings().scaling_function_name
    return LambdaWakeDispatcher(lambda_client, name) if name else NoWakeDispatch()


@cache
def _serving_service() -> ServingService:
    return build_serving_service(serving_settings())


def build_serving_service(settings: ServingSettings) -> ServingService:
    """A serving service with these settings, over the process's registry, embedder and
    store (each built on first use)."""
    from llmhost.serving.invoke import ModelInvoker
    from llmhost.serving.routing import ModelDirectory
    from llmhost.serving.service import ServingService

    invoker = cache(
        lambda: ModelInvoker.create(
            timeout_s=settings.serving_timeout_s, max_attempts=settings.serving_max_attempts
        )
    )
    directory = ModelDirectory(
        registry, ttl_s=settings.route_cache_s, wake=wake_dispatcher, cloud_clock=clock()
    )
    return ServingService(directory, invoker, embedder, store)


def serving_service() -> ServingService:
    """The RAG/chat service (its embedder, store and clients are built on first use)."""
    overridden: ServingService | None = _overrides.get("serving_service")
    return overridden or _serving_service()


@cache
def _embedder() -> Embedder:
    from llmhost.rag.embeddings.settings import embedder_from_env

    return embedder_from_env()


def embedder() -> Embedder:
    overridden: Embedder | None = _overrides.get("embedder")
    return overridden or _embedder()


@cache
def _store() -> VectorStore:
    from llmhost.rag.store import store_from_env

    return store_from_env()


def store() -> VectorStore:
    overridden: VectorStore | None = _overrides.get("store")
    return overridden or _store()


def close_store() -> None:
    """Close the vector store if this process opened one. Embedded Qdrant holds its folder's
    lock until then, and a client left for the interpreter's exit to close prints an
    ImportError traceback ("sys.meta_path is None") as Python shuts down."""
    if _store.cache_info().currsize:
        _store().close()
        _store.cache_clear()


def collections() -> Collections:
    """The collection and document operations over the function's store and embedder (each
    built when an operation first needs it)."""
    overridden: Collections | None = _overrides.get("collections")
    if overridden is not None:
        return overridden
    from llmhost.rag.collections import Collections

    return Collections(store, embedder)


def warm_rag() -> None:
    """Build the embedder and the vector store together, in two threads.

    Loading the ONNX session mostly runs in C++ without the GIL, while importing
    qdrant-client is Python work: overlapping them takes about a third off a serving
    function's first RAG request. Safe to call more than once.
    """
    import threading

    errors: list[BaseException] = []

    def build_store() -> None:
        try:
            store()
        except BaseException as error:  # re-raised below, in the caller's thread
            errors.append(error)

    worker = threading.Thread(target=build_store, name="warm-store")
    worker.start()
    loaded = embedder()
    load = getattr(loaded, "load", None)
    if load is not None:
        load()
    worker.join()
    if errors:
        raise errors[0]


class ScalingSettings(BaseModel):
    """The scaling function's environment (GPU cap 0 = none; budget 0 = none)."""

    registry_table_name: str = Field(min_length=3)
    gpu_capacity_cap: int = Field(default=0, ge=0, le=100_000)
    daily_budget_usd: float = Field(default=0.0, ge=0)


class CapacitySettings(BaseModel):
    """The guardrails' settings the API and reconcile functions read too."""

    gpu_capacity_cap: int = Field(default=0, ge=0, le=100_000)
    daily_budget_usd: float = Field(default=0.0, ge=0)


def scaling_settings() -> ScalingSettings:
    overridden: ScalingSettings | None = _overrides.get("scaling_settings")
    return overridden or _from_env(ScalingSettings)


def gpu_capacity_cap() -> int | None:
    """The account's cap on GPU units (instances + copies), None when there is none."""
    if "gpu_capacity_cap" in _overrides:
        cap: int | None = _overrides["gpu_capacity_cap"]
        return cap or None
    return _from_env(CapacitySettings).gpu_capacity_cap or None


def capacity_guard() -> CapacityGuard:
    """The GPU-cap guard over the registry, with the daily budget's state. Built per call
    (cheap: the clients are cached); the reconciler passes it to
    ``SageMakerApplier(guardrail=...)``."""
    if "capacity_guard" in _overrides:
        overridden: CapacityGuard = _overrides["capacity_guard"]
        return overridden
    from llmhost.scaling.budget import BudgetLedger
    from llmhost.scaling.capacity_guard import CapacityGuard

    reg = registry()
    settings = _from_env(CapacitySettings)
    return CapacityGuard(
        reg,
        aws.client("sagemaker"),
        aws.client("application-autoscaling"),
        gpu_capacity_cap(),
        # Without a budget, a day marked as spent (before it was switched off) binds nothing
        # and no decision pays a ledger read.
        budget=BudgetLedger(reg) if settings.daily_budget_usd > 0 else None,
    )


def scaling_hook() -> ScalingHook:
    """The scaling hook with its guardrails."""
    if "scaling_hook" in _overrides:
        overridden: ScalingHook = _overrides["scaling_hook"]
        return overridden
    from llmhost.scaling.budget import BudgetKeeper, BudgetLedger
    from llmhost.scaling.hook import ScalingHook

    settings = scaling_settings()
    reg = registry()
    guard = capacity_guard()
    budget = BudgetKeeper(reg, BudgetLedger(reg), guard, settings.daily_budget_usd)
    return ScalingHook(
        reg,
        guard=guard,
        budget=budget,
        clock=clock(),
        cloudwatch=lambda: aws.client("cloudwatch"),
    )


class JobsSettings(BaseModel):
    """The jobs' table, bucket and queue (template.yaml: JobsTable, JobsBucket, JobsQueue)."""

    jobs_table: str = Field(min_length=3, max_length=255)
    jobs_bucket: str = Field(min_length=3, max_length=63)
    jobs_queue_url: str = Field(pattern=r"^https?://\S+$")
    # JobsQueue's maxReceiveCount: the receive on which a failing job is marked FAILED.
    jobs_max_receive_count: int = Field(default=3, ge=1, le=1000)
    # JobRetentionDays: how long a job is kept (its item's TTL).
    job_retention_days: int = Field(default=7, ge=1, le=365)
    # How long a worker owns a job it claimed: the jobs function's timeout (a worker past it
    # is dead), within the queue's visibility timeout so a redelivery can take over.
    jobs_lease_s: float = Field(default=900.0, gt=0, le=43200)
    # How long a failed job's message waits before its next receive (instead of the queue's
    # visibility timeout, six times the worker's timeout).
    jobs_retry_delay_s: int = Field(default=60, ge=0, le=43200)


def jobs_settings() -> JobsSettings:
    overridden: JobsSettings | None = _overrides.get("jobs_settings")
    return overridden or _from_env(JobsSettings)


def jobs_store() -> JobStore:
    """The jobs table's adapter (cheap to build: its client is cached)."""
    overridden: JobStore | None = _overrides.get("jobs_store")
    if overridden is not None:
        return overridden
    from llmhost.jobs.store import JobStore

    return JobStore(aws.client("dynamodb"), jobs_settings().jobs_table)


def jobs() -> Jobs:
    """The job operations (submit, get, list, cancel) and the worker's (run, complete)."""
    overridden: Jobs | None = _overrides.get("jobs")
    if overridden is not None:
        return overridden
    from llmhost.jobs.service import Jobs

    return Jobs.from_runtime()


def worker_serving_service() -> ServingService:
    """The serving service the jobs worker calls: the function's own (its SERVING_TIMEOUT_S
    is the worker's long one), unless overridden (the local runner, whose functions share
    one process and one environment, gives the worker a service with the worker's timeout)."""
    overridden: ServingService | None = _overrides.get("worker_serving_service")
    return overridden or serving_service()


def batches() -> Batches:
    """OpenAI's Batch API operations over the jobs' table and bucket (built per call: its
    clients are cached)."""
    overridden: Batches | None = _overrides.get("batches")
    if overridden is not None:
        return overridden
    import time

    from llmhost.batches.service import Batches
    from llmhost.batches.store import BatchStore

    settings = jobs_settings()
    store = BatchStore(
        aws.client("dynamodb"), aws.client("s3"), settings.jobs_table, settings.jobs_bucket
    )
    return Batches(
        store, now=lambda: int(time.time()), model_state=batch_model_state, kick=batch_kick()
    )


class BatchSettings(BaseModel):
    """The batch function (template.yaml: BatchFunction), which the OpenAI-compatible server
    and the jobs worker invoke to move a batch on; unset, a batch is advanced in-process."""

    batch_function_name: str | None = None


def batch_kick() -> Callable[[str], None]:
    """How a batch is handed to the batch function: the ``batch_kick`` override, an
    asynchronous invoke of BATCH_FUNCTION_NAME, or an in-process ``advance``."""
    overridden: Callable[[str], None] | None = _overrides.get("batch_kick")
    if overridden is not None:
        return overridden
    name = _from_env(BatchSettings).batch_function_name
    if not name:

        def advance(batch_id: str) -> None:
            batches().advance(batch_id)

        return advance
    from llmhost.batches.kick import LambdaBatchKick

    return LambdaBatchKick(lambda: aws.client("lambda"), name)


def batch_model_state(models: set[str]) -> ModelState:
    """Whether every model of a batch is a deployment serving now (for the runner choice)."""
    from llmhost.batches.runners import ModelState

    records = [registry().find(name) for name in models]
    return ModelState(
        live=all(r is not None and r.status == "IN_SERVICE" for r in records),
        known=all(r is not None for r in records),
    )


def request_observers() -> list[RequestObserver]:
    """Everyone who watches each answered request (``llmhost.observe``): the trace recorder,
    the usage counters and the request metrics, each built from this function's settings."""
    overridden: list[RequestObserver] | None = _overrides.get("request_observers")
    if overridden is not None:
        return overridden
    return [*trace_observers(), *usage_observers()]


class TraceSettings(BaseModel):
    """The traces table and what is kept (template.yaml: TracesTable, TraceSampleRate,
    TraceContent, TraceRetentionDays). No table: the function records no traces."""

    traces_table: str | None = Field(default=None, max_length=255)
    trace_sample_rate: float = Field(default=1.0, ge=0, le=1)
    trace_content: Literal["full", "redacted", "none"] = "redacted"
    trace_retention_days: int = Field(default=30, ge=1, le=3650)


# A trace write gives up quickly: the answer it follows is complete and waits on it.
TRACE_WRITE_TIMEOUT_S = 2.0
TRACE_WRITE_ATTEMPTS = 2


def trace_settings() -> TraceSettings:
    overridden: TraceSettings | None = _overrides.get("trace_settings")
    return overridden or _from_env(TraceSettings)


def trace_store() -> TraceStore:
    """The traces table's adapter. Raises SettingsError when TRACES_TABLE is unset."""
    overridden: TraceStore | None = _overrides.get("trace_store")
    if overridden is not None:
        return overridden
    from llmhost.traces.store import TraceStore

    table = trace_settings().traces_table
    if not table:
        raise SettingsError("the function's environment is invalid: TRACES_TABLE")
    return TraceStore(aws.client("dynamodb"), table)


@cache
def _trace_recorder() -> TraceRecorder | None:
    settings = trace_settings()
    if not settings.traces_table and "trace_store" not in _overrides:
        return None
    from llmhost.traces.recorder import TraceRecorder
    from llmhost.traces.store import TraceStore

    store = _overrides.get("trace_store") or TraceStore(
        aws.client(
            "dynamodb",
            read_timeout=TRACE_WRITE_TIMEOUT_S,
            connect_timeout=TRACE_WRITE_TIMEOUT_S,
            max_attempts=TRACE_WRITE_ATTEMPTS,
        ),
        settings.traces_table or "",
    )
    return TraceRecorder(
        store,
        sample_rate=settings.trace_sample_rate,
        content=settings.trace_content,
        retention_days=settings.trace_retention_days,
    )


def trace_observers() -> list[RequestObserver]:
    """The trace recorder, when this function records traces (``llmhost.traces``): its
    environment names TRACES_TABLE. Built once per process."""
    overridden: list[RequestObserver] | None = _overrides.get("trace_observers")
    if overridden is not None:
        return overridden
    recorder = _trace_recorder()
    return [recorder] if recorder is not None else []


class UsageSettings(BaseModel):
    """The usage table (template.yaml: UsageTable; unset: no usage is counted) and how long
    its items live (UsageRetentionDays)."""

    usage_table: str | None = Field(default=None, min_length=3, max_length=255)
    usage_retention_days: int = Field(default=400, ge=1, le=3650)
    llmhost_stack_name: str | None = Field(default=None, max_length=128)


def usage_settings() -> UsageSettings:
    overridden: UsageSettings | None = _overrides.get("usage_settings")
    return overridden or _from_env(UsageSettings)


def usage_store() -> UsageStore | None:
    """The usage table's adapter, None when this function has no usage table."""
    if "usage_store" in _overrides:
        overridden: UsageStore | None = _overrides["usage_store"]
        return overridden
    from llmhost.usage.store import UsageStore

    settings = usage_settings()
    if not settings.usage_table:
        return None
    return UsageStore(aws.client("dynamodb"), settings.usage_table, settings.usage_retention_days)


def usage_reports() -> UsageReports:
    """Usage and capacity reports over the usage table and the registry."""
    overridden: UsageReports | None = _overrides.get("usage_reports")
    if overridden is not None:
        return overridden
    from llmhost.usage.capacity import MAX_HOLD_S
    from llmhost.usage.report import UsageReports

    store = usage_store()
    if store is None:
        raise SettingsError("the function's environment is invalid: USAGE_TABLE")
    cloud = clock()
    return UsageReports(store, registry().find, cloud.now, max_hold=cloud.span(MAX_HOLD_S))


def capacity_recorder() -> CapacityRecorder | None:
    """The scaling function's recorder of the capacity history and its metrics (None
    without a usage table)."""
    if "capacity_recorder" in _overrides:
        overridden: CapacityRecorder | None = _overrides["capacity_recorder"]
        return overridden
    from llmhost.scaling.budget import BudgetLedger
    from llmhost.usage.capacity import CapacityRecorder

    try:
        store = usage_store()
    except SettingsError:
        # The history must never fail scaling (whose decisions are already taken).
        from aws_lambda_powertools import Logger

        Logger(child=True).exception("capacity not recorded: the function's settings are invalid")
        return None
    if store is None:
        return None
    reg = registry()

    def spent_today(now: datetime) -> float:
        return BudgetLedger(reg).spent(now.date())

    return CapacityRecorder(
        store,
        reg.deployments,
        reg.find,
        capacity_guard,
        spent_today=spent_today,
        stack=usage_settings().llmhost_stack_name,
    )


def usage_observers() -> list[RequestObserver]:
    """The usage counters and request metrics (``llmhost.usage``): the counter when the
    function has a usage table, the metrics always (Powertools' POWERTOOLS_METRICS_DISABLED
    switches them off)."""
    from llmhost.usage.observers import RequestMetrics, UsageCounter

    try:
        settings = usage_settings()
        store = usage_store()
    except SettingsError:
        # Watching requests must never fail them: a bad USAGE_* setting loses the counts
        # (and says so in the log), not the answers.
        from aws_lambda_powertools import Logger

        Logger(child=True).exception("usage not counted: the function's settings are invalid")
        return [RequestMetrics(None)]
    observers: list[RequestObserver] = [RequestMetrics(settings.llmhost_stack_name)]
    if store is not None:
        observers.insert(0, UsageCounter(lambda: store))
    return observers
