"""SageMaker Batch Transform jobs for the stand-in: rules, state and the run itself.

What is modelled, and where AWS says so (SageMaker API reference and developer guide):

- ``CreateTransformJob`` starts a job ``InProgress``; its name is unique per account and
  region (``ResourceInUse`` otherwise); its model must exist; ``MaxPayloadInMB`` times
  ``MaxConcurrentTransforms`` may not pass 100 MB (CreateTransformJob, MaxPayloadInMB).
- After the instances start (``start_seconds`` on the caller's clock), every S3 object under
  the input ``S3Prefix`` is read in key order and, with ``SplitType: Line`` and
  ``BatchStrategy: SingleRecord``, each line is one record posted to the model's container
  (``invoke``); a record answered 5xx or 429 is retried ``InvocationsMaxRetries`` times
  (ModelClientConfig).
- Output (TransformOutput, S3OutputPath): for each input object, ``<S3OutputPath>/<its
  path under the input prefix>.out``, with ``AssembleWith: Line`` one line per record, in
  input order. "Batch transform doesn't upload partially processed objects [...] it
  creates an .out file only if the transform job succeeds on the entire file", uploads the
  output of the objects that succeeded, and marks the job ``Failed`` if any failed.
- ``StopTransformJob`` moves an ``InProgress`` job to ``Stopping`` and then ``Stopped``;
  objects not finished by then get no output. Stopping a job that has ended is a
  ``ValidationException``.
- Each status change is an EventBridge "SageMaker Transform Job State Change" event whose
  detail is the job's description (times in epoch milliseconds) with its ``Tags``, as the
  endpoint events carry them.

A run happens outside any lock, ``MaxConcurrentTransforms`` records at a time: the container
calls take as long as the engine does. Messages are ours where AWS's exact wording is not
known; codes and conditions match.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from llmhost_local.standin.errors import page_offset, page_token
from llmhost_local.standin.sagemaker_state import SageMakerError

Clock = Callable[[], float]
EventSink = Callable[[dict[str, Any]], None]
# Posts one record to a model's container: (model name, body) -> (HTTP status, body).
Invoke = Callable[[str, bytes], tuple[int, bytes]]

EVENT_DETAIL_TYPE = "SageMaker Transform Job State Change"
# What SageMaker reports for a job whose container refused a record (the log has the rest).
RECORD_FAILURE = "ClientError: See job logs for more information"
_RETRIED = frozenset({429, 500, 502, 503, 504})


class TransformJobError(SageMakerError):
    """An error SageMaker itself returns for a transform job request."""


@dataclass
class _Job:
    name: str
    arn: str
    request: dict[str, Any]
    tags: dict[str, str]
    created: float
    status: str = "InProgress"
    deadline: float = 0.0
    started: float | None = None
    ended: float | None = None
    failure_reason: str | None = None
    running: bool = False
    stop_requested: bool = False
    # Record numbers (0-based, over the whole job in key order) the container answers 500.
    failing_records: set[int] = field(default_factory=set)


class TransformJobs:
    """Transform jobs of one account and region. Thread-safe.

    ``model_exists`` says whether a SageMaker model exists (the control plane's models);
    ``s3`` returns the S3 client the job reads and writes through (moto's); ``invoke`` plays
    the model's container. ``on_event`` receives each state-change event. ``background``:
    a job's records run in a thread of their own, so ``tick`` (the caller's clock) never
    waits for them; otherwise ``tick`` returns once the due jobs have ended (tests).
    """

    def __init__(
        self,
        *,
        clock: Clock,
        region: str,
        account_id: str,
        start_seconds: float,
        model_exists: Callable[[str], bool],
        s3: Callable[[], Any] | None = None,
        invoke: Invoke | None = None,
        on_event: EventSink | None = None,
        background: bool = False,
    ) -> None:
        self._clock = clock
        self._background = background
        self._region = region
        self._account = account_id
        self._start_seconds = start_seconds
        self._model_exists = model_exists
        self._s3 = s3
        self._invoke = invoke
        self._on_event = on_event
        self._lock = threading.RLock()
        self._jobs: dict[str, _Job] = {}
        self._failures: dict[str, set[int]] = {}

    # ---- controls ------------------------------------------------------------------

    def fail_records(self, name: str, records: set[int]) -> None:
        """Make the container answer 500 to these records (0-based, over the whole input in
        key order) of the job named ``name``, created now or later."""
        with self._lock:
            self._failures[name.lower()] = set(records)
            job = self._jobs.get(name.lower())
            if job is not None:
                job.failing_records = set(records)

    def tick(self) -> list[dict[str, Any]]:
        """Run every job whose instances are up, settle stops; return (and emit) the events
        of what ended here (a job run in the background emits its end when it ends)."""
        events: list[dict[str, Any]] = []
        with self._lock:
            now = self._clock()
            due = []
            for job in self._jobs.values():
                if job.status == "Stopping" and not job.running:
                    self._end(job, "Stopped", None, now, events)
                elif job.status == "InProgress" and not job.running and job.deadline <= now:
                    job.running = True
                    job.started = now
                    due.append(job)
        self._deliver(events)
        for job in due:
            if self._background:
                threading.Thread(
                    target=self._finish_run, args=(job,), name=f"transform-{job.name}", daemon=True
                ).start()
            else:
                events += self._finish_run(job)
        return events

    def _finish_run(self, job: _Job) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        failure = self._run(job)
        with self._lock:
            job.running = False
            if job.stop_requested:
                self._end(job, "Stopped", None, self._clock(), events)
            else:
                status = "Failed" if failure else "Completed"
                self._end(job, status, failure, self._clock(), events)
        self._deliver(events)
        return events

    def tags_of(self, arn: str) -> dict[str, str] | None:
        """The job's tags by ARN (ListTags), or None when no job has it."""
        with self._lock:
            for job in self._jobs.values():
                if job.arn == arn:
                    return job.tags
        return None

    # ---- operations ----------------------------------------------------------------

    def create_transform_job(self, request: dict[str, Any]) -> dict[str, Any]:
        events: list[dict[str, Any]] = []
        with self._lock:
            name = request["TransformJobName"]
            arn = self._arn(name)
            if name.lower() in self._jobs:
                raise TransformJobError(
                    "ResourceInUse",
                    "Transform job names must be unique within an AWS account and region, "
                    f"and a transform job with this name already exists ({arn})",
                )
            model = request["ModelName"]
            if not self._model_exists(model):
                raise TransformJobError(
                    "ValidationException",
                    f'Could not find model "arn:aws:sagemaker:{self._region}:{self._account}:'
                    f'model/{model.lower()}".',
                )
            payload = request.get("MaxPayloadInMB", 6)
            concurrency = request.get("MaxConcurrentTransforms", 1)
            if payload * concurrency > 100:
                raise TransformJobError(
                    "ValidationException",
                    "MaxPayloadInMB multiplied by MaxConcurrentTransforms must not exceed "
                    f"100 MB; got {payload} x {concurrency}",
                )
            source = request["TransformInput"]["DataSource"]["S3DataSource"]
            if source.get("S3DataType") != "S3Prefix":
                raise TransformJobError(
                    "ValidationException",
                    "the stand-in models S3DataType S3Prefix only (ManifestFile and "
                    "AugmentedManifestFile are not modelled)",
                )
            now = self._clock()
            job = _Job(
                name=name,
                arn=arn,
                request={k: copy.deepcopy(v) for k, v in request.items() if k != "Tags"},
                tags={t["Key"]: t["Value"] for t in request.get("Tags", [])},
                created=now,
                deadline=now + self._start_seconds,
                failing_records=self._failures.pop(name.lower(), set()),
            )
            self._jobs[name.lower()] = job
            events.append(self._event(job, now))
        self._deliver(events)
        return {"TransformJobArn": arn}

    def describe_transform_job(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._description(self._job(request["TransformJobName"]))

    def stop_transform_job(self, request: dict[str, Any]) -> dict[str, Any]:
        events: list[dict[str, Any]] = []
        with self._lock:
            job = self._job(request["TransformJobName"])
            if job.status != "InProgress":
                raise TransformJobError(
                    "ValidationException",
                    f"The transform job {job.name} is {job.status}: only an InProgress job "
                    "can be stopped.",
                )
            job.stop_requested = True
            job.status = "Stopping"
            events.append(self._event(job, self._clock()))
        self._deliver(events)
        return {}

    def list_transform_jobs(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: j.created, reverse=True)
            wanted = request.get("StatusEquals")
            contains = (request.get("NameContains") or "").lower()
            summaries = []
            for job in jobs:
                if wanted and job.status != wanted:
                    continue
                if contains and contains not in job.name.lower():
                    continue
                summary: dict[str, Any] = {
                    "TransformJobName": job.name,
                    "TransformJobArn": job.arn,
                    "CreationTime": _utc(job.created),
                    "TransformJobStatus": job.status,
                }
                if job.ended is not None:
                    summary["TransformEndTime"] = _utc(job.ended)
                if job.failure_reason:
                    summary["FailureReason"] = job.failure_reason
                summaries.append(summary)
            try:
                start = page_offset(request.get("NextToken"))
            except ValueError:
                raise TransformJobError("ValidationException", "Invalid NextToken") from None
            size = int(request.get("MaxResults") or 10)
            result: dict[str, Any] = {"TransformJobSummaries": summaries[start : start + size]}
            if start + size < len(summaries):
                result["NextToken"] = page_token(start + size)
            return result

    # ---- the run ---------------------------------------------------------------------

    def _run(self, job: _Job) -> str | None:
        """Transform every input object; the job's FailureReason, or None when all passed."""
        request = job.request
        if self._s3 is None or self._invoke is None:
            return "the stand-in was built without S3 or a model container to run jobs on"
        s3 = self._s3()
        source = request["TransformInput"]["DataSource"]["S3DataSource"]
        bucket, prefix = _split_uri(source["S3Uri"])
        out_bucket, out_prefix = _split_uri(request["TransformOutput"]["S3OutputPath"])
        keys = _keys(s3, bucket, prefix)
        if not keys:
            return f"ClientError: No S3 objects found under S3 URL s3://{bucket}/{prefix}"
        split = request["TransformInput"].get("SplitType", "None")
        assemble = request["TransformOutput"].get("AssembleWith", "None")
        retries = int(request.get("ModelClientConfig", {}).get("InvocationsMaxRetries", 3))
        concurrency = int(request.get("MaxConcurrentTransforms") or 1)
        failure: str | None = None
        record_number = 0
        for key in keys:
            if job.stop_requested:
                break
            data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            records = [r for r in data.split(b"\n") if r.strip()] if split == "Line" else [data]
            first = record_number
            record_number += len(records)
            # MaxConcurrentTransforms records at once, each answer kept in its record's place.
            workers = max(1, min(concurrency, len(records)))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                replies = list(
                    pool.map(
                        lambda item: self._answer(job, item[0], item[1], retries),
                        enumerate(records, start=first),
                    )
                )
            if any(status != 200 for status, _ in replies):
                failure = RECORD_FAILURE
                continue  # no .out for an object with a failed record
            answers = [body for _, body in replies]
            joiner = b"\n" if assemble == "Line" else b""
            output = joiner.join(answers) + (joiner if answers else b"")
            relative = key[len(prefix) :].lstrip("/") if key.startswith(prefix) else key
            out_key = f"{out_prefix.rstrip('/')}/{relative}.out".lstrip("/")
            s3.put_object(Bucket=out_bucket, Key=out_key, Body=output)
        return failure

    def _answer(self, job: _Job, number: int, record: bytes, retries: int) -> tuple[int, bytes]:
        assert self._invoke is not None
        status, body = 500, b""
        for _ in range(retries + 1):
            if number in job.failing_records:
                status, body = 500, b'{"error":"injected failure","error_type":"generation"}'
            else:
                status, body = self._invoke(job.request["ModelName"], record)
            if status not in _RETRIED:
                break
        return status, body

    # ---- views and events --------------------------------------------------------------

    def _end(
        self, job: _Job, status: str, failure: str | None, at: float, events: list[dict[str, Any]]
    ) -> None:
        job.status = status
        job.failure_reason = failure
        job.ended = at
        events.append(self._event(job, at))

    def _description(self, job: _Job) -> dict[str, Any]:
        result: dict[str, Any] = {
            **copy.deepcopy(job.request),
            "TransformJobArn": job.arn,
            "TransformJobStatus": job.status,
            "CreationTime": _utc(job.created),
        }
        if job.started is not None:
            result["TransformStartTime"] = _utc(job.started)
        if job.ended is not None:
            result["TransformEndTime"] = _utc(job.ended)
        if job.failure_reason:
            result["FailureReason"] = job.failure_reason
        return result

    def _event(self, job: _Job, at: float) -> dict[str, Any]:
        detail: dict[str, Any] = {
            **copy.deepcopy(job.request),
            "TransformJobArn": job.arn,
            "TransformJobStatus": job.status,
            "CreationTime": job.created * 1000.0,
            "Tags": dict(job.tags),
        }
        if job.started is not None:
            detail["TransformStartTime"] = job.started * 1000.0
        if job.ended is not None:
            detail["TransformEndTime"] = job.ended * 1000.0
        if job.failure_reason:
            detail["FailureReason"] = job.failure_reason
        return {
            "version": "0",
            "id": str(uuid.uuid4()),
            "detail-type": EVENT_DETAIL_TYPE,
            "source": "aws.sagemaker",
            "account": self._account,
            "time": _utc(at).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": self._region,
            "resources": [job.arn],
            "detail": detail,
        }

    def _deliver(self, events: list[dict[str, Any]]) -> None:
        if self._on_event is not None:
            for event in events:
                self._on_event(copy.deepcopy(event))

    def _job(self, name: str) -> _Job:
        job = self._jobs.get(name.lower())
        if job is None:
            raise TransformJobError(
                "ResourceNotFound", f"Could not find requested job with name {name}"
            )
        return job

    def _arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self._region}:{self._account}:transform-job/{name.lower()}"


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _split_uri(uri: str) -> tuple[str, str]:
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [str(item["Key"]) for item in page.get("Contents", [])]
    return sorted(keys)
