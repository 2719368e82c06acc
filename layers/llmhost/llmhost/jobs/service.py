"""Job operations: what the Jobs API routes call (submit, get, list, cancel) and what the
worker calls for each message (run, complete).

A job on a real-time deployment is a message ``{"job_id"}`` on the jobs queue; the worker
claims the job (a lease), calls the same serving code as ``/v1/chat/completions`` and
``/v1/rag`` with its own long timeout, and completes it. A job on an asynchronous endpoint
is handed to ``llmhost.jobs.async_endpoint.submit_async`` and completed by its
notification. Every ending is published once it is written: ``llmhost`` / ``Job Completed``
on the default event bus.

Failures, by who can fix them:
- the request (a 4xx of the serving code: no such model, a prompt too long): the job ends
  FAILED at once with that error, and the message is done;
- the model waking or throttled (a Retry-After): the job goes back to QUEUED and a new
  message is sent with that delay, so a sleeping model's jobs wait for it;
- anything else: the message is retried by the queue after ``retry_delay_s``; on its last
  receive (the queue's maxReceiveCount) the job ends FAILED with the reason and the queue's
  redrive moves the message to the dead-letter queue.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ValidationError

from llmhost.aws_faults import ServiceFault, classify
from llmhost.errors import FieldIssue, LlmhostError, SpecInvalid
from llmhost.jobs.record import Job, JobAlreadyStarted, JobError, JobNotFound, Kind, iso, new_job_id
from llmhost.jobs.store import JobStore, Page
from llmhost.serving.requests import ChatCompletionRequest, RagRequest

if TYPE_CHECKING:
    from llmhost.serving.service import ServingService
    from llmhost.serving.watch import RequestWatch

logger = Logger(child=True)

# A result up to this size is kept in the job's item (DynamoDB items hold 400 KB); a larger
# one goes to the bucket and GET answers with a presigned URL. The same for requests.
INLINE_RESULT_BYTES = 32 * 1024
INLINE_REQUEST_BYTES = 64 * 1024
PRESIGNED_URL_S = 3600
# SQS's longest DelaySeconds: a job waiting for a model is put back at most this far ahead.
MAX_DELAY_S = 900
# How many times a job may be put back for a waking or throttled model (each at most
# MAX_DELAY_S later) before it ends FAILED with that error.
MAX_REQUEUES = 48
EVENT_SOURCE = "llmhost"
EVENT_DETAIL_TYPE = "Job Completed"

# SendMessageBatch takes up to 10 entries (and 256 KB in all; a job's message is its id).
SEND_BATCH_LIMIT = 10

Outcome = Literal["done", "retry"]
RequestModel = ChatCompletionRequest | RagRequest


class JobsUnavailable(ServiceFault):
    """The queue, the bucket or the event bus failed in a way retrying can get past."""


@dataclass(frozen=True)
class Submission:
    """A job to submit with others (``Jobs.submit_new``): its id and request, as ``submit``
    takes them."""

    job_id: str
    request: Any
    batch_id: str | None = None
    custom_id: str | None = None


@dataclass(frozen=True)
class JobsConfig:
    bucket: str
    queue_url: str
    max_receive_count: int = 3
    retention_days: int = 7
    lease_s: float = 900.0
    retry_delay_s: int = 60


def request_model(kind: Kind, body: Any) -> RequestModel:
    """The request as the synchronous route parses it. Raises SpecInvalid naming the field
    (prefixed ``body.``, where POST /v1/jobs carries it)."""
    model: type[BaseModel] = ChatCompletionRequest if kind == "chat" else RagRequest
    try:
        parsed = model.model_validate(body)
    except ValidationError as error:
        raise SpecInvalid(_body_issues(error)) from None
    if isinstance(parsed, ChatCompletionRequest) and parsed.stream:
        raise SpecInvalid(
            [FieldIssue("body.stream", "a job's answer is kept whole: omit stream (or false)")]
        )
    assert isinstance(parsed, ChatCompletionRequest | RagRequest)
    return parsed


class Jobs:
    """The job operations over the jobs table, queue, bucket and event bus."""

    def __init__(
        self,
        store: JobStore,
        config: JobsConfig,
        *,
        sqs: Callable[[], Any],
        s3: Callable[[], Any],
        events: Callable[[], Any],
        serving: Callable[[], ServingService],
        hosting_of: Callable[[str], str | None],
        now: Callable[[], float] = time.time,
    ) -> None:
        """``hosting_of(model)``: the deployment's hosting kind, None when there is none."""
        self.store = store
        self.config = config
        self._sqs = sqs
        self._s3 = s3
        self._events = events
        self._serving = serving
        self._hosting_of = hosting_of
        self._now = now

    @classmethod
    def from_runtime(cls) -> Jobs:
        from llmhost import aws, runtime

        settings = runtime.jobs_settings()

        def hosting_of(model: str) -> str | None:
            record = runtime.registry().find(model)
            if record is None or record.status == "DELETED":
                return None
            return str(record.spec.hosting.kind)

        return cls(
            runtime.jobs_store(),
            JobsConfig(
                bucket=settings.jobs_bucket,
                queue_url=settings.jobs_queue_url,
                max_receive_count=settings.jobs_max_receive_count,
                retention_days=settings.job_retention_days,
                lease_s=settings.jobs_lease_s,
                retry_delay_s=settings.jobs_retry_delay_s,
            ),
            sqs=aws.lazy("sqs"),
            s3=aws.lazy("s3"),
            events=aws.lazy("events"),
            serving=runtime.worker_serving_service,
            hosting_of=hosting_of,
        )

    # ------------------------------------------------------------------------ the API

    def submit(
        self,
        kind: Kind,
        request: Any,
        *,
        job_id: str | None = None,
        batch_id: str | None = None,
        custom_id: str | None = None,
    ) -> Job:
        """Accept ``request`` (the synchronous route's body, as a dict or its parsed model)
        as a job and queue it. The same ``job_id`` again returns the job already stored (and
        queues it again if it is still QUEUED: a resumed batch never loses a line).

        Raises SpecInvalid (the body), ModelNotFound, JobsUnavailable (the queue)."""
        from llmhost.serving.routing import ModelNotFound

        parsed = request_model(kind, _as_body(request))
        hosting = self._hosting_of(parsed.model)
        if hosting is None:
            raise ModelNotFound(
                f"no model named '{parsed.model}'; GET /v1/models lists them (body.model)"
            )
        now = self._now()
        job = Job(
            id=job_id or new_job_id(now),
            kind=kind,
            model=parsed.model,
            request=parsed.model_dump(mode="json", exclude_unset=True),
            created_at=iso(datetime.fromtimestamp(now, UTC)),
            expires_at=int(now) + self.config.retention_days * 86400,
            route="async" if hosting == "async" else "queue",
            batch_id=batch_id,
            custom_id=custom_id,
        )
        encoded = json.dumps(job.request, separators=(",", ":")).encode()
        if len(encoded) > INLINE_REQUEST_BYTES:
            key = f"jobs/{job.id}/input.json"
            self._put_object(key, encoded)
            job = job.model_copy(update={"request": {}, "request_key": key})
        stored, created = self.store.create(job)
        if not created and stored.status != "QUEUED":
            return stored
        try:
            self._dispatch(stored)
        except LlmhostError as error:
            # Not queued, so never run. A request refused for good (4xx) that is not a batch's
            # line leaves nothing behind: the caller is told now and never saw the job's id.
            # Otherwise the job ends here with the error the caller gets (a batch's line needs
            # its outcome; a passing fault's job shows why it did not run). No event: the
            # caller is told now, and this function may not put events.
            refused = error.status < 500 and not isinstance(error, ServiceFault)
            if created and refused and stored.batch_id is None:
                self.store.discard(stored.id)
            elif created:
                failed = JobError(code=error.code, message=error.message)
                self.store.complete(stored.id, now_iso=self._iso(), error=failed)
            raise
        return stored

    def submit_new(self, kind: Kind, submissions: Sequence[Submission]) -> list[Submission]:
        """Queue many jobs in a few calls (a batch's lines): created CREATE_MANY_LIMIT a
        transaction, each only if its id is new, and their messages sent 10 a call.

        Returns the submissions left for ``submit``, one by one: a body the route refuses, a
        model missing or on an asynchronous endpoint, a request kept in the bucket, and every
        one of a transaction that found a job of its id already there (a resumed batch:
        ``submit`` finds it, and sends it again if it is still QUEUED). Raises
        JobsTableError, JobsUnavailable (the queue): the jobs created and not yet sent stay
        QUEUED, and ``submit`` of the same ids sends them."""
        from llmhost.jobs.store import CREATE_MANY_LIMIT

        now = self._now()
        hosting: dict[str, str | None] = {}
        ready: list[tuple[Submission, Job]] = []
        left: list[Submission] = []
        for submission in submissions:
            try:
                parsed = request_model(kind, _as_body(submission.request))
            except LlmhostError:
                left.append(submission)
                continue
            if parsed.model not in hosting:
                hosting[parsed.model] = self._hosting_of(parsed.model)
            job = Job(
                id=submission.job_id,
                kind=kind,
                model=parsed.model,
                request=parsed.model_dump(mode="json", exclude_unset=True),
                created_at=iso(datetime.fromtimestamp(now, UTC)),
                expires_at=int(now) + self.config.retention_days * 86400,
                route="queue",
                batch_id=submission.batch_id,
                custom_id=submission.custom_id,
            )
            encoded = json.dumps(job.request, separators=(",", ":")).encode()
            if hosting[parsed.model] in {None, "async"} or len(encoded) > INLINE_REQUEST_BYTES:
                left.append(submission)
                continue
            ready.append((submission, job))
        for start in range(0, len(ready), CREATE_MANY_LIMIT):
            chunk = ready[start : start + CREATE_MANY_LIMIT]
            if not self.store.create_new([job for _, job in chunk]):
                left.extend(submission for submission, _ in chunk)
                continue
            self._send_many([job.id for _, job in chunk])
        return left

    def _dispatch(self, job: Job) -> None:
        if job.route == "async":
            from llmhost.jobs.async_endpoint import (  # type: ignore[import-not-found,unused-ignore]
                submit_async,
            )

            submit_async(job)
            return
        self._send({"job_id": job.id})

    def get(self, job_id: str) -> Job:
        """Raises JobNotFound."""
        return self.store.get(job_id)

    def view(self, job: Job) -> dict[str, Any]:
        """What GET shows: the job, and a presigned URL for a result kept in the bucket."""
        shown = job.public()
        if job.result_key is not None:
            shown["result_url"] = self._presign(job.result_key)
            shown["result_url_expires_in"] = PRESIGNED_URL_S
        return shown

    def list(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        limit: int = 20,
        next_token: str | None = None,
    ) -> Page:
        return self.store.list(model=model, status=status, limit=limit, next_token=next_token)

    def cancel(self, job_id: str) -> Job:
        """QUEUED -> CANCELLED. Its message, when delivered, is dropped and the ending
        published; a job on an asynchronous endpoint has no message of its own, so one is
        sent for that (the endpoint's answer, when it comes, changes nothing). Raises
        JobNotFound or JobAlreadyStarted (409). Cancelling a CANCELLED job again returns it
        unchanged (DELETE is idempotent: a retry after a lost answer is not a conflict)."""
        try:
            cancelled = self.store.cancel(job_id, now_iso=self._iso())
        except JobAlreadyStarted as started:
            if started.job_status == "CANCELLED":
                return self.store.get(job_id)
            raise
        if cancelled.route == "async":
            self._send({"job_id": job_id})
        return cancelled

    # ----------------------------------------------------------------------- the worker

    def run(self, job_id: str, *, receive_count: int = 1, receipt: str | None = None) -> Outcome:
        """Run one delivery of a job's message: "done" (delete it) or "retry" (leave it to the
        queue, which delivers it again after ``retry_delay_s``, or dead-letters it)."""
        job = self.store.find(job_id)
        if job is None:
            logger.warning("a message for a job that does not exist", extra={"job_id": job_id})
            return "done"
        if job.terminal:
            if job.notified_at is None:
                self._notify(job)  # ended (cancelled, or its event failed to go out)
            return "done"
        if job.route == "async":
            return "done"  # its endpoint runs it; the endpoint's notification completes it
        claimed = self.store.claim(
            job_id, now_s=self._now(), now_iso=self._iso(), lease_s=self.config.lease_s
        )
        if claimed is None:
            current = self.store.find(job_id)
            if current is None or current.terminal:
                return "done"
            # Another worker holds it (a duplicate delivery): look again later; if that
            # worker died, its lease will have run out by then.
            return "retry"
        # Each run is one request to the model, observed as it ends (a retried job's last run
        # is its trace).
        from llmhost.serving.watch import observe, start_watch

        watch = start_watch("job", request_id=job_id)
        try:
            result = self._answer(claimed, watch)
        except LlmhostError as error:
            if watch is not None:
                observe(watch, error.status, error.code)
            return self._failed(claimed, error, receive_count, receipt)
        except Exception as error:
            logger.exception("job failed", extra={"job_id": job_id})
            if watch is not None:
                observe(watch, 500, "internal_error")
            return self._failed(claimed, error, receive_count, receipt)
        if watch is not None:
            observe(watch, 200)
        self.complete(job_id, result=result)
        return "done"

    def complete(
        self,
        job_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: JobError | None = None,
    ) -> bool:
        """End a job with its result (kept in the bucket when large) or its error, and
        publish it. False, with nothing written or published, when it had already ended
        (a duplicate delivery or notification)."""
        if error is not None:
            return self._end(job_id, error=error)
        encoded = json.dumps(result or {}, separators=(",", ":")).encode()
        if len(encoded) <= INLINE_RESULT_BYTES:
            return self._end(job_id, result=result or {})
        key = f"jobs/{job_id}/result.json"
        self._put_object(key, encoded)  # the same bytes again on a duplicate: harmless
        return self._end(job_id, result_key=key)

    def _end(self, job_id: str, **outcome: Any) -> bool:
        ended = self.store.finish(job_id, now_iso=self._iso(), **outcome)
        if ended is None:
            return False
        self._notify(ended)
        return True

    def _answer(self, job: Job, watch: RequestWatch | None = None) -> dict[str, Any]:
        body = job.request
        if job.request_key is not None:
            body = json.loads(self._get_object(job.request_key))
        if watch is not None:
            watch.asked_raw(body)
        request = request_model(job.kind, body)
        service = self._serving()
        watched: dict[str, Any] = {"watch": watch} if watch is not None else {}
        if isinstance(request, ChatCompletionRequest):
            return service.chat(request, **watched)
        return service.rag(request, **watched)

    def _failed(
        self, job: Job, error: Exception, receive_count: int, receipt: str | None
    ) -> Outcome:
        wait = getattr(error, "retry_after", None)
        status = getattr(error, "status", 500)
        if isinstance(error, LlmhostError) and 400 <= status < 500 and status != 429:
            self._end(job.id, error=JobError(code=error.code, message=error.message))
            return "done"
        if isinstance(error, LlmhostError) and wait is not None and job.attempts < MAX_REQUEUES:
            # The model is waking or busy: wait for it without spending the message's
            # receives (a sleeping model takes minutes, more than three receives allow).
            if self.store.release(job.id, job.attempts) is not None:
                self._send({"job_id": job.id}, delay_s=min(MAX_DELAY_S, max(1, math.ceil(wait))))
            return "done"
        reason = _job_error(error)
        if receive_count >= self.config.max_receive_count:
            self._end(job.id, error=reason)
            return "retry"  # the queue's redrive moves the message to the dead-letter queue
        self.store.release(job.id, job.attempts)
        if receipt is not None:
            self._delay_retry(receipt)
        return "retry"

    # -------------------------------------------------------------------- AWS adapters

    def _notify(self, job: Job) -> None:
        detail = {
            "job_id": job.id,
            "status": job.status,
            "model": job.model,
            "batch_id": job.batch_id,
            "custom_id": job.custom_id,
            "error": job.error.model_dump() if job.error else None,
        }
        with _aws("the event bus (EventBridge)"):
            answer = self._events().put_events(
                Entries=[
                    {
                        "Source": EVENT_SOURCE,
                        "DetailType": EVENT_DETAIL_TYPE,
                        "Detail": json.dumps(detail),
                        "Resources": [],
                        "EventBusName": "default",
                    }
                ]
            )
        if answer.get("FailedEntryCount"):
            code = answer["Entries"][0].get("ErrorCode", "")
            raise JobsUnavailable(
                "the event bus (EventBridge)", _fault_of(code), log_detail=str(answer)
            )
        # A batch line is counted before the job is marked notified: a crash between the two
        # counts it again on the message's next delivery (an over-count only makes the batch
        # look at its lines early), where the other order could leave it never counted and
        # its batch waiting on a count that never comes.
        if job.batch_id is not None and importlib.util.find_spec("llmhost.batches.progress"):
            from llmhost.batches import progress  # type: ignore[attr-defined,unused-ignore]

            progress.line_finished(job.batch_id, job.status)
        self.store.mark_notified(job.id, now_iso=self._iso())

    def _send(self, message: dict[str, Any], delay_s: int = 0) -> None:
        with _aws("the jobs queue (SQS)"):
            self._sqs().send_message(
                QueueUrl=self.config.queue_url,
                MessageBody=json.dumps(message),
                DelaySeconds=delay_s,
            )

    def _send_many(self, job_ids: Sequence[str]) -> None:
        """Send each job's message, SEND_BATCH_LIMIT a SendMessageBatch. Raises
        JobsUnavailable if any entry failed (the call's others are sent)."""
        for start in range(0, len(job_ids), SEND_BATCH_LIMIT):
            entries = [
                {"Id": str(n), "MessageBody": json.dumps({"job_id": job_id})}
                for n, job_id in enumerate(job_ids[start : start + SEND_BATCH_LIMIT])
            ]
            with _aws("the jobs queue (SQS)"):
                answer = self._sqs().send_message_batch(
                    QueueUrl=self.config.queue_url, Entries=entries
                )
            failed = answer.get("Failed") or []
            if failed:
                sender = any(entry.get("SenderFault") for entry in failed)
                raise JobsUnavailable(
                    "the jobs queue (SQS)",
                    _fault_of(str(failed[0].get("Code", ""))),
                    log_detail=f"{len(failed)} of {len(entries)} messages not sent "
                    f"(sender's fault: {sender}): {failed[:3]}",
                )

    def _delay_retry(self, receipt: str) -> None:
        """Deliver a failed message again after ``retry_delay_s``, not the queue's (long)
        visibility timeout. Best effort: without it the visibility timeout applies."""
        try:
            self._sqs().change_message_visibility(
                QueueUrl=self.config.queue_url,
                ReceiptHandle=receipt,
                VisibilityTimeout=self.config.retry_delay_s,
            )
        except (ClientError, BotoCoreError) as error:
            logger.warning("could not shorten a retry's wait", extra={"detail": str(error)})

    def _put_object(self, key: str, body: bytes) -> None:
        with _aws("the jobs bucket (S3)"):
            self._s3().put_object(
                Bucket=self.config.bucket, Key=key, Body=body, ContentType="application/json"
            )

    def _get_object(self, key: str) -> bytes:
        with _aws("the jobs bucket (S3)"):
            body: bytes = self._s3().get_object(Bucket=self.config.bucket, Key=key)["Body"].read()
        return body

    def _presign(self, key: str) -> str:
        url: str = self._s3().generate_presigned_url(
            "get_object",
            Params={"Bucket": self.config.bucket, "Key": key},
            ExpiresIn=PRESIGNED_URL_S,
        )
        return url

    def _iso(self) -> str:
        return iso(datetime.fromtimestamp(self._now(), UTC))


class _InBody:
    """A validation error of the body, located as a route's would be (under "body")."""

    def __init__(self, error: ValidationError) -> None:
        self._error = error

    def errors(self) -> list[Any]:
        return [{**e, "loc": ("body", *e["loc"])} for e in self._error.errors()]


def _body_issues(error: ValidationError) -> list[FieldIssue]:
    from llmhost.field_errors import issues_from_validation_error

    return [
        FieldIssue("body" if i.field == "body" else f"body.{i.field}", i.message)
        for i in issues_from_validation_error(_InBody(error))
    ]


def _as_body(request: Any) -> Any:
    if isinstance(request, BaseModel):
        return request.model_dump(mode="json", exclude_unset=True)
    return request


def _job_error(error: Exception) -> JobError:
    if isinstance(error, LlmhostError):
        return JobError(code=error.code, message=error.message)
    return JobError(
        code="internal_error", message=f"the job failed ({type(error).__name__}); see the logs"
    )


def _fault_of(code: str) -> Any:
    from llmhost.aws_faults import Fault

    return Fault("throttled" if "Throttl" in code else "unavailable")


@contextlib.contextmanager
def _aws(what: str) -> Iterator[None]:
    """Turn a botocore error of a call to ``what`` into JobsUnavailable (retrying can get
    past it) or a LlmhostError (500) naming it."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        fault = classify(error)
        detail = f"{type(error).__name__}: {error}"
        if fault is not None:
            raise JobsUnavailable(what, fault, log_detail=detail) from None
        failed = LlmhostError(f"{what} refused llmhost's request; the operator's logs say why")
        failed.log_detail = detail
        raise failed from None


__all__ = [
    "INLINE_RESULT_BYTES",
    "JobNotFound",
    "Jobs",
    "JobsConfig",
    "Submission",
    "request_model",
]
