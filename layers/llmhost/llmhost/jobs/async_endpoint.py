"""Jobs on an asynchronous endpoint: queued by ``InvokeEndpointAsync``, completed by
SageMaker's SNS notification.

``submit_async(job)`` sends the payload the real-time route would send (the same chat
template, token budget and retrieval: ``ServingService.prepare_offline``) to the
deployment's async endpoint with the job id as ``InferenceId``: inline in ``Body`` when it
fits SageMaker's inline limit (128,000 bytes, botocore's model of ``InvokeEndpointAsync``),
otherwise written to ``s3://<JOBS_BUCKET>/async/input/<job id>.json`` and named by
``InputLocation`` (the two are mutually exclusive). What turns the engine's reply back into
the synchronous route's answer (engine, prompt token estimate, RAG sources) is kept beside
it, ``async/input/<job id>.context.json``.

``notification_outcome(envelope)`` reads the SNS envelope the jobs queue receives (raw
delivery off) and returns the job id with its result or its error. The notification is
SageMaker's documented format (docs.aws.amazon.com/sagemaker/latest/dg/
async-inference-check-predictions.html): ``inferenceId``, ``invocationStatus``
(``Completed`` | ``Failed``), ``failureReason``, ``responseParameters.outputLocation`` /
``failureLocation``, and, with ``IncludeInferenceResponseIn``, ``responseBody``
(``content`` with its ``encoding``; only up to 128 KB, else the output is read from S3).
A duplicate notification yields the same outcome; completing a job twice is the job
store's no-op.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from llmhost.aws_faults import classify
from llmhost.errors import LlmhostError
from llmhost.jobs.record import JobError
from llmhost.lifecycle.desired import ASYNC_INPUT_PREFIX

if TYPE_CHECKING:
    from llmhost.jobs.record import Job

# InvokeEndpointAsync's Body: at most 128,000 bytes (botocore's sagemaker-runtime model;
# AWS ML blog "Amazon SageMaker AI Async Inference now supports inline request payloads").
INLINE_BODY_MAX = 128_000
# The longest an instance may work on one request (InvokeEndpointAsync's maximum): long
# generations are what async endpoints are for.
INVOCATION_TIMEOUT_S = 3600
# What a failure's message keeps of the container's own error text.
FAILURE_TEXT_MAX = 2000


class NotAnAsyncNotification(LlmhostError):
    """A message on the jobs queue that is no SageMaker async inference notification."""

    code = "invalid_notification"
    status = 400


class AsyncModelNotInService(LlmhostError):
    """An async deployment takes jobs only while its endpoint exists (not asleep, not being
    created or deleted): SageMaker queues requests, not endpoints."""

    code = "model_not_ready"
    status = 409

    def __init__(self, model: str, status: str) -> None:
        super().__init__(
            f"model '{model}' is {status}: an async deployment takes jobs while IN_SERVICE; "
            f"wake it with POST /v1/deployments/{model}/wake (or wait until it is created) "
            "and submit the job again"
        )


@dataclass(frozen=True)
class AsyncContext:
    """What turns the engine's reply into the synchronous route's answer."""

    kind: Literal["chat", "rag"]
    model: str
    engine: str
    seq2seq: bool
    estimated_prompt_tokens: int
    engine_counts_prompt: bool
    sources: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class AsyncNotification:
    """One SageMaker async inference notification (pure data)."""

    inference_id: str
    completed: bool
    failure_reason: str = ""
    output_location: str | None = None
    failure_location: str | None = None
    # The response as SageMaker included it (<= 128 KB), decoded; None when not included.
    response: bytes | None = None


# ------------------------------------------------------------------------------ submit


def input_key(job_id: str) -> str:
    return f"{ASYNC_INPUT_PREFIX}{job_id}.json"


def context_key(job_id: str) -> str:
    return f"{ASYNC_INPUT_PREFIX}{job_id}.context.json"


def invocation(endpoint: str, job_id: str, body: bytes, bucket: str) -> tuple[dict[str, Any], bool]:
    """The InvokeEndpointAsync request for ``body``, and whether ``body`` must first be
    written to ``input_key(job_id)`` (it does not fit inline). Pure."""
    request: dict[str, Any] = {
        "EndpointName": endpoint,
        "ContentType": "application/json",
        "Accept": "application/json",
        "InferenceId": job_id,
        "InvocationTimeoutSeconds": INVOCATION_TIMEOUT_S,
    }
    if len(body) <= INLINE_BODY_MAX:
        return {**request, "Body": body}, False
    return {**request, "InputLocation": f"s3://{bucket}/{input_key(job_id)}"}, True


def submit_async(
    job: Job,
    *,
    sagemaker_runtime: Any = None,
    s3: Any = None,
    bucket: str | None = None,
    service: Any = None,
) -> None:
    """Queue ``job`` on its deployment's async endpoint (``InferenceId`` = the job id).

    Raises ``JobsUnavailable`` when SageMaker or S3 fails in a way a retry can get past, and
    a typed 4xx for anything else (the deployment not in service, a request the real-time
    route would refuse, SageMaker refusing for good): ``Jobs.submit`` ends the job FAILED
    with either. The clients, bucket and serving service default to the runtime's."""
    _submit(job, sagemaker_runtime, s3, bucket, service)


def _submit(job: Job, sagemaker_runtime: Any, s3: Any, bucket: str | None, service: Any) -> None:
    from llmhost import aws, runtime
    from llmhost.serving.requests import ChatCompletionRequest, RagRequest
    from llmhost.serving.routing import route_for

    s3 = s3 or aws.client("s3")
    bucket = bucket or runtime.jobs_settings().jobs_bucket
    service = service or runtime.serving_service()
    body_source: dict[str, Any] = job.request
    request_key = getattr(job, "request_key", None)
    if request_key:
        body_source = json.loads(_read(s3, bucket, request_key))
    request = (RagRequest if job.kind == "rag" else ChatCompletionRequest).model_validate(
        body_source
    )
    record = runtime.registry().get(job.model)
    if record.status not in {"IN_SERVICE", "UPDATING"} or record.desired_state != "in_service":
        raise AsyncModelNotInService(record.name, record.status)
    route = route_for(record)
    prepared = service.prepare_offline(route, request)
    from llmhost.serving.service import sources_of

    context = AsyncContext(
        kind=job.kind,
        model=route.name,
        engine=route.engine,
        seq2seq=route.chat_template == "flan-t5",
        estimated_prompt_tokens=prepared.prompt_tokens(),
        engine_counts_prompt=bool(prepared.chat and prepared.codec.chat_stream_usage),
        sources=sources_of(prepared.rag),
    )
    body = json.dumps(prepared.payload, separators=(",", ":")).encode()
    call, staged = invocation(route.endpoint_name, job.id, body, bucket)
    with _aws("the jobs bucket (S3)"):
        s3.put_object(
            Bucket=bucket,
            Key=context_key(job.id),
            Body=json.dumps(asdict(context)).encode(),
            ContentType="application/json",
        )
        if staged:
            s3.put_object(
                Bucket=bucket, Key=input_key(job.id), Body=body, ContentType="application/json"
            )
    with _aws(f"SageMaker (InvokeEndpointAsync on {route.endpoint_name})"):
        (sagemaker_runtime or aws.client("sagemaker-runtime")).invoke_endpoint_async(**call)


# ------------------------------------------------------------------------ notification


def parse_notification(message: Any) -> AsyncNotification:
    """SageMaker's notification (the SNS ``Message``, parsed). Pure.

    Raises NotAnAsyncNotification naming what is missing."""
    if not isinstance(message, dict):
        raise NotAnAsyncNotification("the notification is not a JSON object")
    inference_id = message.get("inferenceId")
    status = message.get("invocationStatus")
    if not isinstance(inference_id, str) or not inference_id:
        raise NotAnAsyncNotification("the notification has no inferenceId")
    if status not in ("Completed", "Failed"):
        raise NotAnAsyncNotification(f"invocationStatus is {status!r}, not 'Completed' or 'Failed'")
    response = message.get("responseParameters") or {}
    return AsyncNotification(
        inference_id=inference_id,
        completed=status == "Completed",
        failure_reason=str(message.get("failureReason") or ""),
        output_location=response.get("outputLocation"),
        failure_location=response.get("failureLocation"),
        response=_included(message.get("responseBody")),
    )


def _included(body: Any) -> bytes | None:
    """The response SageMaker put in the notification (``content`` in its ``encoding``)."""
    if not isinstance(body, dict) or body.get("content") is None:
        return None
    content = body["content"]
    if str(body.get("encoding", "")).upper() == "BASE64":
        return base64.b64decode(content)
    if not isinstance(content, str):
        return json.dumps(content).encode()
    return content.encode()


def outcome_of(
    notice: AsyncNotification, context: AsyncContext, reply: bytes | None
) -> dict[str, Any] | JobError:
    """The job's result (the synchronous route's answer) or its error. Pure.

    ``reply``: the container's output (the success) or its error body (the failure)."""
    from llmhost.batches.transform import line_result
    from llmhost.engines.codecs import codec_for
    from llmhost.serving.errors import ModelInvocationError

    if not notice.completed:
        detail = (reply or b"").decode("utf-8", "replace")[:FAILURE_TEXT_MAX]
        reason = notice.failure_reason or "SageMaker gave no reason"
        return JobError(code="model_error", message=f"{reason}{': ' + detail if detail else ''}")
    if reply is None:
        return JobError(code="model_error", message="the endpoint wrote no output")
    codec = codec_for(context.engine, seq2seq=context.seq2seq)
    try:
        completion = codec.parse_reply(reply)
    except ModelInvocationError as error:
        return JobError(code=error.code, message=error.message)
    meta = {**asdict(context), "line": notice.inference_id}
    return line_result(meta, context.model, completion)


def notification_outcome(
    envelope: dict[str, Any], *, s3: Any = None, bucket: str | None = None
) -> tuple[str, dict[str, Any] | JobError]:
    """The job id and its outcome from an SNS envelope of an async endpoint's topic.

    Reads the output from S3 when SageMaker did not include it, and the job's context.
    Raises NotAnAsyncNotification for anything else, JobsUnavailable when S3 fails."""
    from llmhost import aws, runtime

    raw = envelope.get("Message") if isinstance(envelope, dict) else None
    try:
        message = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError:
        raise NotAnAsyncNotification("the SNS message is not JSON") from None
    notice = parse_notification(message)
    s3 = s3 or aws.client("s3")
    bucket = bucket or runtime.jobs_settings().jobs_bucket
    try:
        context = AsyncContext(**json.loads(_read(s3, bucket, context_key(notice.inference_id))))
    except _Missing:
        return notice.inference_id, JobError(
            code="async_context_missing",
            message=f"the job's context ({context_key(notice.inference_id)}) is gone from the "
            "jobs bucket (kept JobRetentionDays); submit the job again",
        )
    reply = notice.response
    location = notice.output_location if notice.completed else notice.failure_location
    if reply is None and location:
        try:
            reply = _read_uri(s3, location)
        except _Missing:
            reply = None
    return notice.inference_id, outcome_of(notice, context, reply)


# ------------------------------------------------------------------------------ S3


class _Missing(Exception):
    """The object is not (or no longer) in the bucket."""


def _read_uri(s3: Any, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return _read(s3, bucket, key)


def _read(s3: Any, bucket: str, key: str) -> bytes:
    with _aws("the jobs bucket (S3)"):
        try:
            body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise _Missing(key) from None
            raise
    return body


@contextlib.contextmanager
def _aws(what: str) -> Iterator[None]:
    """Turn a botocore error of a call to ``what`` into JobsUnavailable (retrying can get past
    it) or AsyncEndpointRefused naming it."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        from llmhost.jobs.service import JobsUnavailable

        fault = classify(error)
        detail = f"{type(error).__name__}: {error}"
        if fault is not None:
            raise JobsUnavailable(what, fault, log_detail=detail) from error
        raise AsyncEndpointRefused(what, detail) from error


class AsyncEndpointRefused(LlmhostError):
    """SageMaker or S3 refused a call for good (not a fault a retry gets past)."""

    code = "async_endpoint_refused"
    status = 502

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what} refused the request: {detail}")
